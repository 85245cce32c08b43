"""The session-store contract on SQLite and on a real Redis; two chatbots (two API workers) sharing one Redis.

Redis runs as a real ``redis-server`` subprocess on a free loopback port with a temporary directory (append-only
file, ``appendfsync always``), started and stopped by the fixtures here. Without ``redis-server`` the Redis
tests skip and say how to install it (``scripts/install_services.sh``, which ``make test`` runs).

This module also holds the process helpers (`RedisServer`, `ChromaServer`, `RecchatServer`) that
``tests/test_faults.py`` and ``tests/test_chroma_server_api.py`` import.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from chatbot.sessions import (
    SessionConflict,
    SessionNotFound,
    SessionStore,
    SQLiteSessionStore,
    export_session,
    require_session,
)
from chatbot.state import Message, Recommendation, SessionState
from retrieval.errors import SessionStoreUnavailable
from tests.conftest import run_threads

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # recchat and chroma live next to the interpreter in the virtual environment


# -- processes (shared with test_faults.py and test_chroma_server_api.py) ----------------------------------


def free_port() -> int:
    """A TCP port nobody listens on right now (bound to port 0 on loopback, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(path: Path, lines: int = 40) -> str:
    """The end of a process log, for assertion messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def child_env(**settings: str) -> dict[str, str]:
    """The test environment without any RECCHAT_* variable, plus ``settings`` (``data_dir`` -> RECCHAT_DATA_DIR)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECCHAT_")}
    env.update({f"RECCHAT_{key.upper()}": value for key, value in settings.items()})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    env["TQDM_DISABLE"] = "1"
    return env


class Service:
    """A subprocess in its own process group (so that kill reaches every child), logging to a file."""

    name = "service"

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = directory / f"{self.name}-{self.port}.log"
        directory.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str] | None:
        return None

    def is_ready(self) -> bool:
        raise NotImplementedError

    def start(self, timeout: float = 60.0) -> None:
        """Start the process and wait until it serves; fail the test with its log otherwise."""
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Start the process without waiting (several can then boot at once); see `wait_ready`."""
        assert self.process is None or self.process.poll() is not None, f"{self.name} is already running"
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.env(),
                                            cwd=self.directory, start_new_session=True)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until the launched process serves; on failure kill it and fail the test with its log."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        try:
            while not self.is_ready():
                if self.process.poll() is not None:
                    pytest.fail(f"{self.name} exited at start-up ({self.process.returncode}):\n{log_tail(self.log)}")
                if time.monotonic() > deadline:
                    pytest.fail(f"{self.name} did not get ready within {timeout:.0f} s:\n{log_tail(self.log)}")
                time.sleep(0.1)
        except BaseException:
            self.kill()  # never leave a half-started process behind
            raise

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (default: kill -9) and reap the process."""
        self.send_signal(sig)
        self.reap()

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the process group, if the process still runs."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)

    def reap(self, timeout: float = 20) -> None:
        """Wait for the process to exit, killing its group after ``timeout`` seconds."""
        if self.process is None:
            return
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    stop_signal = signal.SIGTERM

    def stop(self) -> None:
        """A graceful stop (``stop_signal``), escalating to SIGKILL."""
        self.kill(self.stop_signal)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> Service:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_all(*services: Service) -> None:
    """Stop several services at once: signal them all, then wait for each."""
    for service in services:
        service.send_signal(service.stop_signal)
    for service in services:
        service.reap()


def redis_server_or_skip() -> str:
    """The ``redis-server`` executable, or skip the test saying how to get it."""
    found = shutil.which("redis-server")
    if found is None:
        pytest.skip("redis-server is not installed: run `bash scripts/install_services.sh` (make test does)")
    return found


class RedisServer(Service):
    """A throw-away ``redis-server`` on 127.0.0.1: append-only file fsynced at every write, no RDB snapshots."""

    name = "redis"

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.executable = redis_server_or_skip()
        super().__init__(directory, port)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [self.executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.directory)]

    def is_ready(self) -> bool:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        client = redis.Redis(port=self.port, socket_connect_timeout=1, socket_timeout=1, retry=Retry(NoBackoff(), 0))
        try:
            return bool(client.ping())  # also false while it is still loading the append-only file
        except redis.RedisError:
            return False
        finally:
            client.close()


