"""The HTTP API end to end: real uvicorn servers on 127.0.0.1, real HTTP through httpx.

The servers run `create_app` in a background thread with a `Chatbot` (no language model, so the suite stays
fast) over the small products catalog, indexed once per module with the real embedding model. One test
marked ``slow`` sends a message through the real language model.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from typer.testing import CliRunner

from chatbot import serve_cli
from chatbot.api import ApiConfig, InsecureBindError, TokenBuckets, check_bind, create_app, parse_api_keys
from chatbot.dialogue import Reply
from chatbot.service import Chatbot
from chatbot.sessions import SQLiteSessionStore
from retrieval.catalog import Catalog, load_catalog
from retrieval.index import Library
from retrieval.settings import Settings
from tests.conftest import DATA, live_server, wait_until_ready

KEYS = {"alice": "alice-key-3f9a1c", "bob": "bob-key-77d2e0", "ops": "ops-key-c41b9e"}
API_KEYS = f"{KEYS['alice']}:client:alice,{KEYS['bob']}:client:bob,{KEYS['ops']}:admin:ops"
SECRET = "kaboom at /srv/recchat/secret_module.py line 42"
SMALL_CSV = (
    "id,title,genre,description\n"
    "b-1,The Silent Forest,mystery|nature,A ranger solves a disappearance deep in an old-growth forest.\n"
    "b-2,Stars Over Lisbon,romance|travel,Two strangers meet on a night tram in Lisbon.\n"
    "b-3,Engines of Dawn,sci-fi|adventure,A crew restarts a dead generation ship.\n"
    "b-4,Kitchen Confidential Again,memoir|food,A chef's candid stories from restaurant kitchens.\n"
)


# -- servers -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("api")


@pytest.fixture(scope="module")
def api_settings(api_dir: Path) -> Settings:
    return Settings(data_dir=api_dir / "data", default_catalog="products")


@pytest.fixture(scope="module")
def api_library(api_settings: Settings, embedder: Any) -> Library:
    """A library with the products catalog indexed, shared by this module's servers."""
    library = Library(api_settings, embedder=embedder, log=lambda message: None)
    library.add(load_catalog(DATA / "products.csv", "products"), progress=False)
    return library


@pytest.fixture(scope="module")
def products_catalog(api_library: Library) -> Catalog:
    return api_library.catalog("products")


@pytest.fixture(scope="module")
def bot_factory(api_settings: Settings, api_library: Library, api_dir: Path) -> Callable[..., Callable[[], Chatbot]]:
    """``bot_factory(name, cls=Chatbot, settings=None)``: a factory for a chatbot with its own session store."""

    def make(name: str, cls: type[Chatbot] = Chatbot, settings: Settings | None = None,
             **kwargs: Any) -> Callable[[], Chatbot]:
        def factory() -> Chatbot:
            store = SQLiteSessionStore(api_dir / f"{name}.sqlite3")
            return cls(settings or api_settings, library=api_library, store=store, use_lm=False, **kwargs)

        return factory

    return make


@pytest.fixture(scope="module")
def server(bot_factory: Callable[..., Callable[[], Chatbot]], api_settings: Settings) -> Iterator[str]:
    """The main server: three keys (alice and bob are clients, ops is admin), a generous rate limit."""
    config = ApiConfig(api_keys=API_KEYS, rate_limit_per_minute=100_000, max_upload_bytes=1024 * 1024)
    with live_server(create_app(bot_factory("main"), api_settings, config=config, ui=False)) as url:
        yield url


def client(url: str, who: str | None = "alice") -> httpx.Client:
    headers = {"Authorization": f"Bearer {KEYS[who]}"} if who else {}
    return httpx.Client(base_url=url, headers=headers, timeout=60)


@pytest.fixture
def alice(server: str) -> Iterator[httpx.Client]:
    with client(server, "alice") as c:
        yield c


@pytest.fixture
def bob(server: str) -> Iterator[httpx.Client]:
    with client(server, "bob") as c:
        yield c


@pytest.fixture
def ops(server: str) -> Iterator[httpx.Client]:
    with client(server, "ops") as c:
        yield c


def new_session(c: httpx.Client, **body: Any) -> str:
    response = c.post("/v1/sessions", json=body)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def say(c: httpx.Client, session_id: str, text: str) -> dict[str, Any]:
    response = c.post(f"/v1/sessions/{session_id}/messages", json={"text": text})
    assert response.status_code == 200, response.text
    return response.json()


def error_code(response: httpx.Response) -> str:
    return response.json()["error"]["code"]


