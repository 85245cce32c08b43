"""SessionStore contract on the SQLite store: versions, persistence, listing, threads, processes, kill -9."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from chatbot.sessions import (
    DEFAULT_FILENAME,
    SessionConflict,
    SessionNotFound,
    SessionStore,
    SQLiteSessionStore,
    export_session,
    require_session,
)
from chatbot.state import Message, Recommendation, SessionState
from tests.conftest import run_threads

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / DEFAULT_FILENAME


@pytest.fixture
def store(db_path: Path) -> Iterator[SQLiteSessionStore]:
    with SQLiteSessionStore(db_path) as opened:
        yield opened


def _append(store: SQLiteSessionStore, session_id: str, text: str) -> SessionState:
    """One read-modify-write cycle: append a user message."""
    state = require_session(store, session_id)
    state.messages.append(Message(role="user", text=text))
    return store.put(state)


def _append_with_retry(store: SQLiteSessionStore, session_id: str, text: str) -> int:
    """Append, re-reading on conflict; returns how many conflicts it took."""
    conflicts = 0
    while True:
        try:
            _append(store, session_id, text)
            return conflicts
        except SessionConflict:
            conflicts += 1


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    return env


def _line_reader(stream: IO[str]) -> queue.Queue[str]:
    """Lines of ``stream`` delivered through a queue, so reads can time out."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        with stream:  # closed here, at EOF, so that no reader is left behind
            for line in stream:
                lines.put(line)
        lines.put("")  # EOF

    threading.Thread(target=pump, daemon=True).start()
    return lines


# -- basic contract ------------------------------------------------------------------------------------


def test_store_implements_the_protocol(store: SQLiteSessionStore) -> None:
    assert isinstance(store, SessionStore)


def test_put_get_round_trip(store: SQLiteSessionStore) -> None:
    state = SessionState(owner="ana", catalog="movies", liked=["m1"], wishes=["not too violent"])
    state.messages.append(Message(role="user", text="something funny", items=["m1"]))
    state.recommended.append(Recommendation(id="m2", title="Up", score=0.9, justification="warm", turn=1))
    before = time.time()

    stored = store.put(state)

    assert stored.version == 1
    assert stored.updated >= before
    assert state.version == 0, "put must not modify its argument"
    loaded = store.get(state.id)
    assert loaded == stored
    assert loaded.messages[0].text == "something funny"
    assert loaded.recommended[0].title == "Up"
    assert store.get("no-such-session") is None


def test_returned_copy_is_independent_of_argument(store: SQLiteSessionStore) -> None:
    state = SessionState(catalog="movies")
    stored = store.put(state)
    state.liked.append("m1")
    assert stored.liked == []
    assert store.get(state.id).liked == []


def test_version_increments_on_each_put(store: SQLiteSessionStore) -> None:
    state = store.put(SessionState(catalog="movies"))
    versions = [state.version]
    for _ in range(3):
        state = store.put(state)
        versions.append(state.version)
    assert versions == [1, 2, 3, 4]
    assert store.get(state.id).version == 4


def test_stale_put_conflicts_and_keeps_the_newer_write(store: SQLiteSessionStore) -> None:
    first = store.put(SessionState(catalog="movies"))
    reader_a = store.get(first.id)
    reader_b = store.get(first.id)
    reader_a.liked.append("a")
    winner = store.put(reader_a)
    reader_b.liked.append("b")

    with pytest.raises(SessionConflict, match="version 1"):
        store.put(reader_b)

    assert store.get(first.id) == winner
    assert store.get(first.id).liked == ["a"]


def test_creating_the_same_session_twice_conflicts(store: SQLiteSessionStore) -> None:
    new = SessionState(id="s1", catalog="movies")
    stale_copy = new.model_copy(deep=True)
    store.put(new)
    stale_copy.liked.append("x")

    with pytest.raises(SessionConflict):
        store.put(stale_copy)
    assert store.get("s1").liked == []


def test_put_of_a_deleted_session_conflicts(store: SQLiteSessionStore) -> None:
    stored = store.put(SessionState(catalog="movies"))
    assert store.delete(stored.id)
    with pytest.raises(SessionConflict, match="no stored session"):
        store.put(stored)
    assert store.get(stored.id) is None