class ChromaServer(Service):
    """A real ``chroma run`` server on 127.0.0.1 over a directory."""

    name = "chroma"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [str(BIN / "chroma"), "run", "--path", str(self.directory / "chroma-data"), "--host", "127.0.0.1",
                "--port", str(self.port)]

    def is_ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/api/v2/heartbeat", timeout=1).status_code == 200
        except httpx.TransportError:
            return False


class RecchatServer(Service):
    """``recchat serve --no-lm`` on a free port with the given ``RECCHAT_*`` settings; ready when /readyz is 200."""

    name = "recchat"

    def __init__(self, directory: Path, port: int | None = None, **settings: str) -> None:
        super().__init__(directory, port)
        self.settings = {"rate_limit_per_minute": "0", **settings}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [str(BIN / "recchat"), "serve", "--no-lm", "--host", "127.0.0.1", "--port", str(self.port),
                "--log-level", "warning"]

    def env(self) -> dict[str, str]:
        return child_env(**self.settings)

    def is_ready(self) -> bool:
        try:
            response = httpx.get(f"{self.url}/readyz", timeout=5)
        except httpx.TransportError:
            return False
        if response.json().get("status") == "failed":
            pytest.fail(f"recchat warm-up failed: {response.text}\n{log_tail(self.log)}")
        return response.status_code == 200

    def start(self, timeout: float = 120.0) -> None:
        super().start(timeout)

    def wait_ready(self, timeout: float = 120.0) -> None:
        super().wait_ready(timeout)

    stop_signal = signal.SIGINT  # what Ctrl-C does: uvicorn shuts down cleanly


def index_catalog(settings: Any, embedder: Any, path: Path, name: str) -> None:  # noqa: ANN401
    """Index a catalog file for a server's data directory (and Chroma) with the test session's embedder."""
    from retrieval.catalog import load_catalog
    from retrieval.index import Library

    Library(settings, embedder=embedder, log=lambda message: None).add(load_catalog(path, name), progress=False)


# -- fixtures -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the module; each test starts from an empty database (see `redis_url`)."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server  # type: ignore[misc]


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    import redis

    with contextlib.closing(redis.Redis.from_url(redis_server.url)) as client:
        client.flushdb()
    return redis_server.url


def open_redis_store(url: str) -> SessionStore:
    from chatbot.redis_sessions import RedisSessionStore

    return RedisSessionStore.from_url(url)


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], SessionStore]:
    """``backend()`` opens a (further) store on the same data: a SQLite file or one Redis database."""
    if request.param == "sqlite":
        path = tmp_path / "sessions.sqlite3"
        return lambda: SQLiteSessionStore(path)
    url = request.getfixturevalue("redis_url")
    return lambda: open_redis_store(url)


@pytest.fixture
def store(backend: Callable[[], SessionStore]) -> Iterator[Any]:
    opened = backend()
    try:
        yield opened
    finally:
        opened.close()


def _append(store: SessionStore, session_id: str, text: str) -> SessionState:
    state = require_session(store, session_id)
    state.messages.append(Message(role="user", text=text))
    return store.put(state)


# -- the contract, on both stores ---------------------------------------------------------------------


def test_store_implements_the_protocol_and_answers_ping(store: Any) -> None:
    assert isinstance(store, SessionStore)
    store.ping()


def test_put_get_round_trip_and_versions(store: Any) -> None:
    state = SessionState(owner="ana", catalog="movies", liked=["m1"], wishes=["not too violent"])
    state.messages.append(Message(role="user", text="something funny", items=["m1"]))
    state.recommended.append(Recommendation(id="m2", title="Up", score=0.9, justification="warm", turn=1))
    before = time.time()

    stored = store.put(state)

    assert stored.version == 1 and stored.updated >= before
    assert state.version == 0, "put must not modify its argument"
    assert store.get(state.id) == stored
    assert store.get("no-such-session") is None
    state.liked.append("changed after put")
    assert store.get(state.id).liked == ["m1"], "the stored copy must not share objects with the argument"
    for expected in (2, 3, 4):
        stored = store.put(stored)
        assert stored.version == expected
    assert store.get(state.id).version == 4


def test_stale_put_conflicts_and_keeps_the_newer_write(store: Any) -> None:
    first = store.put(SessionState(catalog="movies"))
    reader_a, reader_b = store.get(first.id), store.get(first.id)
    reader_a.liked.append("a")
    winner = store.put(reader_a)
    reader_b.liked.append("b")
    with pytest.raises(SessionConflict, match="version 1, but found stored version 2"):
        store.put(reader_b)
    assert store.get(first.id) == winner


