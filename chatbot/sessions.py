"""Session persistence: the ``SessionStore`` interface and its SQLite implementation.

A store keeps one :class:`~chatbot.state.SessionState` per conversation and guards every write with
optimistic concurrency: ``put`` succeeds only when the caller's ``version`` is the stored one, so two
writers that read the same version cannot silently overwrite each other (the second gets
:class:`SessionConflict` and must re-read). Work on one session inside one process can also be
serialized with ``store.lock(session_id)`` so that conflicts do not happen in the first place.

Typical read-modify-write::

    store = SQLiteSessionStore.for_data_dir(settings.data_dir)
    with store.lock(session_id):
        state = require_session(store, session_id)
        state.messages.append(Message(role="user", text="something funny"))
        state = store.put(state)

Nothing is opened at import time; the database file is created by the constructor.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar, runtime_checkable

from chatbot.state import SessionState
from retrieval.errors import SessionStoreUnavailable

if TYPE_CHECKING:
    from retrieval.settings import Settings

DEFAULT_FILENAME = "sessions.sqlite3"
BUSY_TIMEOUT_MS = 10_000

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS sessions (
        id TEXT PRIMARY KEY,
        owner TEXT,
        catalog TEXT,
        updated REAL,
        version INTEGER,
        data TEXT
    )
    """,
    "CREATE INDEX IF NOT EXISTS sessions_owner_updated ON sessions (owner, updated)",
    "CREATE INDEX IF NOT EXISTS sessions_updated ON sessions (updated)",
)


_P = ParamSpec("_P")
_R = TypeVar("_R")

# sqlite3.OperationalError messages that mean "the database cannot be used right now" (a 503 that may pass:
# a writer held the lock past busy_timeout, the disk is gone, full or failing), not a bug in a statement.
_UNAVAILABLE_MESSAGES = ("database is locked", "unable to open database file", "disk i/o error",
                         "database or disk is full", "attempt to write a readonly database")


