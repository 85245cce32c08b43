"""A :class:`~chatbot.sessions.SessionStore` in Redis, shared by several API worker processes.

Layout (every key under one prefix, ``recchat`` by default; no TTL):

* ``<prefix>:session:<id>``: a hash with ``version``, ``owner``, ``updated`` and ``data`` (the session's JSON);
* ``<prefix>:updated``: a sorted set of every session id, scored by ``updated``;
* ``<prefix>:owner:<owner>``: a sorted set of one owner's session ids, scored by ``updated``.

``put`` and ``delete`` are Lua scripts, so the version check and the three writes happen atomically on the
server, across any number of processes. Listing reads a sorted set newest first; Redis orders equal scores
by member, so ties come out by id descending, as in the SQLite store.

Every connection failure or timeout is raised as `SessionStoreUnavailable` (the API answers 503). Socket
timeouts are short so that a request fails fast while Redis is down; the client reconnects on the next
command, so the store recovers by itself when Redis is back.

Usage::

    store = RedisSessionStore.from_url("redis://127.0.0.1:6379/0")
    saved = store.put(SessionState(catalog="movies"))
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.exceptions import BusyLoadingError, ReadOnlyError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from chatbot.sessions import SessionConflict, SessionLocks
from chatbot.state import SessionState
from retrieval.errors import SessionStoreUnavailable

if TYPE_CHECKING:
    from redis.commands.core import Script

DEFAULT_PREFIX = "recchat"
CONNECT_TIMEOUT_S = 2.0
SOCKET_TIMEOUT_S = 5.0

P = ParamSpec("P")
R = TypeVar("R")

# KEYS: session hash, all-sessions zset, owner zset of the new owner.
# ARGV: expected version, new version, owner, updated, data, session id, owner-zset key prefix.
# Returns {1} when written, {0, stored version or -1 when missing} on a version conflict.
_PUT = """
local current = redis.call('HGET', KEYS[1], 'version')
local expected = tonumber(ARGV[1])
if current and tonumber(current) == tonumber(ARGV[2]) and redis.call('HGET', KEYS[1], 'data') == ARGV[5] then
    -- This very write was applied already: a client retry after a lost reply must not conflict with itself.
    return {1}
end
if expected == 0 then
    if current then return {0, tonumber(current)} end
else
    if not current then return {0, -1} end
    if tonumber(current) ~= expected then return {0, tonumber(current)} end
    local old_owner = redis.call('HGET', KEYS[1], 'owner')
    if old_owner and old_owner ~= ARGV[3] then
        redis.call('ZREM', ARGV[7] .. old_owner, ARGV[6])
    end