def test_creating_the_same_session_twice_conflicts(store: Any) -> None:
    new = SessionState(id="s1", catalog="movies")
    stale_copy = new.model_copy(deep=True)
    store.put(new)
    stale_copy.liked.append("x")
    with pytest.raises(SessionConflict):
        store.put(stale_copy)
    assert store.get("s1").liked == []


def test_delete_and_put_of_a_deleted_session(store: Any) -> None:
    stored = store.put(SessionState(owner="ana", catalog="movies"))
    other = store.put(SessionState(owner="ana", catalog="movies"))
    assert store.delete(stored.id) is True
    assert store.delete(stored.id) is False
    assert store.get(stored.id) is None
    with pytest.raises(SessionNotFound):
        require_session(store, stored.id)
    with pytest.raises(SessionConflict, match="no stored session"):
        store.put(stored)
    assert store.get(stored.id) is None
    assert [s.id for s in store.list(owner="ana")] == [other.id], "a deleted session must leave the listing"
    assert [s.id for s in store.list()] == [other.id]


def test_list_by_owner_newest_first_with_limit_and_offset(store: Any) -> None:
    ana = [store.put(SessionState(id=f"ana-{i}", owner="ana", catalog="movies")) for i in range(5)]
    bob = store.put(SessionState(id="bob-0", owner="bob", catalog="movies"))
    ana[0] = store.put(ana[0])  # the oldest becomes the most recently updated

    listed = store.list(owner="ana")
    assert [s.id for s in listed] == ["ana-0", "ana-4", "ana-3", "ana-2", "ana-1"]
    assert listed[0] == ana[0]
    assert [s.id for s in store.list(owner="ana", limit=2)] == ["ana-0", "ana-4"]
    assert [s.id for s in store.list(owner="ana", limit=2, offset=2)] == ["ana-3", "ana-2"]
    assert [s.id for s in store.list(owner="ana", limit=10, offset=4)] == ["ana-1"]
    assert store.list(owner="ana", offset=5) == []
    assert store.list(owner="ana", limit=0) == []
    assert store.list(owner="bob") == [bob]
    assert store.list(owner="carol") == []
    assert [s.id for s in store.list(limit=2)] == ["ana-0", "bob-0"]
    assert len(store.list()) == 6
    with pytest.raises(ValueError):
        store.list(limit=-1)


def test_equal_update_times_list_by_id_descending(store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.123456)
    for session_id in ("b", "c", "a"):
        store.put(SessionState(id=session_id, owner="ana", catalog="movies"))
    assert [s.id for s in store.list(owner="ana")] == ["c", "b", "a"]


def test_a_new_owner_moves_the_session_between_listings(store: Any) -> None:
    state = store.put(SessionState(id="s", owner="ana", catalog="movies"))
    state.owner = "bob"
    store.put(state)
    assert store.list(owner="ana") == []
    assert [s.id for s in store.list(owner="bob")] == ["s"]


def test_export_session_is_json_ready(store: Any) -> None:
    state = SessionState(owner="ana", catalog="movies", preference=[0.5, -0.25])
    state.messages.append(Message(role="assistant", text="Try Up", items=["m2"]))
    exported = export_session(store.put(state))
    assert json.loads(json.dumps(exported)) == exported
    assert exported["version"] == 1 and exported["messages"][0]["items"] == ["m2"]
    assert SessionState.model_validate(exported) == store.get(state.id)


def test_a_second_store_on_the_same_data_sees_everything_and_close_is_final(
        backend: Callable[[], SessionStore]) -> None:
    first = backend()
    stored = first.put(SessionState(owner="ana", catalog="movies"))
    first.close()
    first.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        first.get(stored.id)
    second = backend()
    try:
        assert second.get(stored.id) == stored
        assert second.put(stored).version == 2
    finally:
        second.close()


def test_threads_under_lock_lose_no_update(store: Any) -> None:
    session_id = store.put(SessionState(catalog="movies")).id

    def work(worker: int) -> None:
        for i in range(20):
            with store.lock(session_id):
                _append(store, session_id, f"{worker}-{i}")  # a conflict here would raise

    run_threads(6, work)
    final = store.get(session_id)
    assert {m.text for m in final.messages} == {f"{w}-{i}" for w in range(6) for i in range(20)}
    assert final.version == 121
    assert len(store.locks) == 0


