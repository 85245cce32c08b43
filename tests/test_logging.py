"""The server's logs: structured, with request and session ids, and never a message text (at INFO and above) or
an API key (at any level), also on the error paths (validation errors, 413s, 401s, internal errors).

The real app (`create_app` over a real `Chatbot` without the LM, on ``movies_small``) serves real HTTP on
127.0.0.1; every record is captured at DEBUG and checked as logged: its message, and its rendering by the
formatters ``recchat serve`` installs (`TextLogFormatter`, `JsonLogFormatter`). ``recchat serve --log-format
json`` runs once as a subprocess, and its stderr is parsed line by line.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from chatbot.api import ApiConfig, JsonLogFormatter, TextLogFormatter, create_app
from chatbot.service import Chatbot
from retrieval.catalog import Catalog
from retrieval.index import Library
from retrieval.settings import Settings
from tests.conftest import live_server, wait_until_ready

TEXT_MARKER = "quokka7731marker"  # in every message text the tests send
KEY_MARKER = "keymarker9f3e"  # in every API key, valid or not
CLIENT_KEY = f"client-{KEY_MARKER}-a1"
ADMIN_KEY = f"admin-{KEY_MARKER}-b2"
WRONG_KEY = f"wrong-{KEY_MARKER}-c3"
# Loggers of the test's own HTTP client: they log what the *client* does, not the server.
CLIENT_LOGGERS = ("httpx", "httpcore")


def renderings(record: logging.LogRecord, *, debug: bool) -> list[str]:
    """Everything a handler could write for ``record``: its message and both recchat formats."""
    return [record.getMessage(), TextLogFormatter(debug=debug).format(record),
            JsonLogFormatter(debug=debug).format(record)]


def server_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if not r.name.startswith(CLIENT_LOGGERS)]


def assert_nothing_leaked(records: list[logging.LogRecord]) -> None:
    """No message text at INFO and above; no API key (nor an Authorization header) at any level."""
    for record in records:
        if record.levelno >= logging.INFO:
            for text in renderings(record, debug=False):
                assert TEXT_MARKER not in text, text
        for text in renderings(record, debug=True):
            assert KEY_MARKER not in text, text
            assert "Bearer" not in text and "authorization" not in text.lower(), text


@pytest.fixture
def app_settings(settings: Settings, movies_small: Catalog) -> Settings:
    return settings.model_copy(update={"default_catalog": "movies_small"})


@pytest.fixture
def server(app_settings: Settings, library: Library) -> Iterator[str]:
    config = ApiConfig(api_keys=f"{CLIENT_KEY}:client:alice,{ADMIN_KEY}:admin:ops")
    app = create_app(lambda: Chatbot(app_settings, library, use_lm=False), app_settings, config=config, ui=False)
    with live_server(app) as url:
        yield url


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    """The structured fields of recchat's ``name`` events."""
    return [dict(r.recchat) for r in caplog.records if getattr(r, "recchat", {}).get("event") == name]