def test_delete_then_get_and_require(store: SQLiteSessionStore) -> None:
    stored = store.put(SessionState(catalog="movies"))
    other = store.put(SessionState(catalog="movies"))
    assert store.delete(stored.id) is True
    assert store.delete(stored.id) is False
    assert store.get(stored.id) is None
    with pytest.raises(SessionNotFound):
        require_session(store, stored.id)
    assert require_session(store, other.id) == other


def test_persistence_across_close_and_reopen(db_path: Path) -> None:
    with SQLiteSessionStore(db_path) as store:
        state = SessionState(owner="ana", catalog="movies")
        state.messages.append(Message(role="user", text="hello"))
        stored = store.put(state)
    with pytest.raises(RuntimeError, match="closed"):
        store.get(stored.id)

    with SQLiteSessionStore(db_path) as reopened:  # schema creation again: idempotent
        assert reopened.get(stored.id) == stored
        assert reopened.put(stored).version == 2


def test_database_file_settings(db_path: Path) -> None:
    SQLiteSessionStore(db_path).close()
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        columns = [row[1] for row in conn.execute("PRAGMA table_info(sessions)")]
    finally:
        conn.close()
    assert "sessions_owner_updated" in indexes
    assert columns == ["id", "owner", "catalog", "updated", "version", "data"]


def test_for_data_dir_uses_default_file(tmp_path: Path) -> None:
    data_dir = tmp_path / "new" / "data"
    with SQLiteSessionStore.for_data_dir(data_dir) as store:
        store.put(SessionState(catalog="movies"))
    assert (data_dir / "sessions.sqlite3").is_file()


# -- listing -------------------------------------------------------------------------------------------


def test_list_by_owner_newest_first_with_limit_and_offset(store: SQLiteSessionStore) -> None:
    ana = [store.put(SessionState(id=f"ana-{i}", owner="ana", catalog="movies")) for i in range(5)]
    bob = store.put(SessionState(id="bob-0", owner="bob", catalog="movies"))
    # Touch the oldest of ana's sessions: it becomes the most recently updated.
    ana[0] = store.put(ana[0])

    listed = store.list(owner="ana")
    assert [s.id for s in listed] == ["ana-0", "ana-4", "ana-3", "ana-2", "ana-1"]
    assert [s.updated for s in listed] == sorted((s.updated for s in listed), reverse=True)
    assert all(s.owner == "ana" for s in listed)
    assert listed[0] == ana[0]

    assert [s.id for s in store.list(owner="ana", limit=2)] == ["ana-0", "ana-4"]
    assert [s.id for s in store.list(owner="ana", limit=2, offset=2)] == ["ana-3", "ana-2"]
    assert [s.id for s in store.list(owner="ana", limit=10, offset=4)] == ["ana-1"]
    assert store.list(owner="ana", offset=5) == []
    assert store.list(owner="bob") == [bob]
    assert store.list(owner="carol") == []
    assert [s.id for s in store.list(limit=2)] == ["ana-0", "bob-0"]
    assert len(store.list()) == 6
    with pytest.raises(ValueError):
        store.list(limit=-1)


def test_export_session_is_json_ready(store: SQLiteSessionStore) -> None:
    state = SessionState(owner="ana", catalog="movies", preference=[0.5, -0.25])
    state.messages.append(Message(role="assistant", text="Try Up", items=["m2"]))
    exported = export_session(store.put(state))
    assert json.loads(json.dumps(exported)) == exported
    assert exported["version"] == 1
    assert exported["messages"][0]["items"] == ["m2"]
    assert SessionState.model_validate(exported) == store.get(state.id)


# -- concurrency inside one process --------------------------------------------------------------------


def test_threads_under_lock_lose_no_update(store: SQLiteSessionStore) -> None:
    session_id = store.put(SessionState(catalog="movies")).id
    inside = 0
    max_inside = 0
    counter_guard = threading.Lock()

    def work(worker: int) -> None:
        nonlocal inside, max_inside
        for i in range(25):
            with store.lock(session_id):
                with counter_guard:
                    inside += 1
                    max_inside = max(max_inside, inside)
                _append(store, session_id, f"{worker}-{i}")  # a conflict here would raise
                with counter_guard:
                    inside -= 1

    run_threads(8, work)

    final = store.get(session_id)
    assert len(final.messages) == 200
    assert {m.text for m in final.messages} == {f"{w}-{i}" for w in range(8) for i in range(25)}
    assert final.version == 201
    assert max_inside == 1, "the lock let two threads into the same session"
    assert len(store.locks) == 0, "unused lock entries must be dropped"