def test_writers_on_separate_stores_retry_on_conflict_and_lose_nothing(backend: Callable[[], SessionStore]) -> None:
    """Like two worker processes: each thread has its own store (connection), no shared lock."""
    stores = [backend() for _ in range(4)]
    try:
        session_id = stores[0].put(SessionState(catalog="movies")).id
        conflicts = [0] * len(stores)

        def work(worker: int) -> None:
            for i in range(20):
                while True:
                    try:
                        _append(stores[worker], session_id, f"{worker}-{i}")
                        break
                    except SessionConflict:
                        conflicts[worker] += 1

        run_threads(len(stores), work)
        final = stores[0].get(session_id)
        assert len(final.messages) == 80
        assert {m.text for m in final.messages} == {f"{w}-{i}" for w in range(4) for i in range(20)}
        assert final.version == 81
    finally:
        for opened in stores:
            opened.close()


# -- unavailable stores -------------------------------------------------------------------------------


def test_sqlite_locked_past_busy_timeout_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "sessions.sqlite3"
    with SQLiteSessionStore(path, busy_timeout_ms=200) as store:
        stored = store.put(SessionState(catalog="movies"))
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")  # another process holding the write lock for too long
        try:
            with pytest.raises(SessionStoreUnavailable, match="database is locked"):
                store.put(stored)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert store.put(stored).version == 2, "the store must work again once the lock is released"
        store.ping()


def test_redis_down_raises_unavailable_fast_and_recovers(tmp_path: Path) -> None:
    from chatbot.redis_sessions import RedisSessionStore

    server = RedisServer(tmp_path / "redis")
    server.start()
    store = RedisSessionStore.from_url(server.url)
    try:
        stored = store.put(SessionState(owner="ana", catalog="movies"))
        server.kill()  # kill -9: the append-only file (fsync always) still holds the session
        calls: list[Callable[[], object]] = [store.ping, lambda: store.get(stored.id), lambda: store.put(stored),
                                             lambda: store.list("ana"), lambda: store.delete(stored.id)]
        for call in calls:
            started = time.monotonic()
            with pytest.raises(SessionStoreUnavailable) as raised:
                call()
            assert time.monotonic() - started < 3
            assert raised.value.code == "session_store_unavailable"
        server.start()
        store.ping()  # the same client object reconnects by itself
        assert store.get(stored.id) == stored
        assert store.put(stored).version == 2
        assert [s.id for s in store.list("ana")] == [stored.id]
    finally:
        store.close()
        server.stop()


def test_hung_redis_times_out_as_unavailable_and_recovers(tmp_path: Path) -> None:
    """A Redis that accepts connections but never answers (SIGSTOP): the socket timeout turns it into a 503."""
    from chatbot.redis_sessions import RedisSessionStore

    server = RedisServer(tmp_path / "redis")
    server.start()
    store = RedisSessionStore.from_url(server.url, socket_timeout_s=0.5)
    try:
        stored = store.put(SessionState(catalog="movies"))
        server.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(SessionStoreUnavailable):
                store.get(stored.id)
            assert time.monotonic() - started < 2, "a timed-out command must not be retried"
        finally:
            server.send_signal(signal.SIGCONT)
        assert store.get(stored.id) == stored
        assert store.put(stored).version == 2
    finally:
        store.close()
        server.stop()


