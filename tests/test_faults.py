"""Faults, with real processes: the API server killed under load, Redis down, the Chroma server down.

Two ``recchat serve --no-lm`` processes over the small products catalog:

* ``sqlite``: sessions in SQLite under its data directory, vectors in the embedded Chroma there;
* ``shared``: sessions in a real ``redis-server`` (append-only file, fsync always) and vectors in a real
  ``chroma run`` server, both subprocesses on free loopback ports.

What must hold: a reply the client got (200) is stored, whatever happens to the server afterwards; a dependency
that goes down turns the requests that need it into fast 503s with a stable code while the process, /healthz
and everything else stay up; /readyz names the dependency; and the service recovers by itself, without a
restart, when the dependency comes back.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from retrieval.settings import Settings
from tests.conftest import DATA
from tests.test_redis_sessions import (
    ChromaServer,
    RecchatServer,
    RedisServer,
    index_catalog,
    log_tail,
    stop_all,
)

pytestmark = pytest.mark.slow  # starts servers and loads the embedding model

FAST_S = 5.0  # a request that needs a dead dependency must be answered within this
WISHES = ("a rugged phone with a big battery", "noise cancelling headphones for flights", "cheap earbuds for the gym",
          "a light laptop for travel", "a phone with a great camera", "something for my kitchen")


@dataclass
class Stacks:
    """The processes of this module."""

    redis: RedisServer
    chroma: ChromaServer
    sqlite: RecchatServer  # SQLite sessions, embedded Chroma
    shared: RecchatServer  # Redis sessions, the Chroma server

    def server(self, name: str) -> RecchatServer:
        return self.sqlite if name == "sqlite" else self.shared


@pytest.fixture(scope="module")
def stacks(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> Iterator[Stacks]:
    root = tmp_path_factory.mktemp("faults")
    redis, chroma = RedisServer(root / "redis"), ChromaServer(root / "chroma")
    sqlite_data, shared_data = root / "sqlite-data", root / "shared-data"
    sqlite = RecchatServer(root / "sqlite-serve", data_dir=str(sqlite_data), default_catalog="products")
    shared = RecchatServer(root / "shared-serve", data_dir=str(shared_data), default_catalog="products",
                           sessions_url=redis.url, chroma_url=chroma.url)
    stacks = Stacks(redis, chroma, sqlite, shared)
    try:
        redis.start()
        chroma.start()
        index_catalog(Settings(data_dir=sqlite_data), embedder, DATA / "products.csv", "products")
        index_catalog(Settings(data_dir=shared_data, chroma_url=chroma.url), embedder, DATA / "products.csv",
                      "products")
        sqlite.launch()  # both API servers boot at once: start-up is most of this module's time
        shared.launch()
        sqlite.wait_ready()
        shared.wait_ready()
        yield stacks
    finally:
        stop_all(sqlite, shared, chroma, redis)


def ensure_running(*services: Any) -> None:  # noqa: ANN401 - Service
    """Start what an earlier failed test may have left stopped, so that one failure does not cascade."""
    for service in services:
        if not service.running:
            service.start()


def error_code(response: httpx.Response) -> str:
    return response.json()["error"]["code"]


def timed(call: Any) -> tuple[httpx.Response, float]:  # noqa: ANN401 - a callable returning a response
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def user_texts(client: httpx.Client, session_id: str) -> list[str]:
    response = client.get(f"/v1/sessions/{session_id}")
    assert response.status_code == 200, response.text
    return [m["text"] for m in response.json()["messages"] if m["role"] == "user"]


# -- (a) kill -9 of the API server under load ------------------------------------------------------------


class Load:
    """Client threads talking to one server: two sessions each, messages alternating, until the server dies."""

    def __init__(self, server: RecchatServer, clients: int = 4) -> None:
        self.server = server
        self.created: list[str] = []  # sessions that got a 201
        self.acked: list[tuple[str, str]] = []  # (session, message text) that got a 200
        self.failures: list[str] = []
        self.killed = threading.Event()
        self._guard = threading.Lock()
        self.threads = [threading.Thread(target=self._client, args=(w,), daemon=True) for w in range(clients)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def _client(self, worker: int) -> None:
        with httpx.Client(base_url=self.server.url, timeout=30) as c:
            try:
                sessions = []
                for _ in range(2):
                    response = c.post("/v1/sessions", json={})
                    if response.status_code != 201:
                        self.failures.append(f"create: {response.status_code} {response.text}")
                        return
                    sessions.append(response.json()["id"])
                    with self._guard:
                        self.created.append(sessions[-1])
                for n in range(100_000):
                    session_id = sessions[n % 2]
                    text = f"client {worker} message {n}: {WISHES[(worker + n) % len(WISHES)]}"
                    response = c.post(f"/v1/sessions/{session_id}/messages", json={"text": text})
                    if response.status_code != 200:
                        self.failures.append(f"message: {response.status_code} {response.text}")
                        return
                    with self._guard:
                        self.acked.append((session_id, text))
            except httpx.TransportError as exc:
                if not self.killed.is_set():
                    self.failures.append(f"transport error before the kill: {exc!r}")

    def wait_for(self, replies: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acked) < replies and not self.failures and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not self.failures, self.failures
        assert len(self.acked) >= replies, f"only {len(self.acked)} replies in {timeout:.0f} s"
        assert all(t.is_alive() for t in self.threads), "the load must still be running when the server dies"

    def kill_server(self) -> None:
        self.killed.set()
        self.server.kill()  # kill -9, with requests in flight

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=60)
        assert not any(t.is_alive() for t in self.threads)
        assert not self.failures, self.failures

    def check_after_restart(self) -> None:
        """Every created session exists; every acknowledged message is in it exactly once; the talk goes on."""
        assert len(self.created) == 2 * len(self.threads)
        with httpx.Client(base_url=self.server.url, timeout=30) as c:
            stored = {session_id: user_texts(c, session_id) for session_id in self.created}
            for session_id, text in self.acked:
                assert stored[session_id].count(text) == 1, f"acknowledged message lost or doubled: {text!r}"
            again = c.post(f"/v1/sessions/{self.created[0]}/messages", json={"text": "any other suggestions?"})
            assert again.status_code == 200, again.text


def test_kill_9_under_load_loses_no_acknowledged_message(stacks: Stacks) -> None:
    """Both servers at once (SQLite and Redis sessions), so that their restarts overlap."""
    ensure_running(stacks.redis, stacks.chroma, stacks.sqlite, stacks.shared)
    loads = [Load(stacks.sqlite), Load(stacks.shared)]
    for load in loads:
        load.start()
    for load in loads:
        load.wait_for(replies=24)
    for load in loads:
        load.kill_server()
    for load in loads:
        load.join()
    for load in loads:
        load.server.launch()  # the same data directory; the same Redis
    for load in loads:
        load.server.wait_ready()
    for load, backend in zip(loads, ("sqlite", "redis"), strict=True):
        try:
            load.check_after_restart()
        except AssertionError as exc:
            raise AssertionError(f"{backend} sessions: {exc}") from exc


# -- (b) Redis down ----------------------------------------------------------------------------------------


def test_redis_down_gives_fast_503s_and_recovers_without_a_restart(stacks: Stacks) -> None:
    server, redis = stacks.shared, stacks.redis
    ensure_running(redis, stacks.chroma, server)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        session_id = c.post("/v1/sessions", json={}).json()["id"]
        before = c.post(f"/v1/sessions/{session_id}/messages", json={"text": WISHES[0]})
        assert before.status_code == 200, before.text
        pid = server.process.pid

        redis.kill()  # kill -9
        try:
            requests = {
                "create": lambda: c.post("/v1/sessions", json={}),
                "read": lambda: c.get(f"/v1/sessions/{session_id}"),
                "list": lambda: c.get("/v1/sessions"),
                "message": lambda: c.post(f"/v1/sessions/{session_id}/messages", json={"text": WISHES[1]}),
                "feedback": lambda: c.post(f"/v1/sessions/{session_id}/feedback",
                                           json={"item_id": "p-001", "reaction": "like"}),
                "delete": lambda: c.delete(f"/v1/sessions/{session_id}"),
            }
            for name, call in requests.items():
                response, elapsed = timed(call)
                assert response.status_code == 503, f"{name}: {response.status_code} {response.text}"
                assert error_code(response) == "session_store_unavailable", name
                assert response.headers.get("Retry-After"), name
                assert elapsed < FAST_S, f"{name} took {elapsed:.1f} s"
            assert c.get("/healthz").status_code == 200
            items = c.get("/v1/catalogs/products/items", params={"q": "phone"})
            assert items.status_code == 200, "routes that do not need sessions keep working"
            ready, elapsed = timed(lambda: c.get("/readyz"))
            assert ready.status_code == 503 and elapsed < FAST_S
            assert ready.json()["dependencies"]["session_store"] != "ok"
            assert ready.json()["dependencies"]["vector_store"] == "ok"
            assert "session_store" in ready.json()["reason"]
        finally:
            redis.start()  # the same port and directory: the append-only file brings the sessions back

        # No API restart: the very same process serves again.
        assert server.process.pid == pid and server.running, log_tail(server.log)
        after = c.post(f"/v1/sessions/{session_id}/messages", json={"text": WISHES[2]})
        assert after.status_code == 200, after.text
        assert user_texts(c, session_id) == [WISHES[0], WISHES[2]]
        assert c.post("/v1/sessions", json={}).status_code == 201
        assert c.get("/readyz").status_code == 200


# -- (c) Chroma server down ------------------------------------------------------------------------------


def test_chroma_down_gives_fast_503s_where_vectors_are_needed_and_recovers(stacks: Stacks) -> None:
    server, chroma = stacks.shared, stacks.chroma
    ensure_running(stacks.redis, chroma, server)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        session_id = c.post("/v1/sessions", json={}).json()["id"]
        before = c.post(f"/v1/sessions/{session_id}/messages", json={"text": WISHES[0]})
        assert before.status_code == 200, before.text
        pid = server.process.pid

        chroma.kill()  # kill -9
        try:
            # A turn queries Chroma for candidates; a semantic item search too.
            needs_chroma = {
                "message": lambda: c.post(f"/v1/sessions/{session_id}/messages", json={"text": WISHES[1]}),
                "semantic search": lambda: c.get("/v1/catalogs/products/items",
                                                 params={"q": "something to block out plane noise"}),
            }
            for name, call in needs_chroma.items():
                response, elapsed = timed(call)
                assert response.status_code == 503, f"{name}: {response.status_code} {response.text}"
                assert error_code(response) == "vector_store_unavailable", name
                assert elapsed < FAST_S, f"{name} took {elapsed:.1f} s"
            # The catalog and the item vectors are in memory, sessions in Redis: these need no Chroma.
            assert c.get("/healthz").status_code == 200
            assert c.get("/v1/catalogs/products/items", params={"limit": 3}).status_code == 200
            assert c.get("/v1/catalogs/products/items/p-001").status_code == 200
            assert c.post("/v1/sessions", json={}).status_code == 201
            assert user_texts(c, session_id) == [WISHES[0]], "the failed turn must not be stored"
            ready, elapsed = timed(lambda: c.get("/readyz"))
            assert ready.status_code == 503 and elapsed < FAST_S
            assert ready.json()["dependencies"]["vector_store"] != "ok"
            assert ready.json()["dependencies"]["session_store"] == "ok"
            assert "vector_store" in ready.json()["reason"]
        finally:
            chroma.start()  # the same path and port

        assert server.process.pid == pid and server.running, log_tail(server.log)
        after = c.post(f"/v1/sessions/{session_id}/messages", json={"text": WISHES[1]})
        assert after.status_code == 200, after.text
        assert all(r["id"].startswith("p-") for r in after.json()["recommendations"])
        search = c.get("/v1/catalogs/products/items", params={"q": "something to block out plane noise"})
        assert search.status_code == 200, search.text
        assert c.get("/readyz").status_code == 200


def test_a_hung_chroma_server_times_out_as_unavailable(stacks: Stacks, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A Chroma server that accepts connections but never answers (SIGSTOP) must not hang a request."""
    import numpy as np

    from retrieval import store as store_module
    from retrieval.errors import VectorStoreUnavailable

    chroma = stacks.chroma
    ensure_running(chroma)
    monkeypatch.setattr(store_module, "READ_TIMEOUT_S", 1.0)  # the real one (10 s) would only slow the test
    client = store_module.make_chroma_client(Settings(data_dir=tmp_path, chroma_url=chroma.url))
    vectors = store_module.VectorStore(client)
    try:
        assert vectors.count("products") == 20
        chroma.send_signal(signal.SIGSTOP)
        try:
            for call in (lambda: vectors.query("products", np.ones(384, dtype=np.float32), 3), vectors.heartbeat):
                started = time.monotonic()
                with pytest.raises(VectorStoreUnavailable):
                    call()
                assert time.monotonic() - started < 3
        finally:
            chroma.send_signal(signal.SIGCONT)
        assert vectors.count("products") == 20
    finally:
        monkeypatch.undo()
        store_module._set_http_timeouts(client)  # chromadb shares this HTTP client per server: restore it


def test_the_servers_logged_no_internal_error(stacks: Stacks) -> None:
    """Dependency failures are 503s, never 500s with a traceback."""
    for server in (stacks.sqlite, stacks.shared):
        log = Path(server.log).read_text(errors="replace")
        assert "internal_error" not in log, log_tail(server.log, 80)