def test_logs_carry_ids_but_no_text_and_no_keys(server: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with httpx.Client(base_url=server, headers={"Authorization": f"Bearer {CLIENT_KEY}"}, timeout=60) as c:
        created = c.post("/v1/sessions", json={"likes": ["Heat (1995)"]}, headers={"X-Request-ID": "req-create"})
        assert created.status_code == 201
        session_id = created.json()["id"]
        turn = f"/v1/sessions/{session_id}/messages"
        reply = c.post(turn, json={"text": f"a crime thriller like {TEXT_MARKER}"}, headers={"X-Request-ID": "req-1"})
        assert reply.status_code == 200
        with c.stream("POST", f"{turn}/stream", json={"text": f"more please {TEXT_MARKER}"}) as stream:
            assert stream.status_code == 200 and stream.read()
        item_id = reply.json()["recommendations"][0]["id"]
        assert c.post(f"/v1/sessions/{session_id}/feedback",
                      json={"item_id": item_id, "reaction": "like"}).status_code == 200
        # Error paths that hold the text: validation errors (extra field, wrong type), bad JSON, too long.
        for body in ({"text": "hi", TEXT_MARKER: TEXT_MARKER}, {"text": [TEXT_MARKER]}, {"message": TEXT_MARKER}):
            assert c.post(turn, json=body).status_code == 422
        bad_json = c.post(turn, content=f'{{"text": "{TEXT_MARKER}'.encode(),
                          headers={"Content-Type": "application/json"})
        assert bad_json.status_code == 400
        assert c.post(turn, json={"text": TEXT_MARKER * 500}).status_code == 413
        forget = c.delete(f"/v1/sessions/{session_id}/beliefs", params={"kind": "liked", "value": TEXT_MARKER})
        assert forget.status_code == 404
        assert c.post("/v1/sessions", json={"likes": [TEXT_MARKER]}).status_code == 422
        # Keys: a wrong one, one in the wrong scheme, and an admin route with a client key.
        assert c.get("/v1/sessions", headers={"Authorization": f"Bearer {WRONG_KEY}"}).status_code == 401
        assert c.get("/v1/sessions", headers={"Authorization": f"Basic {WRONG_KEY}"}).status_code == 401
        assert c.delete("/v1/catalogs/movies_small").status_code == 403

    records = server_records(caplog)
    assert_nothing_leaked(records)

    # Every request is one INFO "request" event with its request id; session routes name the session.
    requests = events(caplog, "request")
    assert len(requests) >= 14 and all(r["request_id"] != "-" for r in requests)
    assert {"method": "POST", "path": "/v1/sessions", "status": 201, "session_id": session_id,
            "request_id": "req-create"}.items() <= next(r for r in requests if r["request_id"] == "req-create").items()
    on_session = [r for r in requests if r["path"].startswith(f"/v1/sessions/{session_id}")]
    assert len(on_session) >= 9 and all(r["session_id"] == session_id for r in on_session)
    assert {r["status"] for r in on_session} >= {200, 400, 404, 413, 422}

    created_event = events(caplog, "session_created")[0]
    assert created_event["session_id"] == session_id and created_event["request_id"] == "req-create"
    turns = events(caplog, "message")
    assert len(turns) == 2 and all(t["session_id"] == session_id and t["chars"] > 0 for t in turns)
    assert turns[0]["request_id"] == "req-1" and {t["stream"] for t in turns} == {False, True}
    assert events(caplog, "feedback")[0]["session_id"] == session_id
    assert {r.levelno for r in records if getattr(r, "recchat", None)} <= {logging.DEBUG, logging.INFO,
                                                                             logging.WARNING, logging.ERROR}
    # The formats are one line (text) and one JSON object with the same fields.
    record = next(r for r in records if getattr(r, "recchat", {}).get("event") == "message")
    line = TextLogFormatter().format(record)
    assert "\n" not in line and f"session_id={session_id}" in line and "request_id=req-1" in line
    parsed = json.loads(JsonLogFormatter().format(record))
    assert parsed["event"] == "message" and parsed["session_id"] == session_id and parsed["level"] == "INFO"
    assert parsed["logger"] == "recchat.api" and parsed["time"]


def test_internal_error_logs_the_error_id_but_not_the_message(
    app_settings: Settings, library: Library, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception whose message quotes the user's text: the error id and the traceback's frames and types
    are logged at ERROR, the message only when the log level is DEBUG."""

    def fail(self: Chatbot, session_id: str, text: str, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401
        raise RuntimeError(f"could not understand {text!r}")  # as a bug might: the text in the message

    monkeypatch.setattr(Chatbot, "send", fail)
    caplog.set_level(logging.DEBUG)
    config = ApiConfig(api_keys=f"{CLIENT_KEY}:client:alice")
    app = create_app(lambda: Chatbot(app_settings, library, use_lm=False), app_settings, config=config, ui=False)
    with live_server(app) as url, httpx.Client(base_url=url, timeout=60,
                                               headers={"Authorization": f"Bearer {CLIENT_KEY}"}) as c:
        session_id = c.post("/v1/sessions", json={}).json()["id"]
        response = c.post(f"/v1/sessions/{session_id}/messages", json={"text": f"hello {TEXT_MARKER}"})
        assert response.status_code == 500 and TEXT_MARKER not in response.text
        error_id = response.json()["error"]["error_id"]
        with c.stream("POST", f"/v1/sessions/{session_id}/messages/stream",
                      json={"text": f"again {TEXT_MARKER}"}) as stream:
            assert TEXT_MARKER not in stream.read().decode()

    records = server_records(caplog)
    assert_nothing_leaked(records)
    errors = [r for r in records if r.levelno == logging.ERROR]
    assert len(errors) == 2  # the plain turn and the streamed one
    logged = next(r for r in errors if error_id in r.getMessage())
    assert logged.recchat["session_id"] == session_id and logged.recchat["exception"] == "RuntimeError"
    for text in renderings(logged, debug=False)[1:]:
        assert error_id in text and "RuntimeError" in text and "Traceback" in text and "in fail" in text
        assert "message withheld" in text
    assert json.loads(JsonLogFormatter().format(logged))["error_id"] == error_id
    # At DEBUG, message texts may be logged: the operator who turns it on sees the exception's message.
    assert TEXT_MARKER in TextLogFormatter(debug=True).format(logged)


def test_exception_rendering_is_not_taken_from_another_handlers_cache() -> None:
    """``record.exc_text`` (filled by any handler with a plain Formatter) is not reused: it holds the message."""
    try:
        raise ValueError(TEXT_MARKER)
    except ValueError:
        record = logging.getLogger("recchat.test").makeRecord(
            "recchat.test", logging.ERROR, __file__, 1, "boom", (), sys.exc_info())
    assert TEXT_MARKER in logging.Formatter().format(record) and record.exc_text
    assert TEXT_MARKER not in TextLogFormatter().format(record)
    assert TEXT_MARKER not in json.loads(JsonLogFormatter().format(record))["exception"]


@pytest.mark.slow
def test_serve_writes_one_json_object_per_line(movies_small: Catalog, free_tcp_port: int, tmp_path: Path) -> None:
    """``recchat serve --log-format json`` on the test's data directory (``movies_small`` indexed there)."""
    env = {**os.environ, "RECCHAT_DEFAULT_CATALOG": "movies_small", "RECCHAT_API_KEYS": f"{CLIENT_KEY}:client:alice",
           "OMP_NUM_THREADS": "1"}
    stderr_path = tmp_path / "serve.stderr"
    with stderr_path.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "chatbot", "serve", "--no-lm", "--log-format", "json", "--port",
             str(free_tcp_port)], stdout=subprocess.DEVNULL, stderr=stderr, env=env)
    url = f"http://127.0.0.1:{free_tcp_port}"
    try:
        wait_until_ready(url, process, stderr_path)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {CLIENT_KEY}"}, timeout=60) as c:
            session_id = c.post("/v1/sessions", json={}).json()["id"]
            turn = c.post(f"/v1/sessions/{session_id}/messages", json={"text": f"a heist movie {TEXT_MARKER}"},
                          headers={"X-Request-ID": "json-turn"})
            assert turn.status_code == 200
            assert c.post(f"/v1/sessions/{session_id}/messages", json={"txt": TEXT_MARKER}).status_code == 422
    finally:
        process.send_signal(signal.SIGINT)
        exit_code = process.wait(timeout=30)
    text = stderr_path.read_text()
    assert exit_code == 0, text
    assert TEXT_MARKER not in text and KEY_MARKER not in text
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]  # every line is one JSON object
    assert all({"time", "level", "logger"} <= line.keys() for line in lines)
    by_event = {line.get("event"): line for line in lines}
    assert {"notice", "warm_up_started", "warm_up_done", "session_created", "message", "request"} <= by_event.keys()
    message = by_event["message"]
    assert message["session_id"] == session_id and message["request_id"] == "json-turn"
    assert message["level"] == "INFO" and message["logger"] == "recchat.api" and message["chars"] > 0
    rejected = [line for line in lines if line.get("event") == "request" and line.get("status") == 422]
    assert rejected and rejected[0]["session_id"] == session_id and re.fullmatch(r"[0-9a-f]{32}",
                                                                                 rejected[0]["request_id"])