end
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'owner', ARGV[3], 'updated', ARGV[4], 'data', ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[6])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[6])
return {1}
"""

# KEYS: session hash, all-sessions zset. ARGV: session id, owner-zset key prefix. Returns 1 if it existed.
_DELETE = """
local owner = redis.call('HGET', KEYS[1], 'owner')
if not owner then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', ARGV[2] .. owner, ARGV[1])
return 1
"""

# Errors that mean "Redis is not there (or not usable right now)", as opposed to a bug in a command.
_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, BusyLoadingError, ReadOnlyError, OSError)


def _is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, _UNAVAILABLE):
        return True
    # MISCONF: Redis refuses writes because it cannot persist (disk full, no permission).
    return isinstance(exc, ResponseError) and str(exc).startswith(("MISCONF", "LOADING", "MASTERDOWN"))


def _unavailable_as_503(method: Callable[P, R]) -> Callable[P, R]:
    """Raise Redis connection failures and timeouts as `SessionStoreUnavailable` (the API's 503)."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except (SessionConflict, SessionStoreUnavailable):
            raise
        except redis.RedisError as exc:
            if _is_unavailable(exc):
                raise SessionStoreUnavailable(f"Redis session store unavailable: {type(exc).__name__}") from exc
            raise
        except OSError as exc:
            raise SessionStoreUnavailable(f"Redis session store unavailable: {type(exc).__name__}") from exc

    return wrapper


class RedisSessionStore:
    """A :class:`~chatbot.sessions.SessionStore` in Redis with the same contract as `SQLiteSessionStore`.

    * ``put`` checks the version atomically on the server (a Lua script), so two API workers that read the
      same version cannot overwrite each other: the second gets `SessionConflict`.
    * ``lock`` serializes work on one session inside this process only (like the SQLite store).
    * Nothing is connected at construction: a process starts while Redis is down and reports it through
      ``ping`` (``/readyz``) and 503s until Redis is back.

    >>> store = RedisSessionStore.from_url("redis://127.0.0.1:6379/0")  # doctest: +SKIP
    >>> store.put(SessionState(catalog="movies")).version               # doctest: +SKIP
    1
    """

    def __init__(self, client: redis.Redis, *, prefix: str = DEFAULT_PREFIX) -> None:
        self.client = client
        self.prefix = prefix
        self.locks = SessionLocks()
        self._closed = False
        self._close_guard = threading.Lock()
        self._put: Script = client.register_script(_PUT)
        self._delete: Script = client.register_script(_DELETE)

    @classmethod
    def from_url(cls, url: str, *, prefix: str = DEFAULT_PREFIX, connect_timeout_s: float = CONNECT_TIMEOUT_S,
                 socket_timeout_s: float = SOCKET_TIMEOUT_S, **kwargs: Any) -> RedisSessionStore:  # noqa: ANN401
        """A store on ``redis://host:port/db`` (also ``rediss://``, ``unix://``) with short timeouts.

        One immediate retry (no back-off) after a dropped connection covers a pooled connection that Redis
        closed meanwhile (e.g. after a Redis restart); more would only delay the 503 while Redis is down. A
        timeout is not retried: it would double the wait on a hung Redis. Extra ``kwargs`` go to
        ``redis.Redis.from_url``.
        """
        options: dict[str, Any] = {
            "socket_connect_timeout": connect_timeout_s,
            "socket_timeout": socket_timeout_s,
            "retry": Retry(NoBackoff(), retries=1, supported_errors=(RedisConnectionError,)),
            "health_check_interval": 30,
            "decode_responses": True,
            **kwargs,
        }
        return cls(redis.Redis.from_url(url, **options), prefix=prefix)

    # -- keys --------------------------------------------------------------------------------------

    def _session_key(self, session_id: str) -> str:
        return f"{self.prefix}:session:{session_id}"

    @property
    def _all_key(self) -> str:
        return f"{self.prefix}:updated"

    @property
    def _owner_prefix(self) -> str:
        return f"{self.prefix}:owner:"

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("Redis session store is closed")

    # -- SessionStore ------------------------------------------------------------------------------

    @_unavailable_as_503
    def ping(self) -> None:
        """Raise `SessionStoreUnavailable` unless Redis answers (used by ``/readyz``)."""
        self._check_open()
        self.client.ping()

    @_unavailable_as_503
    def get(self, session_id: str) -> SessionState | None:
        """The stored session, or ``None``."""
        self._check_open()
        data = self.client.hget(self._session_key(session_id), "data")
        return None if data is None else SessionState.model_validate_json(data)

    @_unavailable_as_503
    def put(self, state: SessionState) -> SessionState:
        """Store ``state`` if ``state.version`` is the stored version (0: must be new).

        Returns the stored copy with ``version + 1`` and a fresh ``updated``; raises `SessionConflict`
        otherwise. ``state`` itself is not modified.
        """
        self._check_open()
        stored = state.model_copy(update={"version": state.version + 1, "updated": time.time()}, deep=True)
        keys = [self._session_key(stored.id), self._all_key, self._owner_prefix + stored.owner]
        # repr() keeps every bit of the float, so the score orders exactly like SQLite's REAL column.
        args = [state.version, stored.version, stored.owner, repr(stored.updated), stored.model_dump_json(),
                stored.id, self._owner_prefix]
        result = self._put(keys=keys, args=args)
        if int(result[0]) != 1:
            current = int(result[1])
            found = "no stored session" if current < 0 else f"stored version {current}"
            raise SessionConflict(f"session {stored.id!r}: write based on version {state.version}, but found {found}")
        return stored

    @_unavailable_as_503
    def delete(self, session_id: str) -> bool:
        """Remove a session; ``True`` if it existed."""
        self._check_open()
        return bool(self._delete(keys=[self._session_key(session_id), self._all_key],
                                 args=[session_id, self._owner_prefix]))

    @_unavailable_as_503
    def list(self, owner: str | None = None, limit: int = 100, offset: int = 0) -> list[SessionState]:
        """Sessions, most recently updated first (ties by id), optionally only ``owner``'s."""
        if limit < 0 or offset < 0:
            raise ValueError(f"limit and offset must be >= 0, got limit={limit}, offset={offset}")
        self._check_open()
        if limit == 0:
            return []  # ZREVRANGE with stop = offset - 1 would mean "to the end"
        index = self._all_key if owner is None else self._owner_prefix + owner
        ids = self.client.zrevrange(index, offset, offset + limit - 1)
        if not ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for session_id in ids:
            pipe.hget(self._session_key(session_id), "data")
        # A session deleted between the two reads is skipped rather than returned half-way.
        return [SessionState.model_validate_json(data) for data in pipe.execute() if data is not None]

    def lock(self, session_id: str) -> contextlib.AbstractContextManager[None]:
        """Serialize work on one session inside this process (see `SessionStore.lock`)."""
        return self.locks.hold(session_id)

    def close(self) -> None:
        """Close the connection pool; later calls raise ``RuntimeError``. Idempotent."""
        with self._close_guard:
            if self._closed:
                return
            self._closed = True
        with contextlib.suppress(redis.RedisError, OSError):
            self.client.close()

    def __enter__(self) -> RedisSessionStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