def test_threads_without_lock_retry_on_conflict(store: SQLiteSessionStore) -> None:
    session_id = store.put(SessionState(catalog="movies")).id
    conflicts: list[int] = []

    def work(worker: int) -> None:
        for i in range(25):
            conflicts.append(_append_with_retry(store, session_id, f"{worker}-{i}"))

    run_threads(8, work)

    final = store.get(session_id)
    assert len(final.messages) == 200
    assert {m.text for m in final.messages} == {f"{w}-{i}" for w in range(8) for i in range(25)}
    assert final.version == 201
    assert len(conflicts) == 200


def test_locks_of_different_sessions_do_not_block_each_other(store: SQLiteSessionStore) -> None:
    other_acquired = threading.Event()

    def take_other() -> None:
        with store.lock("b"):
            other_acquired.set()

    with store.lock("a"):
        thread = threading.Thread(target=take_other)
        thread.start()
        assert other_acquired.wait(5), "lock 'b' waited for lock 'a'"
        thread.join(5)
        assert len(store.locks) == 1


def test_lock_from_asyncio_via_worker_thread(store: SQLiteSessionStore) -> None:
    session_id = store.put(SessionState(catalog="movies")).id

    def turn(text: str) -> None:
        with store.lock(session_id):
            _append(store, session_id, text)

    async def main() -> None:
        await asyncio.gather(*(asyncio.to_thread(turn, f"t{i}") for i in range(20)))

    asyncio.run(main())
    assert len(store.get(session_id).messages) == 20


# -- several processes ---------------------------------------------------------------------------------

_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from chatbot.sessions import SQLiteSessionStore, SessionConflict
    from chatbot.state import Message

    path, session_id, worker, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    store = SQLiteSessionStore(Path(path))
    print("ready", flush=True)
    sys.stdin.readline()  # wait for "go", so that the processes really overlap
    conflicts = 0
    for i in range(count):
        while True:
            state = store.get(session_id)
            state.messages.append(Message(role="user", text=f"{worker}-{i}"))
            try:
                store.put(state)
                break
            except SessionConflict:
                conflicts += 1
    store.close()
    print("done", conflicts, flush=True)
    """
)


def test_processes_sharing_the_file_lose_no_write(store: SQLiteSessionStore, db_path: Path) -> None:
    session_id = store.put(SessionState(catalog="movies")).id
    workers, count = 3, 30
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(db_path), session_id, f"p{w}", str(count)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_child_env(),
        )
        for w in range(workers)
    ]
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outputs = [proc.communicate(timeout=60)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert [proc.returncode for proc in procs] == [0] * workers, outputs
    assert all(out.startswith("done") for out in outputs)

    final = store.get(session_id)
    assert len(final.messages) == workers * count
    assert {m.text for m in final.messages} == {f"p{w}-{i}" for w in range(workers) for i in range(count)}
    assert final.version == workers * count + 1


_KILLED_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from chatbot.sessions import SQLiteSessionStore
    from chatbot.state import Message, SessionState

    store = SQLiteSessionStore(Path(sys.argv[1]))
    i = 0
    while True:
        state = SessionState(id=f"s{i}", owner="killed", catalog="movies")
        state.messages.append(Message(role="user", text=f"message {i}"))
        store.put(state)
        print(state.id, flush=True)  # acknowledged only after put returned
        i += 1
    """
)


def test_kill_9_loses_no_acknowledged_session(db_path: Path) -> None:
    SQLiteSessionStore(db_path).close()
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(db_path)],
        stdout=subprocess.PIPE, text=True, env=_child_env(),
    )
    acknowledged: list[str] = []
    try:
        lines = _line_reader(proc.stdout)
        while len(acknowledged) < 30:
            line = lines.get(timeout=30).strip()
            assert line, f"writer exited early with {proc.wait()}"
            acknowledged.append(line)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL

    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        raw = dict(conn.execute("SELECT id, data FROM sessions").fetchall())
    finally:
        conn.close()
    with SQLiteSessionStore(db_path) as store:
        for session_id in acknowledged:
            assert session_id in raw
            assert json.loads(raw[session_id])["id"] == session_id
            state = store.get(session_id)
            assert state is not None
            assert state.version == 1
            assert state.messages[0].text == f"message {session_id[1:]}"