def test_unreachable_redis_at_start_up_is_reported_not_raised_by_the_constructor() -> None:
    """A worker must come up (and answer 503) while Redis is down, so nothing connects at construction."""
    from chatbot.redis_sessions import RedisSessionStore

    redis_server_or_skip()
    store = RedisSessionStore.from_url(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(SessionStoreUnavailable):
        store.ping()
    store.close()


def test_redis_retried_write_after_a_lost_reply_is_not_a_conflict(redis_url: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The client retries a command once after a dropped connection; if Redis had applied the write, the
    retry finds its own data and succeeds instead of reporting a conflict (which would redo the turn)."""
    store = open_redis_store(redis_url)
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.5)  # the retry writes byte-identical data
    try:
        new = SessionState(id="s", catalog="movies")
        first = store.put(new)
        again = store.put(new.model_copy(deep=True))
        assert again == first and store.get("s").version == 1
        first.liked.append("x")
        store.put(first)
        with pytest.raises(SessionConflict):
            store.put(SessionState(id="s", catalog="movies", liked=["y"]))
    finally:
        store.close()


def test_redis_keys_are_namespaced_without_expiry(redis_url: str) -> None:
    import redis

    store = open_redis_store(redis_url)
    try:
        store.put(SessionState(id="s1", owner="ana", catalog="movies"))
    finally:
        store.close()
    with contextlib.closing(redis.Redis.from_url(redis_url, decode_responses=True)) as client:
        keys = set(client.keys("*"))
        assert keys == {"recchat:session:s1", "recchat:updated", "recchat:owner:ana"}
        assert all(client.ttl(key) == -1 for key in keys)


# -- two chatbots (API workers) on one Redis --------------------------------------------------------


@pytest.mark.slow
def test_two_chatbots_on_one_redis_share_sessions_and_turns(redis_url: str, settings: Any, library: Any,
                                                             movies_small: Any) -> None:
    from chatbot.service import Chatbot

    redis_settings = settings.model_copy(update={"sessions_url": redis_url, "default_catalog": "movies_small"})
    one = Chatbot(redis_settings, library, use_lm=False)  # each opens its own store from sessions_url
    two = Chatbot(redis_settings, library, use_lm=False)
    try:
        assert type(one.store).__name__ == "RedisSessionStore" and one.store is not two.store
        assert one.check_dependencies()["session_store"] == "ok"
        state = one.create_session(owner="ana", likes=["Heat (1995)"])
        assert two.get_session(state.id, "ana").liked == state.liked

        reply = two.send(state.id, "something like Heat but funnier", owner="ana")
        assert reply.recommendations and all(r.id in movies_small for r in reply.recommendations)
        seen_by_one = one.get_session(state.id, "ana")
        assert [m.role for m in seen_by_one.messages] == ["user", "assistant"]
        assert [s.id for s in one.list_sessions("ana")] == [state.id]

        # Both workers take turns on the same session at once: the version check makes the loser redo its
        # turn on the fresh state. `SessionConflict` (the API's 409) means the turn was not stored, and the
        # client sends it again, as an HTTP client would; no turn may be lost or stored twice.
        conflicts = [0, 0]

        def work(worker: int) -> None:
            bot = (one, two)[worker]
            for i in range(4):
                while True:
                    try:
                        bot.send(state.id, f"worker {worker} turn {i}: any thriller?", owner="ana")
                        break
                    except SessionConflict:
                        conflicts[worker] += 1

        run_threads(2, work)
        texts = [m.text for m in two.get_session(state.id).messages if m.role == "user"]
        assert sorted(texts[1:]) == sorted(f"worker {w} turn {i}: any thriller?" for w in range(2) for i in range(4))
        one.delete_session(state.id, "ana")
        with pytest.raises(SessionNotFound):
            two.get_session(state.id)
    finally:
        one.close()
        two.close()


@pytest.mark.slow
def test_two_api_apps_on_one_redis_serve_one_conversation(redis_url: str, settings: Any, library: Any,
                                                           movies_small: Any) -> None:
    """Create a session on one worker, talk on the other, read it back on the first: all over HTTP."""
    from chatbot.api import create_app
    from chatbot.service import Chatbot
    from tests.conftest import live_server

    worker_settings = settings.model_copy(update={"sessions_url": redis_url, "default_catalog": "movies_small",
                                                  "rate_limit_per_minute": 0})

    def app() -> Any:  # noqa: ANN401 - a FastAPI app
        return create_app(lambda: Chatbot(worker_settings, library, use_lm=False), worker_settings, ui=False)

    with live_server(app()) as url_a, live_server(app()) as url_b, \
            httpx.Client(base_url=url_a, timeout=60) as a, httpx.Client(base_url=url_b, timeout=60) as b:
        ready = a.get("/readyz").json()
        assert ready["status"] == "ready" and ready["dependencies"]["session_store"] == "ok"
        created = a.post("/v1/sessions", json={})
        assert created.status_code == 201, created.text
        session_id = created.json()["id"]

        reply = b.post(f"/v1/sessions/{session_id}/messages", json={"text": "I loved The Matrix (1999), more like it"})
        assert reply.status_code == 200, reply.text
        recommended = [r["id"] for r in reply.json()["recommendations"]]
        assert recommended and set(recommended) <= set(movies_small.ids)

        state = a.get(f"/v1/sessions/{session_id}").json()
        assert [m["role"] for m in state["messages"]] == ["user", "assistant"]
        assert state["messages"][1]["text"] == reply.json()["reply"]
        assert [r["id"] for r in state["recommendations"]] == recommended
        assert [s["id"] for s in b.get("/v1/sessions").json()["sessions"]] == [session_id]

        assert b.delete(f"/v1/sessions/{session_id}").status_code == 204
        gone = a.get(f"/v1/sessions/{session_id}")
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "session_not_found"