def _sqlite_unavailable_as_503(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """Raise SQLite's "cannot use the database now" errors as `SessionStoreUnavailable` (the API's 503)."""

    @functools.wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(*args, **kwargs)
        except sqlite3.OperationalError as exc:
            if str(exc).lower().startswith(_UNAVAILABLE_MESSAGES):
                raise SessionStoreUnavailable(f"SQLite session store unavailable: {exc}") from exc
            raise

    return wrapper


class SessionNotFound(KeyError):  # noqa: N818 - the name the API promises
    """No session with this id exists."""


class SessionConflict(RuntimeError):  # noqa: N818 - the name the API promises
    """A write was based on a stale version: someone else stored the session in between.

    Re-read the session, re-apply the change and try again (or serialize with ``store.lock``).
    """


@runtime_checkable
class SessionStore(Protocol):
    """Where conversations live: :class:`SQLiteSessionStore`, or ``chatbot.redis_sessions.RedisSessionStore``.

    Every implementation must give ``put`` the same optimistic-concurrency contract and ``lock`` the
    same in-process semantics, so callers never depend on which store they were handed. A store that
    cannot be reached raises `retrieval.errors.SessionStoreUnavailable`; implementations also offer a
    ``ping()`` (not part of the protocol) that ``/readyz`` calls.
    """

    def get(self, session_id: str) -> SessionState | None:
        """The stored session, or ``None`` when there is none with this id."""
        ...

    def put(self, state: SessionState) -> SessionState:
        """Store ``state`` if its ``version`` is the stored one; return the stored copy.

        A new session is written with ``version == 0`` and must not exist yet. On success the stored
        copy has ``version + 1`` and ``updated = time.time()``; the argument is left unchanged.
        Raises :class:`SessionConflict` when the stored version differs (or the row is missing or
        already present, respectively).
        """
        ...

    def delete(self, session_id: str) -> bool:
        """Remove a session; ``True`` if it existed."""
        ...

    def list(self, owner: str | None = None, limit: int = 100, offset: int = 0) -> list[SessionState]:
        """Sessions, most recently updated first, optionally only those of ``owner``."""
        ...

    def lock(self, session_id: str) -> contextlib.AbstractContextManager[None]:
        """A context manager that serializes work on one session inside this process.

        It blocks the calling thread. From asyncio code run the whole critical section in one worker
        thread, e.g. ``await asyncio.to_thread(handle_turn, store, session_id, text)`` where
        ``handle_turn`` does ``with store.lock(session_id): ...``; never hold it across an ``await``.
        It does not coordinate processes: across processes ``put``'s version check still applies.
        """
        ...

    def close(self) -> None:
        """Release connections; the store must not be used afterwards."""
        ...


@dataclass
class _LockEntry:
    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0


class SessionLocks:
    """Per-key ``threading.Lock`` objects, created on first use and dropped when nobody holds or waits.

    A global guard protects the registry only while an entry is looked up or released; waiting for a
    session's own lock happens outside it, so work on different sessions runs in parallel. The locks
    are not reentrant: taking the same session's lock twice in one thread deadlocks.

    >>> locks = SessionLocks()
    >>> with locks.hold("s1"):
    ...     len(locks)
    1
    >>> len(locks)
    0
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._entries: dict[str, _LockEntry] = {}

    def __len__(self) -> int:
        """Number of keys currently held or waited for."""
        with self._guard:
            return len(self._entries)

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[None]:
        """Hold the lock of ``key`` for the duration of the ``with`` block."""
        with self._guard:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _LockEntry()
            entry.users += 1
        try:
            with entry.lock:
                yield
        finally:
            with self._guard:
                entry.users -= 1
                if entry.users == 0:
                    del self._entries[key]


class _Connection(sqlite3.Connection):
    """A plain connection that, unlike ``sqlite3.Connection``, can be weakly referenced."""


class SQLiteSessionStore:
    """A :class:`SessionStore` in one SQLite file, safe for many threads and processes.

    * One connection per thread (``threading.local``), so reads in different threads do not queue.
    * WAL journal: readers never block the single writer and vice versa, across processes too.
    * ``synchronous=FULL``: the WAL is fsynced at every commit, so once ``put`` returns the session is
      on disk. A killed process loses nothing that was acknowledged even in ``NORMAL`` mode (its
      writes already sit in the OS), but ``NORMAL`` may lose the last commits on an OS crash or power
      cut; an acknowledged chat message must survive those too, and one fsync per turn is cheap.
    * ``busy_timeout``: a writer waits for another process's write transaction instead of failing.
    * The version check is one ``UPDATE ... WHERE id = ? AND version = ?`` (or an ``INSERT`` for
      version 0) inside a ``BEGIN IMMEDIATE`` transaction, hence atomic across processes.

    >>> store = SQLiteSessionStore.for_data_dir(Path("data"))  # doctest: +SKIP
    >>> saved = store.put(SessionState(catalog="movies"))      # doctest: +SKIP
    >>> saved.version                                          # doctest: +SKIP
    1
    """

    def __init__(self, path: Path, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        self.locks = SessionLocks()
        self._local = threading.local()
        self._connections: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._registry_guard = threading.Lock()
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._conn()
        with self._transaction(conn):
            for statement in _SCHEMA:
                conn.execute(statement)

    @classmethod
    def for_data_dir(cls, data_dir: Path, **kwargs: Any) -> SQLiteSessionStore:
        """The store at ``<data_dir>/sessions.sqlite3``."""
        return cls(Path(data_dir) / DEFAULT_FILENAME, **kwargs)

    # -- connections -------------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise RuntimeError(f"session store {self.path} is closed")
        conn: _Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout_ms / 1000,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,  # only so that close() may close every thread's connection
                factory=_Connection,
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            self._local.conn = conn
            with self._registry_guard:
                self._connections.add(conn)
        return conn

    @staticmethod
    @contextlib.contextmanager
    def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
        """A write transaction; ``IMMEDIATE`` takes the write lock up front (honouring busy_timeout)."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    # -- SessionStore ------------------------------------------------------------------------------

    @_sqlite_unavailable_as_503
    def ping(self) -> None:
        """Raise `SessionStoreUnavailable` unless the database answers a query (used by ``/readyz``)."""
        self._conn().execute("SELECT 1 FROM sessions LIMIT 1").fetchall()

    @_sqlite_unavailable_as_503
    def get(self, session_id: str) -> SessionState | None:
        """The stored session, or ``None``."""
        row = self._conn().execute("SELECT data FROM sessions WHERE id = ?", (session_id,)).fetchone()
        return None if row is None else SessionState.model_validate_json(row[0])

    @_sqlite_unavailable_as_503
    def put(self, state: SessionState) -> SessionState:
        """Store ``state`` if ``state.version`` is the stored version (0: must be new).

        Returns the stored copy with ``version + 1`` and a fresh ``updated``; raises
        :class:`SessionConflict` otherwise. ``state`` itself is not modified.
        """
        stored = state.model_copy(update={"version": state.version + 1, "updated": time.time()}, deep=True)
        row = (stored.owner, stored.catalog, stored.updated, stored.version, stored.model_dump_json())
        conn = self._conn()
        with self._transaction(conn):
            if state.version == 0:
                cursor = conn.execute(
                    "INSERT OR IGNORE INTO sessions (owner, catalog, updated, version, data, id) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (*row, stored.id),
                )
            else:
                cursor = conn.execute(
                    "UPDATE sessions SET owner = ?, catalog = ?, updated = ?, version = ?, data = ? "
                    "WHERE id = ? AND version = ?",
                    (*row, stored.id, state.version),
                )
            if cursor.rowcount != 1:
                current = conn.execute("SELECT version FROM sessions WHERE id = ?", (stored.id,)).fetchone()
                found = "no stored session" if current is None else f"stored version {current[0]}"
                raise SessionConflict(
                    f"session {stored.id!r}: write based on version {state.version}, but found {found}"
                )
        return stored

    @_sqlite_unavailable_as_503
    def delete(self, session_id: str) -> bool:
        """Remove a session; ``True`` if it existed."""
        conn = self._conn()
        with self._transaction(conn):
            cursor = conn.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
        return cursor.rowcount > 0

    @_sqlite_unavailable_as_503
    def list(self, owner: str | None = None, limit: int = 100, offset: int = 0) -> list[SessionState]:
        """Sessions, most recently updated first (ties by id), optionally only ``owner``'s."""
        if limit < 0 or offset < 0:
            raise ValueError(f"limit and offset must be >= 0, got limit={limit}, offset={offset}")
        where, params = ("WHERE owner = ? ", [owner]) if owner is not None else ("", [])
        rows = self._conn().execute(
            f"SELECT data FROM sessions {where}ORDER BY updated DESC, id DESC LIMIT ? OFFSET ?",
            (*params, limit, offset),
        )
        return [SessionState.model_validate_json(data) for (data,) in rows]

    def lock(self, session_id: str) -> contextlib.AbstractContextManager[None]:
        """Serialize work on one session inside this process (see :meth:`SessionStore.lock`)."""
        return self.locks.hold(session_id)

    def close(self) -> None:
        """Close every thread's connection; later calls raise ``RuntimeError``. Idempotent."""
        self._closed = True
        with self._registry_guard:
            connections = list(self._connections)
            self._connections.clear()
        for conn in connections:
            conn.close()

    def __enter__(self) -> SQLiteSessionStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def require_session(store: SessionStore, session_id: str) -> SessionState:
    """``store.get(session_id)``, raising :class:`SessionNotFound` instead of returning ``None``."""
    state = store.get(session_id)
    if state is None:
        raise SessionNotFound(session_id)
    return state


def export_session(state: SessionState) -> dict[str, Any]:
    """The session as a JSON-ready dict (only str, numbers, bools, None, lists and dicts)."""
    return state.model_dump(mode="json")


def open_session_store(settings: Settings) -> SessionStore:
    """The store the settings name: Redis when ``sessions_url`` is set, else SQLite under the data directory."""
    if settings.sessions_url:
        from chatbot.redis_sessions import RedisSessionStore  # the redis client is imported only when used

        return RedisSessionStore.from_url(settings.sessions_url)
    return SQLiteSessionStore.for_data_dir(settings.data_dir)