def sse_events(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    """Parse a text/event-stream body into (event, JSON data) pairs; comments (pings) are skipped."""
    events: list[tuple[str, dict[str, Any]]] = []
    event, data = "message", []
    for line in response.iter_lines():
        if not line:
            if data:
                events.append((event, json.loads("\n".join(data))))
            event, data = "message", []
        elif line.startswith("event:"):
            event = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            data.append(line.removeprefix("data:").removeprefix(" "))
    if data:
        events.append((event, json.loads("\n".join(data))))
    return events


# -- conversations -------------------------------------------------------------------------------------


def test_multi_turn_conversation_recommends_catalog_items(alice: httpx.Client, products_catalog: Catalog) -> None:
    created = alice.post("/v1/sessions", json={})
    assert created.status_code == 201
    session = created.json()
    assert session["catalog"] == "products" and session["owner"] == "alice"
    assert created.headers["Location"] == f"/v1/sessions/{session['id']}"

    first = say(alice, session["id"], "I want a rugged phone with a big battery")
    assert first["act"] == "recommend" and first["session_id"] == session["id"]
    assert 1 <= len(first["recommendations"]) <= 3
    for rec in first["recommendations"]:
        assert rec["id"] in products_catalog
        assert rec["title"] == products_catalog[rec["id"]].title
        assert rec["justification"].strip()
        assert rec["fields"]["title"] == rec["title"]
        assert rec["title"] in first["reply"]
    assert "p-005" in [r["id"] for r in first["recommendations"]]  # the rugged, 22000 mAh phone

    second = say(alice, session["id"], "what about headphones?")
    assert second["act"] == "recommend"
    assert {r["id"] for r in second["recommendations"]}.isdisjoint({r["id"] for r in first["recommendations"]})

    state = alice.get(f"/v1/sessions/{session['id']}").json()
    assert [m["role"] for m in state["messages"]] == ["user", "assistant"] * 2
    assert state["messages"][0]["text"] == "I want a rugged phone with a big battery"
    assert state["messages"][1]["text"] == first["reply"]
    shown = [r["id"] for r in first["recommendations"] + second["recommendations"]]
    assert [r["id"] for r in state["recommendations"]] == shown
    assert state["constraints"]["include"], "the conversation should have established filters"


def test_session_created_with_likes_by_id_and_title(alice: httpx.Client) -> None:
    without_body = alice.post("/v1/sessions")
    assert without_body.status_code == 201 and without_body.json()["liked"] == []
    session = alice.post("/v1/sessions", json={"catalog": "products",
                                               "likes": ["p-008", "bose quietcomfort earbuds"]}).json()
    assert session["liked"] == [{"id": "p-008", "title": "Sony WH-1000XM5"},
                                {"id": "p-009", "title": "Bose QuietComfort Earbuds"}]
    unknown = alice.post("/v1/sessions", json={"likes": ["The Necronomicon Deluxe"]})
    assert unknown.status_code == 422 and error_code(unknown) == "unknown_item"
    extra = alice.post("/v1/sessions", json={"catalogue": "products"})
    assert extra.status_code == 422 and error_code(extra) == "invalid_request"


def test_disliked_item_is_never_recommended_again(alice: httpx.Client) -> None:
    wish = "a flagship phone with a great camera"
    control = say(alice, new_session(alice), wish)
    disliked = control["recommendations"][0]["id"]

    session_id = new_session(alice)
    response = alice.post(f"/v1/sessions/{session_id}/feedback", json={"item_id": disliked, "reaction": "dislike"})
    assert response.status_code == 200
    assert [d["id"] for d in response.json()["disliked"]] == [disliked]
    assert response.json()["disliked"][0]["title"]

    recommended: list[str] = []
    for text in (wish, "more phones please", "any other suggestions?"):
        recommended += [r["id"] for r in say(alice, session_id, text)["recommendations"]]
    assert recommended, "the session should still get recommendations"
    assert disliked not in recommended

    bad_item = alice.post(f"/v1/sessions/{session_id}/feedback", json={"item_id": "p-999", "reaction": "like"})
    assert bad_item.status_code == 422 and error_code(bad_item) == "unknown_item"
    bad_reaction = alice.post(f"/v1/sessions/{session_id}/feedback", json={"item_id": disliked, "reaction": "love"})
    assert bad_reaction.status_code == 422 and error_code(bad_reaction) == "invalid_request"


def test_forget_a_wrong_belief(alice: httpx.Client) -> None:
    session_id = new_session(alice, likes=["p-001", "p-006"])
    forgotten = alice.delete(f"/v1/sessions/{session_id}/beliefs",
                             params={"kind": "liked", "value": "Google Pixel 8a"})  # by title
    assert forgotten.status_code == 200
    assert [i["id"] for i in forgotten.json()["liked"]] == ["p-001"]
    again = alice.delete(f"/v1/sessions/{session_id}/beliefs", params={"kind": "liked", "value": "p-006"})
    assert again.status_code == 404 and error_code(again) == "belief_not_found"
    bad_kind = alice.delete(f"/v1/sessions/{session_id}/beliefs", params={"kind": "loved", "value": "p-001"})
    assert bad_kind.status_code == 422


def test_delete_session_then_404(alice: httpx.Client) -> None:
    session_id = new_session(alice)
    say(alice, session_id, "hello")
    assert alice.delete(f"/v1/sessions/{session_id}").status_code == 204
    for response in (alice.get(f"/v1/sessions/{session_id}"), alice.delete(f"/v1/sessions/{session_id}"),
                     alice.post(f"/v1/sessions/{session_id}/messages", json={"text": "hi"})):
        assert response.status_code == 404 and error_code(response) == "session_not_found"
    assert session_id not in [s["id"] for s in alice.get("/v1/sessions").json()["sessions"]]


# -- auth ----------------------------------------------------------------------------------------------


def test_missing_or_wrong_key_is_401(server: str) -> None:
    with client(server, None) as anonymous:
        for headers in ({}, {"Authorization": "Bearer not-a-key"}, {"Authorization": f"Basic {KEYS['alice']}"}):
            response = anonymous.get("/v1/sessions", headers=headers)
            assert response.status_code == 401
            assert error_code(response) == "unauthorized"
            assert response.headers["WWW-Authenticate"] == "Bearer"


def test_callers_see_only_their_own_sessions(alice: httpx.Client, bob: httpx.Client) -> None:
    session_id = new_session(alice)
    say(alice, session_id, "I need noise cancelling headphones")
    for response in (bob.get(f"/v1/sessions/{session_id}"),
                     bob.post(f"/v1/sessions/{session_id}/messages", json={"text": "show me laptops"}),
                     bob.post(f"/v1/sessions/{session_id}/feedback", json={"item_id": "p-001", "reaction": "like"}),
                     bob.delete(f"/v1/sessions/{session_id}")):
        assert response.status_code == 404 and error_code(response) == "session_not_found"
    assert session_id not in [s["id"] for s in bob.get("/v1/sessions").json()["sessions"]]
    mine = alice.get("/v1/sessions", params={"limit": 100}).json()["sessions"]
    assert next(s for s in mine if s["id"] == session_id)["message_count"] == 2
    assert len(alice.get(f"/v1/sessions/{session_id}").json()["messages"]) == 2  # bob changed nothing


def test_admin_uploads_a_catalog_that_clients_can_use(alice: httpx.Client, ops: httpx.Client) -> None:
    forbidden = alice.post("/v1/catalogs/books", params={"format": "csv"}, content=SMALL_CSV)
    assert forbidden.status_code == 403 and error_code(forbidden) == "forbidden"
    assert error_code(alice.delete("/v1/catalogs/products")) == "forbidden"

    uploaded = ops.post("/v1/catalogs/books", params={"format": "csv"}, content=SMALL_CSV,
                        headers={"Content-Type": "text/csv"})
    assert uploaded.status_code == 201, uploaded.text
    assert uploaded.json()["items"] == 4 and uploaded.json()["embedded"] == 4
    listed = {c["name"]: c for c in alice.get("/v1/catalogs").json()["catalogs"]}
    assert listed["books"]["items"] == 4 and listed["books"]["indexed"]

    session = alice.post("/v1/sessions", json={"catalog": "books"}).json()
    assert session["catalog"] == "books"
    reply = say(alice, session["id"], "a mystery set in a forest")
    assert reply["recommendations"] and {r["id"] for r in reply["recommendations"]} <= {"b-1", "b-2", "b-3", "b-4"}
    assert reply["recommendations"][0]["id"] == "b-1"

    replaced = ops.post("/v1/catalogs/books", params={"format": "csv"}, content=SMALL_CSV)
    assert replaced.status_code == 200 and replaced.json()["unchanged"] == 4

    multipart = ops.post("/v1/catalogs/books2", files={"file": ("books.csv", SMALL_CSV.encode(), "text/csv")})
    assert multipart.status_code == 201 and multipart.json()["name"] == "books2"

    assert ops.delete("/v1/catalogs/books2").status_code == 204
    gone = alice.get("/v1/catalogs/books2/items")
    assert gone.status_code == 404 and error_code(gone) == "catalog_not_found"
    assert "books2" not in {c["name"] for c in alice.get("/v1/catalogs").json()["catalogs"]}
    protected = ops.delete("/v1/catalogs/products")
    assert protected.status_code == 409 and error_code(protected) == "catalog_protected"


def test_bad_catalog_upload_is_422_with_the_loader_message(ops: httpx.Client) -> None:
    no_title = ops.post("/v1/catalogs/broken", params={"format": "csv"}, content="sku,price\na-1,3\n")
    assert no_title.status_code == 422 and error_code(no_title) == "invalid_catalog"
    message = no_title.json()["error"]["message"]
    assert "no title field" in message and "/tmp" not in message and "recchat-upload" not in message

    bad_json = ops.post("/v1/catalogs/broken", params={"format": "json"}, content="[{not json")
    assert bad_json.status_code == 422 and "not valid JSON" in bad_json.json()["error"]["message"]
    no_format = ops.post("/v1/catalogs/broken", content=SMALL_CSV, headers={"Content-Type": "application/x-foo"})
    assert no_format.status_code == 422 and "format" in no_format.json()["error"]["message"]
    bad_name = ops.post("/v1/catalogs/Bad Name!", params={"format": "csv"}, content=SMALL_CSV)
    assert bad_name.status_code == 422 and error_code(bad_name) == "invalid_catalog_name"
    assert "broken" not in {c["name"] for c in ops.get("/v1/catalogs").json()["catalogs"]}


# -- limits and errors -----------------------------------------------------------------------------------


def test_message_limits(alice: httpx.Client) -> None:
    session_id = new_session(alice)
    url = f"/v1/sessions/{session_id}/messages"
    too_long = alice.post(url, json={"text": "phone " * 400})
    assert too_long.status_code == 413 and error_code(too_long) == "message_too_long"
    empty = alice.post(url, json={"text": "   \n "})
    assert empty.status_code == 422 and error_code(empty) == "empty_message"
    malformed = alice.post(url, content=b'{"text": "unterminated', headers={"Content-Type": "application/json"})
    assert malformed.status_code == 400 and error_code(malformed) == "invalid_request"
    not_json = alice.post(url, content=b'{"text": "hi"}', headers={"Content-Type": "text/plain"})
    assert not_json.status_code == 422 and error_code(not_json) == "invalid_request"
    missing = alice.post(url, json={"message": "hi"})
    assert missing.status_code == 422 and error_code(missing) == "invalid_request"
    assert ["body", "text"] in [d["loc"] for d in missing.json()["error"]["details"]]
    assert alice.get(f"/v1/sessions/{session_id}").json()["messages"] == []  # nothing got through


def test_oversized_bodies_are_413(alice: httpx.Client) -> None:
    session_id = new_session(alice)
    url = f"/v1/sessions/{session_id}/messages"
    big = json.dumps({"text": "x" * 100_000}).encode()
    declared = alice.post(url, content=big, headers={"Content-Type": "application/json"})
    assert declared.status_code == 413 and error_code(declared) == "request_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies to the bytes that arrive
        yield b'{"text": "'
        for _ in range(100):
            yield b"y" * 1000
        yield b'"}'

    streamed = alice.post(url, content=chunks(), headers={"Content-Type": "application/json"})
    assert "content-length" not in streamed.request.headers
    assert streamed.status_code == 413 and error_code(streamed) == "request_too_large"


def test_unknown_session_catalog_item_and_route(alice: httpx.Client) -> None:
    for response, code in (
        (alice.get("/v1/sessions/no-such-session"), "session_not_found"),
        (alice.post("/v1/sessions/no-such-session/messages", json={"text": "hi"}), "session_not_found"),
        (alice.post("/v1/sessions", json={"catalog": "no_such_catalog"}), "catalog_not_found"),
        (alice.get("/v1/catalogs/no_such_catalog/items/p-001"), "catalog_not_found"),
        (alice.get("/v1/catalogs/products/items/p-999"), "item_not_found"),
        (alice.get("/v1/no-such-route"), "not_found"),
    ):
        assert response.status_code == 404, response.text
        assert error_code(response) == code


def test_rate_limit_is_per_key_with_retry_after(bot_factory: Callable[..., Callable[[], Chatbot]],
                                                api_settings: Settings) -> None:
    config = ApiConfig(api_keys=API_KEYS, rate_limit_per_minute=3)
    with live_server(create_app(bot_factory("ratelimit"), api_settings, config=config, ui=False)) as url:
        with client(url, "alice") as a, client(url, "bob") as b:
            assert [a.get("/v1/sessions").status_code for _ in range(3)] == [200, 200, 200]
            limited = a.get("/v1/sessions")
            assert limited.status_code == 429 and error_code(limited) == "rate_limited"
            assert 1 <= int(limited.headers["Retry-After"]) <= 20
            assert b.get("/v1/sessions").status_code == 200  # another key has its own bucket
            assert a.get("/healthz").status_code == 200  # probes are not limited


def test_token_bucket_refills_over_time() -> None:
    now = [0.0]
    buckets = TokenBuckets(per_minute=6, clock=lambda: now[0])
    assert [buckets.take("k") for _ in range(6)] == [0.0] * 6
    assert buckets.take("k") == pytest.approx(10.0)  # 6 a minute: one every 10 s
    now[0] = 10.0
    assert buckets.take("k") == 0.0 and buckets.take("other") == 0.0
    assert TokenBuckets(per_minute=0).take("k") == 0.0  # 0 = off


class ExplodingChatbot(Chatbot):
    """A chatbot whose turns fail with an unexpected error, as a bug would."""

    def send(self, session_id: str, text: str, owner: str | None = None,
             on_token: Callable[[str], None] | None = None) -> Reply:
        if on_token is not None:
            on_token("Here ")
        raise RuntimeError(SECRET)


def test_internal_error_is_500_with_error_id_and_no_details(
    bot_factory: Callable[..., Callable[[], Chatbot]], api_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="recchat.api")
    config = ApiConfig(api_keys=API_KEYS)
    with live_server(create_app(bot_factory("exploding", ExplodingChatbot), api_settings, config=config,
                                ui=False)) as url, client(url, "alice") as c:
        session_id = new_session(c)
        response = c.post(f"/v1/sessions/{session_id}/messages", json={"text": "a phone please"})
        assert response.status_code == 500
        error = response.json()["error"]
        assert error["code"] == "internal_error" and re.fullmatch(r"[0-9a-f]{32}", error["error_id"])
        assert "Traceback" not in response.text and "kaboom" not in response.text and "secret" not in response.text
        assert response.headers["X-Request-ID"]

        with c.stream("POST", f"/v1/sessions/{session_id}/messages/stream", json={"text": "a phone"}) as stream:
            assert stream.status_code == 200
            events = sse_events(stream)
        assert [e for e, _ in events] == ["token", "error"]
        assert events[1][1]["error"]["code"] == "internal_error" and events[1][1]["error"]["error_id"]
        assert "kaboom" not in json.dumps(events)

    logged = [r for r in caplog.records if error["error_id"] in r.getMessage()]
    assert logged and logged[0].exc_info is not None and SECRET in str(logged[0].exc_info[1])
    assert f"request_id={response.headers['X-Request-ID']}" in logged[0].getMessage()


# -- streaming and concurrency ---------------------------------------------------------------------------


def test_streamed_reply_tokens_add_up_to_the_reply(alice: httpx.Client, products_catalog: Catalog) -> None:
    session_id = new_session(alice)
    with alice.stream("POST", f"/v1/sessions/{session_id}/messages/stream",
                      json={"text": "wireless noise cancelling headphones"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "reply" and set(kinds[:-1]) == {"token"} and len(kinds) > 3
    reply = events[-1][1]
    streamed = "".join(data["text"] for kind, data in events if kind == "token")
    assert streamed.strip() == reply["reply"].strip()
    assert reply["recommendations"] and all(r["id"] in products_catalog for r in reply["recommendations"])
    assert alice.get(f"/v1/sessions/{session_id}").json()["messages"][1]["text"] == reply["reply"]

    not_found = alice.post("/v1/sessions/nope/messages/stream", json={"text": "hi"})
    assert not_found.status_code == 404 and error_code(not_found) == "session_not_found"
    empty = alice.post(f"/v1/sessions/{session_id}/messages/stream", json={"text": ""})
    assert empty.status_code == 422 and error_code(empty) == "empty_message"


def test_a_turn_finishes_and_is_saved_when_the_stream_client_leaves(alice: httpx.Client) -> None:
    session_id = new_session(alice)
    with alice.stream("POST", f"/v1/sessions/{session_id}/messages/stream",
                      json={"text": "a laptop for students"}) as response:
        first = next(response.iter_lines())
        assert first == "event: token"
    deadline = time.monotonic() + 30
    while len(messages := alice.get(f"/v1/sessions/{session_id}").json()["messages"]) < 2:
        assert time.monotonic() < deadline, "the abandoned turn was not saved"
        time.sleep(0.05)
    assert messages[0]["text"] == "a laptop for students" and messages[1]["items"]
    assert say(alice, session_id, "cheaper ones?")["session_id"] == session_id  # the session is not stuck


def test_concurrent_messages_to_one_session_are_all_kept(server: str) -> None:
    with client(server) as c:
        session_id = new_session(c)
    texts = ["a budget phone", "a rugged watch", "a light laptop", "earbuds for commuting", "a tablet for kids"]
    statuses: list[int] = []

    def send(text: str) -> None:
        with client(server) as c:
            statuses.append(c.post(f"/v1/sessions/{session_id}/messages", json={"text": text}).status_code)

    threads = [threading.Thread(target=send, args=(text,)) for text in texts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert statuses == [200] * 5
    with client(server) as c:
        messages = c.get(f"/v1/sessions/{session_id}").json()["messages"]
    assert len(messages) == 10  # no lost update
    assert [m["role"] for m in messages] == ["user", "assistant"] * 5  # turns did not interleave
    assert sorted(m["text"] for m in messages if m["role"] == "user") == sorted(texts)


class CountingChatbot(Chatbot):
    """A chatbot that records how many turns run at once (each holds its slot a little longer)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0

    def send(self, session_id: str, text: str, owner: str | None = None,
             on_token: Callable[[str], None] | None = None) -> Reply:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            time.sleep(0.3)
            return super().send(session_id, text, owner, on_token)
        finally:
            with self.lock:
                self.running -= 1


def test_turns_on_different_sessions_run_in_parallel_up_to_the_limit(
    bot_factory: Callable[..., Callable[[], Chatbot]], api_settings: Settings
) -> None:
    bots: list[CountingChatbot] = []
    make = bot_factory("counting", CountingChatbot)

    def factory() -> Chatbot:
        bots.append(make())  # type: ignore[arg-type]
        return bots[-1]

    config = ApiConfig(api_keys=API_KEYS, max_concurrency=2)
    with live_server(create_app(factory, api_settings, config=config, ui=False)) as url:
        with client(url) as c:
            sessions = [new_session(c) for _ in range(4)]

        def run_all(session_ids: list[str]) -> list[int]:
            statuses: list[int] = []

            def send(session_id: str) -> None:
                with client(url) as c:
                    statuses.append(c.post(f"/v1/sessions/{session_id}/messages",
                                           json={"text": "a phone with a good camera"}).status_code)

            threads = [threading.Thread(target=send, args=(s,)) for s in session_ids]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=120)
            return statuses

        assert run_all(sessions) == [200] * 4
        assert bots[0].peak == 2  # parallel, but never more than max_concurrency
        bots[0].peak = 0
        assert run_all([sessions[0]] * 3) == [200] * 3
        assert bots[0].peak == 1  # one session: one turn at a time


# -- catalogs, probes, documents, logs ----------------------------------------------------------------------


def test_catalog_reads(alice: httpx.Client) -> None:
    catalogs = {c["name"]: c for c in alice.get("/v1/catalogs").json()["catalogs"]}
    assert catalogs["products"] == {"name": "products", "items": 20, "indexed": True, "bundled": False,
                                    "default": True}
    item = alice.get("/v1/catalogs/products/items/p-003").json()
    assert item["title"] == "Samsung Galaxy S24 Ultra" and item["numbers"]["price"] == 1299.99
    assert "stylus" in item["lists"]["tags"]

    by_title = alice.get("/v1/catalogs/products/items", params={"q": "galaxy", "limit": 2}).json()
    assert [(m["id"], m["match"]) for m in by_title["items"]] == [("p-002", "title"), ("p-003", "title")]
    semantic = alice.get("/v1/catalogs/products/items", params={"q": "something to block out plane noise"}).json()
    top = [m["id"] for m in semantic["items"][:3]]
    assert {m["match"] for m in semantic["items"]} == {"semantic"} and {"p-008", "p-009", "p-010"} & set(top)
    page = alice.get("/v1/catalogs/products/items", params={"limit": 5, "offset": 5}).json()
    assert page["total"] == 20 and [m["id"] for m in page["items"]] == [f"p-{n:03d}" for n in range(6, 11)]


def test_health_and_readiness(server: str) -> None:
    with client(server, None) as anonymous:  # probes need no key
        assert anonymous.get("/healthz").json() == {"status": "ok"}
        ready = anonymous.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
        assert ready.json()["catalog"] == "products"


def test_openapi_documents_the_v1_routes(server: str) -> None:
    document = httpx.get(f"{server}/openapi.json").json()
    paths = document["paths"]
    for path, method in (("/v1/sessions", "post"), ("/v1/sessions", "get"), ("/v1/sessions/{session_id}", "get"),
                         ("/v1/sessions/{session_id}", "delete"), ("/v1/sessions/{session_id}/messages", "post"),
                         ("/v1/sessions/{session_id}/messages/stream", "post"),
                         ("/v1/sessions/{session_id}/feedback", "post"),
                         ("/v1/sessions/{session_id}/beliefs", "delete"),
                         ("/v1/catalogs", "get"), ("/v1/catalogs/{name}", "post"), ("/v1/catalogs/{name}", "delete"),
                         ("/v1/catalogs/{name}/items", "get"), ("/healthz", "get"), ("/readyz", "get")):
        assert method in paths.get(path, {}), f"{method.upper()} {path} is not documented"
    schemas = document["components"]["schemas"]
    for name in ("SessionCreate", "SessionPublic", "MessageCreate", "ReplyPublic", "FeedbackCreate", "ErrorPublic"):
        assert name in schemas
    message = paths["/v1/sessions/{session_id}/messages"]["post"]
    assert message["description"].startswith("Send a user message")
    assert "text/event-stream" in paths["/v1/sessions/{session_id}/messages/stream"]["post"]["responses"]["200"][
        "content"]
    assert "HTTPBearer" in document["components"]["securitySchemes"]


def test_request_id_is_echoed_or_generated(alice: httpx.Client) -> None:
    assert alice.get("/v1/sessions", headers={"X-Request-ID": "trace-123"}).headers["X-Request-ID"] == "trace-123"
    generated = alice.get("/v1/sessions", headers={"X-Request-ID": "bad id; drop table"}).headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)


def test_logs_never_hold_message_text_or_keys(alice: httpx.Client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="recchat.api")
    session_id = new_session(alice)
    # Markers that no request id (hex) can hold: a bare number once matched one by chance.
    say(alice, session_id, "zebra-striped marker phone quokka7731")
    lines = [record.getMessage() for record in caplog.records if record.name == "recchat.api"]
    turn = [line for line in lines if "event=message" in line]
    assert turn and f"session_id={session_id}" in turn[0] and "owner=alice" in turn[0]
    assert any("event=request" in line and "status=200" in line for line in lines)
    assert not [line for line in lines if "zebra" in line or "quokka" in line]
    assert not [line for line in lines for key in KEYS.values() if key in line]


# -- auth off, start-up, configuration ---------------------------------------------------------------------


def test_without_keys_auth_is_off_and_readiness_reports_failure(
    bot_factory: Callable[..., Callable[[], Chatbot]], api_settings: Settings
) -> None:
    settings = api_settings.model_copy(update={"default_catalog": "no_such_catalog"})
    app = create_app(bot_factory("local", settings=settings), settings, config=ApiConfig(), ui=False)
    with live_server(app) as url, httpx.Client(base_url=url) as c:
        ready = c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "failed"
        assert "no_such_catalog" in ready.json()["reason"]
        session = c.post("/v1/sessions", json={"catalog": "products"})
        assert session.status_code == 201 and session.json()["owner"] == "local"
        assert c.post("/v1/catalogs/local_books", params={"format": "csv"}, content=SMALL_CSV).status_code == 201


class SlowWarmUpChatbot(Chatbot):
    """A chatbot whose warm-up waits until the test lets it go on."""

    released = threading.Event()

    def warm_up(self, catalog: str | None = None) -> None:
        if not self.released.wait(timeout=30):
            raise TimeoutError("warm-up was never released")
        super().warm_up(catalog)


def test_not_ready_while_warming_up(bot_factory: Callable[..., Callable[[], Chatbot]], api_settings: Settings) -> None:
    config = ApiConfig(api_keys=API_KEYS)
    app = create_app(bot_factory("slow", SlowWarmUpChatbot), api_settings, config=config, ui=False)
    with live_server(app, wait_ready=False) as url, client(url, "alice") as c:
        warming = c.get("/readyz")
        assert warming.status_code == 503 and warming.json()["status"] == "warming_up"
        assert c.get("/healthz").status_code == 200
        busy = c.get("/v1/sessions")
        assert busy.status_code == 503 and error_code(busy) == "not_ready" and busy.headers["Retry-After"]
        SlowWarmUpChatbot.released.set()
        deadline = time.monotonic() + 30
        while c.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert c.get("/readyz").json()["status"] == "ready"
        assert c.get("/v1/sessions").status_code == 200


def test_check_bind_refuses_open_interfaces_without_keys() -> None:
    no_keys, keys = ApiConfig(), ApiConfig(api_keys="k:client")
    for host in ("127.0.0.1", "localhost", "::1", "[::1]", "127.8.9.10"):
        check_bind(host, no_keys)
    for host in ("0.0.0.0", "::", "192.168.1.20", "example.org"):
        with pytest.raises(InsecureBindError, match="without API keys"):
            check_bind(host, no_keys)
        check_bind(host, keys)


def test_api_keys_parsing_and_settings() -> None:
    config = ApiConfig(api_keys=" s3cret-a:client , s3cret-b:admin:ops ")
    assert config.caller_for("s3cret-a").role == "client"  # type: ignore[union-attr]
    assert config.caller_for("s3cret-a").identity.startswith("key-")  # type: ignore[union-attr]
    assert config.caller_for("s3cret-b").identity == "ops"  # type: ignore[union-attr]
    assert config.caller_for("s3cret-c") is None and "s3cret" not in repr(config)
    for bad in ("s3cret-a:root", "s3cret-a", "a:client,a:admin"):
        with pytest.raises(ValueError) as info:
            ApiConfig(api_keys=bad)
        assert "s3cret" not in str(info.value)
    assert set(parse_api_keys("")) == set()

    class ApiSettings(Settings):  # what Settings looks like once it has the API options
        api_keys: str = "k1:admin"
        rate_limit_per_minute: int = 5

    from_settings = ApiConfig.from_settings(ApiSettings(data_dir=Path("unused")))
    assert from_settings.rate_limit_per_minute == 5 and from_settings.caller_for("k1").role == "admin"  # type: ignore[union-attr]
    assert ApiConfig.from_settings(Settings(data_dir=Path("unused"))) == ApiConfig()


# -- the real language model ---------------------------------------------------------------------------


@pytest.mark.slow
def test_one_message_through_the_real_language_model(api_settings: Settings, api_library: Library, api_dir: Path,
                                                     products_catalog: Catalog, converted_lm: Path) -> None:
    settings = api_settings.model_copy(update={"rank_candidates": 5, "lm_model": str(converted_lm)})

    def factory() -> Chatbot:
        return Chatbot(settings, library=api_library, store=SQLiteSessionStore(api_dir / "lm.sqlite3"))

    with live_server(create_app(factory, settings, config=ApiConfig(api_keys=API_KEYS), ui=False)) as url, \
            client(url, "alice") as c:
        reply = say(c, new_session(c), "I need a waterproof phone with a huge battery for construction work")
    assert reply["act"] == "recommend" and reply["recommendations"]
    for rec in reply["recommendations"]:
        assert rec["id"] in products_catalog and rec["justification"].strip()


# -- the serve command ---------------------------------------------------------------------------------------


def serve_app() -> typer.Typer:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    serve_cli.register(app)
    return app


def test_serve_refuses_to_listen_on_all_interfaces_without_keys() -> None:
    result = CliRunner().invoke(serve_app(), ["--host", "0.0.0.0", "--no-lm"])
    assert result.exit_code == 2
    assert "refusing to listen on '0.0.0.0' without API keys" in result.output


@pytest.mark.slow
def test_serve_command_serves_the_api(products: Catalog, free_tcp_port: int, tmp_path: Path) -> None:
    """``serve`` in its own process on the test's data directory (products indexed there), then Ctrl-C."""
    script = "import typer; from chatbot import serve_cli; app = typer.Typer(); serve_cli.register(app); app()"
    output = tmp_path / "serve.log"
    with output.open("w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-c", script, "--no-lm", "--catalog", "products", "--port", str(free_tcp_port)],
            stdout=log_file, stderr=subprocess.STDOUT, env=os.environ.copy(),
        )
    url = f"http://127.0.0.1:{free_tcp_port}"
    try:
        wait_until_ready(url, process, output)
        with httpx.Client(base_url=url, timeout=60) as c:
            session_id = new_session(c)
            assert c.get(f"/v1/sessions/{session_id}").json()["owner"] == "local"
            reply = say(c, session_id, "budget earbuds for the gym")
            assert reply["recommendations"] and all(r["id"] in products for r in reply["recommendations"])
    finally:
        process.send_signal(signal.SIGINT)
        exit_code = process.wait(timeout=30)
    log = output.read_text()
    assert exit_code == 0, log
    assert "no API keys configured" in log and "Warming up" in log and "event=warm_up_done" in log
    assert "event=message request_id=" in log and "budget earbuds" not in log
