"""The HTTP API of recchat: a versioned JSON API (``/v1``) of thin routes over the `Chatbot` service.

    app = create_app()                       # nothing heavy here: the Chatbot is built at start-up
    check_bind("127.0.0.1", ApiConfig.from_settings(get_settings()))
    uvicorn.run(app, host="127.0.0.1", port=7860)

* Sessions, messages (plain JSON or server-sent events), feedback and belief removal; catalog reads for
  clients, catalog upload/delete for admins; ``/healthz`` and ``/readyz`` for probes.
* Auth: ``Authorization: Bearer <key>`` with keys from ``ApiConfig.api_keys`` (``"key:role[:name],..."``).
  A key's identity owns the sessions it creates; other callers get 404 for them. Without keys, auth is off,
  every caller is ``local`` and only loopback clients are served (see `check_bind`).
* Every error is ``{"error": {"code", "message", "error_id"?}}`` with a stable ``code``; an internal error
  is logged with its traceback under a fresh ``error_id`` and nothing else about it leaves the process.
* The language-model work runs in worker threads, at most ``max_concurrency`` turns at once; turns on one
  session are serialized (waiting on the event loop, not in a thread).

Tests build the app with a factory (``create_app(lambda: Chatbot(settings, library, use_lm=False))``);
routes receive the service through ``Annotated[Chatbot, Depends(get_chatbot)]``.
"""

import asyncio
import contextvars
import functools
import gzip
import hashlib
import ipaddress
import json
import logging
import math
import re
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Body, Depends, FastAPI, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from starlette.datastructures import MutableHeaders, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatbot.dialogue import MessageError, Reply
from chatbot.service import Chatbot
from chatbot.sessions import SessionConflict, SessionNotFound, export_session
from chatbot.state import SessionState
from retrieval.catalog import Catalog, CatalogError, load_catalog, safe_name
from retrieval.errors import DependencyUnavailable
from retrieval.index import Library
from retrieval.settings import Settings, get_settings

__all__ = [
    "ApiConfig",
    "Caller",
    "InsecureBindError",
    "TokenBuckets",
    "JsonLogFormatter",
    "TextLogFormatter",
    "check_bind",
    "configure_logging",
    "create_app",
    "get_chatbot",
    "parse_api_keys",
]

log = logging.getLogger("recchat.api")

Role = Literal["client", "admin"]
Reaction = Literal["like", "dislike", "seen", "chosen"]
CatalogFormat = Literal["jsonl", "json", "csv", "tsv"]

API_VERSION = "v1"
# Largest page offset: the session stores hand it to SQLite (64-bit integers) or Redis; beyond it, 422.
MAX_OFFSET = 1_000_000_000
LOCAL_IDENTITY = "local"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_IDENTITY_RE = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
_PROBE_PATHS = frozenset({"/healthz", "/readyz"})
_SESSION_PATH_RE = re.compile(rf"^/{API_VERSION}/sessions/([^/]+)")
_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("recchat_request_id", default="-")
_session_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("recchat_session_id", default=None)


# -- configuration ---------------------------------------------------------------------------------


class Caller(BaseModel):
    """Who is calling: the identity that owns their sessions, and what they may do."""

    model_config = ConfigDict(frozen=True)

    identity: str
    role: Role


def key_digest(key: str) -> str:
    """SHA-256 of an API key: keys are held, compared and logged only as digests (never in the clear)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_api_keys(text: str) -> dict[str, Caller]:
    """``"key1:client,key2:admin:ops"`` -> ``{sha256(key): Caller}``; the identity defaults to ``key-<digest>``.

    Errors name the entry's position, never the key.

    >>> sorted(c.role for c in parse_api_keys("k1:client, k2:admin").values())
    ['admin', 'client']
    """
    out: dict[str, Caller] = {}
    for n, entry in enumerate(text.split(","), start=1):
        entry = entry.strip()
        if not entry:
            continue
        parts = [part.strip() for part in entry.split(":")]
        if len(parts) not in (2, 3) or not parts[0]:
            raise ValueError(f"api_keys entry {n}: expected KEY:ROLE or KEY:ROLE:NAME")
        key, role = parts[0], parts[1]
        if role not in ("client", "admin"):
            raise ValueError(f"api_keys entry {n}: the role must be 'client' or 'admin', got {role!r}")
        digest = key_digest(key)
        if digest in out:
            raise ValueError(f"api_keys entry {n}: the same key is listed twice")
        name = parts[2] if len(parts) == 3 else ""
        if name and not _IDENTITY_RE.match(name):
            raise ValueError(f"api_keys entry {n}: the name must be 1-64 of A-Z a-z 0-9 . _ @ -")
        if name == LOCAL_IDENTITY:
            raise ValueError(f"api_keys entry {n}: the name {LOCAL_IDENTITY!r} is reserved")
        out[digest] = Caller(identity=name or f"key-{digest[:12]}", role=role)  # type: ignore[arg-type]
    return out


class ApiConfig(BaseModel):
    """Limits and API keys of the HTTP API; unknown options are rejected.

    Built from `Settings` by `from_settings`, which takes every field that Settings has and keeps the default
    for the others, so adding e.g. ``api_keys: SecretStr`` to Settings is all it takes to configure it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    api_keys: dict[str, Caller] = Field(
        default_factory=dict, repr=False,
        description='"key:role[:name],..." with role client or admin; empty = auth off, loopback only.',
    )
    max_message_chars: int = Field(default=2000, ge=1, description="Longest user message (413 above).")
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, description="Largest request body (413 above).")
    max_upload_bytes: int = Field(default=50 * 1024 * 1024, ge=1024, description="Largest catalog upload.")
    rate_limit_per_minute: int = Field(default=60, ge=0, description="Requests per key per minute (0 = off).")
    max_concurrency: int = Field(default=4, ge=1, le=256, description="Turns processed at once.")

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_keys(cls, value: Any) -> Any:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, str):
            return parse_api_keys(value)
        if isinstance(value, Mapping) and all(isinstance(v, str) for v in value.values()):
            return parse_api_keys(",".join(f"{key}:{role}" for key, role in value.items()))
        return value

    @classmethod
    def from_settings(cls, settings: Settings) -> "ApiConfig":
        """The options that `settings` defines, defaults for the rest."""
        known = type(settings).model_fields
        return cls(**{name: getattr(settings, name) for name in cls.model_fields if name in known})

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys)

    def caller_for(self, key: str) -> Caller | None:
        """The caller an API key stands for, or None."""
        return self.api_keys.get(key_digest(key))


class InsecureBindError(ValueError):
    """Serving without API keys on an address other hosts can reach."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` is ``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, config: ApiConfig) -> None:
    """Raise `InsecureBindError` when no API key is configured and ``host`` is not a loopback address."""
    if not config.auth_enabled and not is_loopback(host):
        raise InsecureBindError(
            f"refusing to listen on {host!r} without API keys: anyone who can reach it could use the service. "
            'Configure keys (RECCHAT_API_KEYS="<key>:client,<key>:admin") or bind 127.0.0.1.'
        )


# -- schemas ---------------------------------------------------------------------------------------


class ErrorBody(BaseModel):
    """What went wrong: a stable machine-readable code and a message for people."""

    code: str = Field(description="Stable error code, e.g. session_not_found, rate_limited, internal_error.")
    message: str
    error_id: str | None = Field(default=None, description="Set on internal errors: quote it to the operator.")
    details: list[dict[str, Any]] | None = Field(default=None, description="Per-field problems of a request.")


class ErrorPublic(BaseModel):
    """The body of every error response."""

    error: ErrorBody


class SessionCreate(BaseModel):
    """A new conversation: on which catalog, and items the user already likes."""

    model_config = ConfigDict(extra="forbid")

    catalog: str | None = Field(default=None, max_length=63, description="Catalog name; default from settings.")
    likes: list[str] = Field(default_factory=list, max_length=50, description="Liked item ids or titles.")


class ItemRef(BaseModel):
    """An item named by id, with its title (None when the catalog no longer has it)."""

    id: str
    title: str | None = None


class MessagePublic(BaseModel):
    """One message of the conversation."""

    role: Literal["user", "assistant"]
    text: str
    items: list[str] = Field(default_factory=list, description="Item ids mentioned or recommended.")
    at: float


class RecommendationPublic(BaseModel):
    """An item recommended in the session, and the user's reaction to it."""

    id: str
    title: str
    score: float
    justification: str
    turn: int
    reaction: Literal["like", "dislike", "seen", "chosen", "none"]


class ConstraintsPublic(BaseModel):
    """Hard filters the conversation established."""

    include: dict[str, list[str]] = Field(default_factory=dict)
    exclude: dict[str, list[str]] = Field(default_factory=dict)
    ranges: dict[str, tuple[float | None, float | None]] = Field(default_factory=dict)


class SessionPublic(BaseModel):
    """A conversation with everything the assistant believes about the user."""

    id: str
    owner: str
    catalog: str
    created: float
    updated: float
    liked: list[ItemRef]
    disliked: list[ItemRef]
    seen: list[ItemRef]
    wishes: list[str]
    constraints: ConstraintsPublic
    recommendations: list[RecommendationPublic]
    messages: list[MessagePublic]


class SessionSummary(BaseModel):
    """A conversation in a listing."""

    id: str
    catalog: str
    created: float
    updated: float
    message_count: int


class SessionList(BaseModel):
    """A page of the caller's conversations, most recently updated first."""

    sessions: list[SessionSummary]
    limit: int
    offset: int


class MessageCreate(BaseModel):
    """A user message."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="What the user says (not empty; at most max_message_chars characters).")


class ReplyItemPublic(BaseModel):
    """One recommendation of a reply: the item, its score, why it fits, and fields to display."""

    id: str
    title: str
    score: float
    justification: str
    fields: dict[str, Any]


class ReplyPublic(BaseModel):
    """The assistant's answer to one message."""

    session_id: str
    reply: str = Field(description="The full reply text.")
    act: str = Field(description="recommend, question, clarify, feedback, chitchat, repeat or reset.")
    recommendations: list[ReplyItemPublic]


class TokenPublic(BaseModel):
    """A piece of the reply text, as it is written (``event: token`` of the stream)."""

    text: str


class FeedbackCreate(BaseModel):
    """The user's reaction to an item of the session's catalog."""

    model_config = ConfigDict(extra="forbid")

    item_id: str = Field(min_length=1, max_length=500)
    reaction: Reaction


class CatalogPublic(BaseModel):
    """A catalog sessions can use."""

    name: str
    items: int | None = Field(description="Number of items (None when unknown).")
    indexed: bool = Field(description="False for a bundled catalog that is indexed on first use.")
    bundled: bool
    default: bool


class CatalogList(BaseModel):
    """All catalogs."""

    catalogs: list[CatalogPublic]


class ItemPublic(BaseModel):
    """A catalog item as stored: free-text, list and numeric fields."""

    id: str
    title: str
    text: dict[str, str]
    lists: dict[str, list[str]]
    numbers: dict[str, float]


class ItemMatch(BaseModel):
    """An item found by a catalog search."""

    id: str
    title: str
    match: Literal["title", "semantic", "browse"]
    score: float | None = None
    fields: dict[str, Any]


class ItemSearchResults(BaseModel):
    """Items whose title contains the query, then semantic matches; or a page of the catalog without a query."""

    catalog: str
    q: str | None
    total: int | None = Field(description="Catalog size when browsing; None for a search.")
    items: list[ItemMatch]


class CatalogIndexed(BaseModel):
    """What uploading a catalog did."""

    name: str
    items: int
    embedded: int
    unchanged: int
    removed: int
    seconds: float
    problems: list[str] = Field(description="Rows skipped or fields ignored (first 50).")
    problem_count: int


class HealthPublic(BaseModel):
    """The process is up."""

    status: Literal["ok"] = "ok"


ReadinessState = Literal["starting", "warming_up", "ready", "degraded", "failed"]
DEPENDENCY_CHECK_SECONDS = 3.0


class ReadinessPublic(BaseModel):
    """Whether the models are loaded and the default catalog is indexed."""

    status: ReadinessState
    catalog: str | None
    reason: str | None = None
    dependencies: dict[str, str] = Field(default_factory=dict,
                                         description='Each checked dependency: "ok" or why it is down.')


# -- errors ----------------------------------------------------------------------------------------


class ApiError(Exception):
    """An error with an HTTP status and a stable code, rendered as `ErrorPublic`."""

    def __init__(self, status_code: int, code: str, message: str, *, headers: dict[str, str] | None = None,
                 details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.headers = headers
        self.details = details

    def body(self) -> ErrorPublic:
        return ErrorPublic(error=ErrorBody(code=self.code, message=self.message, details=self.details))


def error_response(status_code: int, body: ErrorPublic, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """A JSON error response."""
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status_code, headers=headers)


def api_error_for(exc: BaseException) -> ApiError | None:
    """The API error a service exception stands for, or None when it is unexpected (a 500)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, SessionNotFound):
        return ApiError(404, "session_not_found", "no such session")
    if isinstance(exc, CatalogError):
        return ApiError(404, "catalog_not_found", str(exc))
    if isinstance(exc, SessionConflict):
        return ApiError(409, "session_conflict", "the session kept changing; try again")
    if isinstance(exc, MessageError):
        return ApiError(422, "invalid_message", str(exc))
    if isinstance(exc, DependencyUnavailable):
        log_event(logging.WARNING, "dependency_unavailable", dependency=exc.dependency,
                  exception=type(exc.__cause__ or exc).__name__)
        return ApiError(503, exc.code, f"{exc.dependency.replace('_', ' ')} unavailable; try again later",
                        headers={"Retry-After": "5"})
    return None


def internal_error(exc: BaseException, where: str) -> ErrorPublic:
    """Log ``exc`` with its traceback under a new error id; the body tells the client only that id.

    The record carries the exception itself (``exc_info``, for in-process handlers such as an error tracker),
    but its *message* may quote user input (a message text, a catalog value), so recchat's formatters
    (`TextLogFormatter`, `JsonLogFormatter`) write the traceback's frames and exception types and withhold the
    messages unless the log level is DEBUG.
    """
    error_id = uuid.uuid4().hex
    fields: dict[str, object] = {"error_id": error_id, "where": where, "exception": type(exc).__name__}
    log.error("%s", _kv_line("internal_error", **fields), exc_info=exc,
              extra={"recchat": {"event": "internal_error", **_event_fields(**fields)}})
    return ErrorPublic(error=ErrorBody(code="internal_error", message=f"internal error (error_id {error_id})",
                                       error_id=error_id))


_HTTP_CODES = {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 413: "request_too_large", 415: "unsupported_media_type"}


async def _handle_api_error(request: Request, exc: Exception) -> JSONResponse:
    error = api_error_for(exc)
    assert error is not None  # registered only for the types api_error_for knows
    request.state.error_code = error.code
    return error_response(error.status_code, error.body(), error.headers)


async def _handle_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    request.state.error_code = "invalid_request"
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        body = ErrorPublic(error=ErrorBody(code="invalid_request", message="the request body is not valid JSON"))
        return error_response(400, body)
    # Never echo the input: it may hold message text.
    details = [{"loc": [str(part) for part in e.get("loc", ())], "msg": str(e.get("msg", "")),
                "type": str(e.get("type", ""))} for e in errors]
    message = "; ".join(f"{'.'.join(d['loc'])}: {d['msg']}" for d in details)[:500] or "invalid request"
    return error_response(422, ErrorPublic(error=ErrorBody(code="invalid_request", message=message, details=details)))


async def _handle_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    request.state.error_code = code
    message = "the request body is too large" if exc.status_code == 413 else str(exc.detail)
    return error_response(exc.status_code, ErrorPublic(error=ErrorBody(code=code, message=message)), exc.headers)


# -- logging ---------------------------------------------------------------------------------------


def _kv_value(value: object) -> str:
    text = f"{value:.1f}" if isinstance(value, float) else str(value)
    if not text or any(ch.isspace() or ch in '"=' for ch in text):
        return json.dumps(text, ensure_ascii=False)
    return text


def _event_fields(**fields: object) -> dict[str, object]:
    """The fields of an event line: the request id, the session id of a session route, then ``fields``."""
    out: dict[str, object] = {"request_id": _request_id.get()}
    session_id = _session_id.get()
    if session_id is not None and fields.get("session_id") is None:
        out["session_id"] = session_id
    out.update((key, value) for key, value in fields.items() if value is not None)
    return out


def _kv_line(event: str, **fields: object) -> str:
    pairs = [f"{key}={_kv_value(value)}" for key, value in _event_fields(**fields).items()]
    return " ".join([f"event={event}", *pairs])


def log_event(level: int, event: str, **fields: object) -> None:
    """Log one event: a ``key=value`` line with the request id (and the session id on session routes); the
    fields also ride on the record (``record.recchat``) for `JsonLogFormatter`.

    Never pass message text (the user's, the reply's, a justification) or API keys: only ids, counts and codes.
    """
    if log.isEnabledFor(level):
        structured = {"event": event, **_event_fields(**fields)}
        log.log(level, "%s", _kv_line(event, **fields), extra={"recchat": structured})


WITHHELD = "[message withheld; shown at log level DEBUG]"


def format_exception(exc: BaseException, *, with_messages: bool) -> str:
    """A traceback of ``exc`` and its causes; ``with_messages=False`` keeps frames and exception types but
    withholds the exceptions' messages, which may quote user input."""
    if with_messages:
        return "".join(traceback.format_exception(exc)).rstrip("\n")
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    parts: list[str] = []
    for n, link in enumerate(reversed(chain)):
        if n:
            parts.append("\nwhich led to:\n\n")
        parts.append("Traceback (most recent call last):\n")
        parts.extend(traceback.format_tb(link.__traceback__))
        parts.append(f"{type(link).__module__}.{type(link).__qualname__}: {WITHHELD}\n")
    return "".join(parts).rstrip("\n")


class _RecchatFormatter(logging.Formatter):
    """Shared by the text and JSON formats: exceptions are rendered here (never from ``record.exc_text``, which
    another handler may have filled with the full messages), with messages only when ``debug`` is set."""

    def __init__(self, *, debug: bool = False) -> None:
        super().__init__(datefmt="%Y-%m-%dT%H:%M:%S")
        self.debug = debug

    def exception_text(self, record: logging.LogRecord) -> str | None:
        if not record.exc_info or record.exc_info[1] is None:
            return None
        return format_exception(record.exc_info[1], with_messages=self.debug)

    def timestamp(self, record: logging.LogRecord) -> str:
        return f"{self.formatTime(record, self.datefmt)}.{int(record.msecs):03d}{time.strftime('%z')}"


class TextLogFormatter(_RecchatFormatter):
    """``<time> <LEVEL> <logger> event=... request_id=... key=value ...`` (the default of ``recchat serve``)."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{self.timestamp(record)} {record.levelname} {record.name} {record.getMessage()}"
        exception = self.exception_text(record)
        return f"{line}\n{exception}" if exception else line


class JsonLogFormatter(_RecchatFormatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, then ``event`` and its fields (``request_id``,
    ``session_id``, ...) for recchat's events, or ``message`` (and ``request_id`` inside a request) for other
    records; ``exception`` holds the traceback (messages withheld unless DEBUG)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {"time": self.timestamp(record), "level": record.levelname, "logger": record.name}
        structured = getattr(record, "recchat", None)
        if isinstance(structured, dict):
            out.update(structured)
        else:
            out["message"] = record.getMessage()
            if _request_id.get() != "-":
                out["request_id"] = _request_id.get()
        exception = self.exception_text(record)
        if exception:
            out["exception"] = exception
        return json.dumps(out, ensure_ascii=False, default=str)


LogFormat = Literal["text", "json"]


def configure_logging(log_format: LogFormat = "text", level: int | str = logging.INFO) -> logging.Handler:
    """Send every log record (recchat's, uvicorn's, libraries', Python warnings) to stderr in one format.

    Replaces the root logger's handlers; returns the new handler.
    """
    numeric = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    debug = numeric <= logging.DEBUG
    formatter = JsonLogFormatter(debug=debug) if log_format == "json" else TextLogFormatter(debug=debug)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):  # uvicorn's own handlers would bypass ours
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    logging.captureWarnings(True)
    return handler


class RequestContextMiddleware:
    """Request id (``X-Request-ID``: accepted or generated, echoed), access log, and the 500 of last resort.

    An unexpected exception becomes 500 ``internal_error`` with an ``error_id`` that is logged with the
    traceback; nothing else about the failure reaches the client.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"x-request-id"), "")
        request_id = incoming if _REQUEST_ID_RE.match(incoming) else uuid.uuid4().hex
        token = _request_id.set(request_id)
        state = scope.setdefault("state", {})
        session_match = _SESSION_PATH_RE.match(scope.get("path", ""))
        session_id = session_match.group(1)[:128] if session_match else None
        session_token = _session_id.set(session_id)  # every event logged for the request carries it
        started = time.perf_counter()
        response_status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal response_status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                response_status = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            body = internal_error(exc, f"{scope.get('method', '')} {scope.get('path', '')}")
            if response_started:
                raise  # too late for a clean error response; the server closes the connection
            state["error_code"] = "internal_error"
            await error_response(500, body)(scope, receive, send_with_id)
        finally:
            client = scope.get("client")
            quiet = scope.get("path") in _PROBE_PATHS and response_status < 500  # probes poll often
            log_event(
                logging.DEBUG if quiet else logging.INFO, "request", method=scope.get("method"),
                path=scope.get("path"), status=response_status,
                ms=(time.perf_counter() - started) * 1000, owner=state.get("owner"),
                session_id=session_id or state.get("session_id"),  # the path's, or the one a POST created
                error=state.get("error_code"),
                client=client[0] if client else None,
            )
            _session_id.reset(session_token)
            _request_id.reset(token)


class DeclaredBodyLimitMiddleware:
    """413 ``request_too_large`` (JSON) for a ``/v1`` request whose Content-Length is over its route's limit.

    FastAPI's ``max_body_size`` (set per router in `create_app`) counts the bytes that actually arrive, and its
    error goes through the API's handlers; a too-large *declared* length is answered here, before any routing,
    because Starlette's own answer to it is plain text.
    """

    def __init__(self, app: ASGIApp, limit_for: Callable[[str, str], int | None]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            limit = self.limit_for(scope.get("method", ""), scope.get("path", ""))
            declared = next((v for k, v in scope.get("headers", []) if k == b"content-length"), None)
            if limit is not None and declared is not None and declared.isdigit() and int(declared) > limit:
                scope.setdefault("state", {})["error_code"] = "request_too_large"
                body = ErrorPublic(error=ErrorBody(
                    code="request_too_large", message=f"the request body is over the limit of {limit} bytes"))
                await error_response(413, body, {"Connection": "close"})(scope, receive, send)
                return
        await self.app(scope, receive, send)


# -- runtime state ---------------------------------------------------------------------------------


class TokenBuckets:
    """Per-key token-bucket rate limiting: ``per_minute`` requests a minute, bursts up to ``burst``.

    >>> buckets = TokenBuckets(per_minute=60, burst=1, clock=lambda: 0.0)
    >>> buckets.take("k"), buckets.take("k")
    (0.0, 1.0)
    """

    def __init__(self, per_minute: int, burst: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.capacity = float(burst if burst is not None else max(per_minute, 1))
        self.rate = per_minute / 60.0
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """Take a token for ``key``: 0.0 when allowed, else the seconds until the next token."""
        if self.per_minute <= 0:
            return 0.0
        with self._lock:
            now = self.clock()
            tokens, last = self._buckets.get(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate


@dataclass
class _LockEntry:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class SessionTurns:
    """One asyncio lock per session, dropped when unused: turns on a session wait here, on the event loop,
    instead of holding a worker thread and a concurrency slot while the session's lock is busy."""

    def __init__(self) -> None:
        self._entries: dict[str, _LockEntry] = {}

    @asynccontextmanager
    async def hold(self, session_id: str) -> AsyncIterator[None]:
        entry = self._entries.setdefault(session_id, _LockEntry())
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                self._entries.pop(session_id, None)


@dataclass
class Readiness:
    """Where start-up stands (``/readyz``)."""

    state: ReadinessState = "starting"
    reason: str | None = "the service is starting"


class ChatbotNotReady(RuntimeError):  # noqa: N818 - reads as a state
    """The chatbot is not built yet (or is still warming up)."""


class ApiRuntime:
    """What the routes of one app share: the chatbot, the limits and start-up state (``app.state.runtime``)."""

    def __init__(self, config: ApiConfig, factory: Callable[[], Chatbot]) -> None:
        self.config = config
        self.factory = factory
        self.chatbot: Chatbot | None = None
        self.limiter: anyio.CapacityLimiter | None = None
        self.buckets = TokenBuckets(config.rate_limit_per_minute)
        self.turns = SessionTurns()
        self.catalog_lock = threading.Lock()  # one catalog upload/delete at a time
        self.readiness = Readiness()
        self.tasks: set[asyncio.Task[None]] = set()

    def get_chatbot(self) -> Chatbot:
        """The chatbot once it is built and warmed up (the hook the web UI gets); else `ChatbotNotReady`."""
        if self.chatbot is None or self.readiness.state in ("starting", "warming_up"):
            raise ChatbotNotReady(self.readiness.reason or "the service is starting")
        return self.chatbot

    def message_limit(self, bot: Chatbot) -> int:
        """The longest message both the API and the dialogue manager accept."""
        dialogue_limit = getattr(bot.dialogue, "max_message_chars", None)
        limit = self.config.max_message_chars
        return min(limit, dialogue_limit) if isinstance(dialogue_limit, int) else limit

    def background(self, coroutine: Any) -> asyncio.Task[None]:
        """Run a coroutine as a task that outlives the request (kept referenced until it ends)."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def warm_up(self) -> None:
        """Load the models and the default catalog (indexed on first use); record the outcome for /readyz."""
        bot = self.chatbot
        assert bot is not None
        catalog = bot.settings.default_catalog
        self.readiness = Readiness("warming_up", f"loading the models and the {catalog!r} catalog index")
        log_event(logging.INFO, "warm_up_started", catalog=catalog, lm=bot.use_lm)
        started = time.perf_counter()
        delay = 1.0
        while True:
            try:
                await _in_daemon_thread(bot.warm_up, "recchat-warm-up")
                break
            except DependencyUnavailable as exc:
                # Chroma, Redis or the LM server is not up yet: keep trying, the worker recovers by itself.
                self.readiness = Readiness("warming_up", f"waiting for the {exc.dependency.replace('_', ' ')}")
                log_event(logging.WARNING, "warm_up_waiting", dependency=exc.dependency, retry_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
            except Exception as exc:  # readiness says why; the traceback goes to the log
                self._warm_up_failed(exc)
                return
        self.readiness = Readiness("ready", None)
        log_event(logging.INFO, "warm_up_done", catalog=catalog, seconds=time.perf_counter() - started)

    def _warm_up_failed(self, exc: Exception) -> None:
        body = internal_error(exc, "warm_up")
        reason = str(exc) if isinstance(exc, CatalogError) else type(exc).__name__
        self.readiness = Readiness("failed", f"warm-up failed: {reason} (error_id {body.error.error_id})")


async def _in_daemon_thread(func: Callable[[], None], name: str) -> None:
    """Run ``func`` in a daemon thread and wait for it: a server stopped meanwhile exits without waiting
    (a first-use index build keeps the chunks it finished)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[BaseException | None] = loop.create_future()

    def settle(outcome: BaseException | None) -> None:
        if not done.done():
            done.set_result(outcome)

    def work() -> None:
        outcome: BaseException | None = None
        try:
            func()
        except BaseException as exc:  # handed to the awaiting task
            outcome = exc
        try:
            loop.call_soon_threadsafe(settle, outcome)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    threading.Thread(target=work, name=name, daemon=True).start()
    outcome = await done
    if outcome is not None:
        raise outcome


# -- dependencies ----------------------------------------------------------------------------------


async def get_runtime(request: Request) -> ApiRuntime:
    """The app's shared runtime state."""
    return request.app.state.runtime


RuntimeDep = Annotated[ApiRuntime, Depends(get_runtime)]


async def get_chatbot(runtime: RuntimeDep) -> Chatbot:
    """The app's `Chatbot`; 503 ``not_ready`` while the service starts or warms up."""
    try:
        return runtime.get_chatbot()
    except ChatbotNotReady as exc:
        raise ApiError(503, "not_ready", f"not ready: {exc}", headers={"Retry-After": "5"}) from None


ChatbotDep = Annotated[Chatbot, Depends(get_chatbot)]

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")


async def get_caller(
    request: Request,
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """The caller named by the bearer API key (401 without a valid one); ``local`` when auth is off."""
    config = runtime.config
    if not config.auth_enabled:
        client = request.client
        if client is not None and not is_loopback(client.host):
            raise ApiError(401, "unauthorized", "authentication is off (no API keys), so only local clients "
                           "are served", headers={"WWW-Authenticate": "Bearer"})
        caller = Caller(identity=LOCAL_IDENTITY, role="admin")
    else:
        caller = config.caller_for(credentials.credentials) if credentials is not None else None
        if caller is None:
            message = "a valid API key is required" if credentials is None else "invalid API key"
            raise ApiError(401, "unauthorized", f"{message}: send Authorization: Bearer <key>",
                           headers={"WWW-Authenticate": "Bearer"})
    request.state.owner = caller.identity
    return caller


CallerDep = Annotated[Caller, Depends(get_caller)]


async def require_admin(caller: CallerDep) -> Caller:
    """The caller, if an admin (403 ``forbidden`` otherwise)."""
    if caller.role != "admin":
        raise ApiError(403, "forbidden", "this route needs an admin API key")
    return caller


async def enforce_rate_limit(caller: CallerDep, runtime: RuntimeDep) -> None:
    """429 ``rate_limited`` (with ``Retry-After``) when the caller's key used up its requests per minute."""
    wait = runtime.buckets.take(caller.identity)
    if wait > 0:
        seconds = max(1, math.ceil(wait))
        raise ApiError(429, "rate_limited", f"too many requests; retry in {seconds} s",
                       headers={"Retry-After": str(seconds)})


@dataclass(frozen=True)
class Turn:
    """A checked user message for a session the caller owns."""

    bot: Chatbot
    session_id: str
    text: str
    owner: str


async def prepare_turn(session_id: str, body: MessageCreate, bot: ChatbotDep, caller: CallerDep,
                       runtime: RuntimeDep) -> Turn:
    """Check the message (422 ``empty_message``, 413 ``message_too_long``) and the session (404) up front."""
    if not body.text.strip():
        raise ApiError(422, "empty_message", "the message is empty")
    limit = runtime.message_limit(bot)
    if len(body.text) > limit:
        raise ApiError(413, "message_too_long", f"the message is {len(body.text)} characters; the limit is {limit}")
    await anyio.to_thread.run_sync(partial(bot.get_session, session_id, caller.identity))
    return Turn(bot, session_id, body.text, caller.identity)


TurnDep = Annotated[Turn, Depends(prepare_turn)]


# -- helpers ---------------------------------------------------------------------------------------


def _catalog_or_none(library: Library, name: str) -> Catalog | None:
    try:
        return library.catalog(name)
    except CatalogError:
        return None


def session_public(bot: Chatbot, state: SessionState) -> SessionPublic:
    """The public view of a session, with item titles from its catalog (blocking: call from a thread)."""
    catalog = _catalog_or_none(bot.library, state.catalog)

    def refs(ids: list[str]) -> list[ItemRef]:
        return [ItemRef(id=i, title=catalog[i].title if catalog is not None and i in catalog else None) for i in ids]

    data = export_session(state)
    return SessionPublic(
        id=state.id, owner=state.owner, catalog=state.catalog, created=state.created, updated=state.updated,
        liked=refs(state.liked), disliked=refs(state.disliked), seen=refs(state.seen), wishes=data["wishes"],
        constraints=ConstraintsPublic.model_validate(data["constraints"]),
        recommendations=[RecommendationPublic.model_validate(r) for r in data["recommended"]],
        messages=[MessagePublic.model_validate(m) for m in data["messages"]],
    )


def reply_public(reply: Reply) -> ReplyPublic:
    return ReplyPublic.model_validate(reply.as_dict())


@functools.lru_cache(maxsize=64)
def _count_lines(path: str, mtime_ns: int, size: int) -> int:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


def _catalog_size(path: Path) -> int | None:
    try:
        stat = path.stat()
        return _count_lines(str(path), stat.st_mtime_ns, stat.st_size)
    except OSError:
        return None


def _log_turn(turn: Turn, reply: Reply | None, started: float, *, stream: bool, error: str | None = None) -> None:
    log_event(
        logging.INFO, "message", session_id=turn.session_id, owner=turn.owner, chars=len(turn.text),
        act=reply.act if reply else None, recommendations=len(reply.recommendations) if reply else None,
        ms=(time.perf_counter() - started) * 1000, stream=stream, error=error,
    )


def _upload_name(filename: str | None) -> str:
    name = Path(filename or "").name
    return name if name and re.fullmatch(r"[\w .()-]{1,100}", name) else "uploaded catalog"


_CONTENT_TYPE_FORMATS: dict[str, CatalogFormat] = {
    "text/csv": "csv", "text/tab-separated-values": "tsv", "application/json": "json",
    "application/x-ndjson": "jsonl", "application/jsonl": "jsonl", "application/jsonlines": "jsonl",
}


def _detect_format(given: CatalogFormat | None, filename: str | None, content_type: str) -> CatalogFormat:
    if given is not None:
        return given
    suffix = Path(filename or "").suffix.lower().lstrip(".")
    if suffix in ("jsonl", "json", "csv", "tsv"):
        return suffix  # type: ignore[return-value]
    detected = _CONTENT_TYPE_FORMATS.get(content_type.split(";")[0].strip().lower())
    if detected is None:
        raise ApiError(422, "invalid_catalog", "say which format the file is in: ?format=jsonl|json|csv|tsv")
    return detected


def _load_and_index(runtime: ApiRuntime, library: Library, name: str, data: bytes, fmt: CatalogFormat,
                    shown: str, title_field: str | None, id_field: str | None) -> tuple[CatalogIndexed, bool]:
    """Save the upload to a temporary file, load it with `load_catalog`, index it (blocking)."""
    with tempfile.TemporaryDirectory(prefix="recchat-upload-") as tmp:
        path = Path(tmp) / f"upload.{fmt}"
        path.write_bytes(data)
        try:
            catalog = load_catalog(path, name, title_field=title_field, id_field=id_field)
        except CatalogError as exc:
            raise ApiError(422, "invalid_catalog", str(exc).replace(str(path), shown)) from None
        problems = [p.replace(str(path), shown) for p in (catalog.report.problems if catalog.report else [])]
    with runtime.catalog_lock:
        existed = library.catalog_path(name).is_file()
        stats = library.add(catalog, progress=False)
    result = CatalogIndexed(name=stats.catalog, items=stats.items, embedded=stats.embedded,
                            unchanged=stats.unchanged, removed=stats.removed, seconds=round(stats.seconds, 3),
                            problems=problems[:50], problem_count=len(problems))
    return result, existed


# -- routes ----------------------------------------------------------------------------------------

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorPublic, "description": "Malformed request, e.g. a body that is not JSON (`invalid_request`)."},
    401: {"model": ErrorPublic, "description": "Missing or invalid API key (`unauthorized`)."},
    422: {"model": ErrorPublic, "description": "Invalid request (`invalid_request` and others)."},
    429: {"model": ErrorPublic, "description": "Too many requests (`rate_limited`, see Retry-After)."},
    503: {"model": ErrorPublic, "description": "Still starting or warming up (`not_ready`)."},
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorPublic, "description": "Not found."}}
_ADMIN: dict[int | str, dict[str, Any]] = {403: {"model": ErrorPublic, "description": "Needs an admin key."}}
_TOO_LARGE: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorPublic, "description": "`message_too_long` or `request_too_large`."},
}


def _json_errors(*responses: dict[int | str, dict[str, Any]]) -> dict[int | str, dict[str, Any]]:
    """Error responses documented as ``application/json`` on a route whose own media type is another one.

    FastAPI documents an additional response's model under the route's response class media type, so on the
    server-sent-events route every JSON error would be documented as ``text/event-stream``.
    """
    out: dict[int | str, dict[str, Any]] = {}
    for merged in responses:
        for code, spec in merged.items():
            schema = {"$ref": f"#/components/schemas/{spec['model'].__name__}"}
            out[code] = {"description": spec["description"], "content": {"application/json": {"schema": schema}}}
    return out

v1 = APIRouter(prefix=f"/{API_VERSION}", dependencies=[Depends(enforce_rate_limit)], responses=_ERRORS)
uploads = APIRouter(prefix=f"/{API_VERSION}", dependencies=[Depends(enforce_rate_limit)], responses=_ERRORS)
probes = APIRouter(tags=["probes"])


@v1.post("/sessions", status_code=status.HTTP_201_CREATED, tags=["sessions"], responses=_NOT_FOUND)
def create_session(
    bot: ChatbotDep, caller: CallerDep, request: Request, response: Response,
    body: Annotated[SessionCreate | None, Body()] = None,
) -> SessionPublic:
    """Start a conversation on a catalog, optionally with items (ids or titles) the user already likes."""
    body = body or SessionCreate()
    try:
        state = bot.create_session(body.catalog, owner=caller.identity, likes=body.likes)
    except MessageError as exc:
        raise ApiError(422, "unknown_item", str(exc)) from None
    response.headers["Location"] = f"/{API_VERSION}/sessions/{state.id}"
    request.state.session_id = state.id  # for the request's log line
    log_event(logging.INFO, "session_created", session_id=state.id, owner=caller.identity, catalog=state.catalog)
    return session_public(bot, state)


@v1.get("/sessions", tags=["sessions"])
def list_sessions(
    bot: ChatbotDep, caller: CallerDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20, offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> SessionList:
    """The caller's conversations, most recently updated first."""
    states = bot.list_sessions(caller.identity, limit, offset)
    return SessionList(
        sessions=[SessionSummary(id=s.id, catalog=s.catalog, created=s.created, updated=s.updated,
                                 message_count=len(s.messages)) for s in states],
        limit=limit, offset=offset,
    )


@v1.get("/sessions/{session_id}", tags=["sessions"], responses=_NOT_FOUND)
def get_session(session_id: str, bot: ChatbotDep, caller: CallerDep) -> SessionPublic:
    """A conversation: messages, liked and disliked items, constraints and recommendations so far."""
    return session_public(bot, bot.get_session(session_id, caller.identity))


@v1.delete("/sessions/{session_id}", status_code=status.HTTP_204_NO_CONTENT, tags=["sessions"],
           response_class=Response, responses=_NOT_FOUND)
def delete_session(session_id: str, bot: ChatbotDep, caller: CallerDep) -> Response:
    """Delete a conversation and everything recorded in it."""
    bot.delete_session(session_id, caller.identity)
    log_event(logging.INFO, "session_deleted", session_id=session_id, owner=caller.identity)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@v1.post("/sessions/{session_id}/messages", tags=["messages"], responses={**_NOT_FOUND, **_TOO_LARGE})
async def send_message(turn: TurnDep, runtime: RuntimeDep) -> ReplyPublic:
    """Send a user message; the reply carries structured recommendations with justifications."""
    started = time.perf_counter()
    async with runtime.turns.hold(turn.session_id):
        reply = await anyio.to_thread.run_sync(
            partial(turn.bot.send, turn.session_id, turn.text, turn.owner), limiter=runtime.limiter
        )
    _log_turn(turn, reply, started, stream=False)
    return reply_public(reply)


_SSE_DOC = (
    "Server-sent events: `event: token` with `data: {\"text\": piece}` as the reply is written, then "
    "`event: reply` with the full `ReplyPublic`, or `event: error` with an `ErrorPublic`."
)


@v1.post("/sessions/{session_id}/messages/stream", tags=["messages"], response_class=EventSourceResponse,
         responses={200: {"description": _SSE_DOC}, **_json_errors(_ERRORS, _NOT_FOUND, _TOO_LARGE)})
async def stream_message(turn: TurnDep, runtime: RuntimeDep) -> AsyncIterator[ServerSentEvent]:
    """Send a user message and stream the reply as server-sent events (token..., then reply or error)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def on_token(piece: str) -> None:  # called in the worker thread
        try:
            loop.call_soon_threadsafe(queue.put_nowait, ("token", piece))
        except RuntimeError:  # the loop is closed: the server is shutting down; the turn still completes
            pass

    async def run() -> None:
        # A task of its own: if the client goes away, the turn still finishes and is saved.
        started = time.perf_counter()
        try:
            async with runtime.turns.hold(turn.session_id):
                reply = await anyio.to_thread.run_sync(
                    partial(turn.bot.send, turn.session_id, turn.text, turn.owner, on_token),
                    limiter=runtime.limiter,
                )
        except Exception as exc:
            known = api_error_for(exc)
            body = known.body() if known is not None else internal_error(exc, "stream")
            _log_turn(turn, None, started, stream=True, error=body.error.code)
            queue.put_nowait(("error", body))
        else:
            _log_turn(turn, reply, started, stream=True)
            queue.put_nowait(("reply", reply_public(reply)))

    runtime.background(run())
    while True:
        kind, value = await queue.get()
        if kind == "token":
            yield ServerSentEvent(event="token", data=TokenPublic(text=value))
            continue
        yield ServerSentEvent(event=kind, data=value)
        return


@v1.post("/sessions/{session_id}/feedback", tags=["sessions"], responses=_NOT_FOUND)
def give_feedback(session_id: str, body: FeedbackCreate, bot: ChatbotDep, caller: CallerDep) -> SessionPublic:
    """Record the user's reaction to an item (like, dislike, seen, chosen); returns the updated session."""
    try:
        state = bot.feedback(session_id, body.item_id, body.reaction, owner=caller.identity)
    except MessageError as exc:
        raise ApiError(422, "unknown_item", str(exc)) from None
    log_event(logging.INFO, "feedback", session_id=session_id, owner=caller.identity, item_id=body.item_id,
              reaction=body.reaction)
    return session_public(bot, state)


def _beliefs(state: SessionState, kind: str) -> object:
    """What a belief kind currently holds in a session (to tell whether forgetting changed anything)."""
    if kind == "liked":
        return list(state.liked)
    if kind == "disliked":
        return list(state.disliked)
    return state.constraints.model_dump()


def _item_belief_id(bot: Chatbot, state: SessionState, ids: list[str], value: str) -> str:
    """An item id of ``ids`` named by id or by title (case-insensitive); ``value`` itself otherwise."""
    if value in ids:
        return value
    catalog = _catalog_or_none(bot.library, state.catalog)
    if catalog is None:
        return value
    by_title = {catalog[i].title.casefold(): i for i in ids if i in catalog}
    return by_title.get(value.casefold(), value)


@v1.delete("/sessions/{session_id}/beliefs", tags=["sessions"], responses=_NOT_FOUND)
def forget_belief(
    session_id: str, bot: ChatbotDep, caller: CallerDep,
    kind: Annotated[Literal["liked", "disliked", "constraint"], Query(description="What kind of belief.")],
    value: Annotated[str, Query(min_length=1, max_length=500,
                                description='Item id or title; for a constraint "field=value", or "field" '
                                            "for a numeric range.")],
) -> SessionPublic:
    """Remove a wrong belief (a liked or disliked item, or a constraint); returns the updated session."""
    before = bot.get_session(session_id, caller.identity)
    if kind == "liked":
        value = _item_belief_id(bot, before, before.liked, value)
    elif kind == "disliked":
        value = _item_belief_id(bot, before, before.disliked, value)
    after = bot.forget(session_id, kind, value, owner=caller.identity)
    if _beliefs(before, kind) == _beliefs(after, kind):
        raise ApiError(404, "belief_not_found", f"the session has no {kind} belief {value!r}")
    log_event(logging.INFO, "belief_removed", session_id=session_id, owner=caller.identity, kind=kind)
    return session_public(bot, after)


@v1.get("/catalogs", tags=["catalogs"])
def list_catalogs(bot: ChatbotDep) -> CatalogList:
    """The catalogs sessions can use, with their sizes."""
    library = bot.library
    bundled = library.bundled()
    out = []
    for name in library.names():
        installed = library.catalog_path(name)
        path = installed if installed.is_file() else library.bundled_path(name, ".jsonl.gz")
        out.append(CatalogPublic(name=name, items=_catalog_size(path), indexed=installed.is_file(),
                                 bundled=name in bundled, default=name == bot.settings.default_catalog))
    return CatalogList(catalogs=out)


@v1.get("/catalogs/{name}/items", tags=["catalogs"], responses=_NOT_FOUND)
def search_items(
    name: str, bot: ChatbotDep,
    q: Annotated[str | None, Query(max_length=200, description="Title substring or a description.")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Only when browsing (no q).")] = 0,
) -> ItemSearchResults:
    """Search a catalog: items whose title contains ``q`` first, then semantic matches; without ``q``, browse."""
    catalog = bot.library.catalog(name)
    if q is None or not q.strip():
        page = catalog.items[offset : offset + limit]
        items = [ItemMatch(id=i.id, title=i.title, match="browse", fields=i.display()) for i in page]
        return ItemSearchResults(catalog=catalog.name, q=None, total=len(catalog), items=items)
    needle = " ".join(q.split()).casefold()
    items = [ItemMatch(id=i.id, title=i.title, match="title", fields=i.display())
             for i in catalog if needle in i.title.casefold()][:limit]
    if len(items) < limit:
        from retrieval.candidates import Preferences

        found = {m.id for m in items}
        candidates = bot.library.generator(catalog.name).candidates(Preferences(text=q, recent=q), limit + len(found))
        for cand in candidates:
            if cand.item_id not in found and len(items) < limit:
                item = catalog[cand.item_id]
                items.append(ItemMatch(id=item.id, title=item.title, match="semantic", score=round(cand.score, 4),
                                       fields=item.display()))
    return ItemSearchResults(catalog=catalog.name, q=q, total=None, items=items)


@v1.get("/catalogs/{name}/items/{item_id:path}", tags=["catalogs"], responses=_NOT_FOUND)
def get_item(name: str, item_id: str, bot: ChatbotDep) -> ItemPublic:
    """One catalog item, as stored."""
    item = bot.library.catalog(name).get(item_id)
    if item is None:
        raise ApiError(404, "item_not_found", f"catalog {name!r} has no item {item_id!r}")
    return ItemPublic.model_validate(item.model_dump())


_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "description": "The catalog file as the raw body, or multipart/form-data with a `file` field.",
        "content": {
            "text/csv": {"schema": {"type": "string"}},
            "application/x-ndjson": {"schema": {"type": "string"}},
            "application/json": {"schema": {"type": "string"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}},
                           "required": ["file"]},
            },
        },
    }
}


_UPLOAD_PATH = re.compile(rf"/{API_VERSION}/catalogs/[^/]+")


@uploads.post("/catalogs/{name}", status_code=status.HTTP_201_CREATED, tags=["catalogs"],
              dependencies=[Depends(require_admin)], openapi_extra=_UPLOAD_BODY,
              responses={200: {"model": CatalogIndexed, "description": "Replaced an existing catalog."},
                         **_ADMIN, **_TOO_LARGE})
async def upload_catalog(
    name: str, request: Request, response: Response, bot: ChatbotDep, runtime: RuntimeDep,
    file_format: Annotated[CatalogFormat | None, Query(alias="format", description="Default: from the file name.")]
    = None,
    title_field: Annotated[str | None, Query(max_length=100, description="Field holding the title.")] = None,
    id_field: Annotated[str | None, Query(max_length=100, description="Field holding the item id.")] = None,
) -> CatalogIndexed:
    """Upload a catalog file (JSONL, JSON or CSV), validate it and index it under ``name`` (admin only)."""
    if safe_name(name) != name:
        raise ApiError(422, "invalid_catalog_name", "catalog names are 3-63 characters of a-z 0-9 . _ - "
                       f"starting and ending with a letter or digit (e.g. {safe_name(name)!r})")
    content_type = request.headers.get("content-type", "")
    filename: str | None = None
    if content_type.lower().startswith("multipart/form-data"):
        async with request.form() as form:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise ApiError(422, "invalid_catalog", "a multipart upload needs a file field named 'file'")
            data = await upload.read()
            filename = upload.filename
        content_type = ""
    else:
        data = await request.body()
    if not data.strip():
        raise ApiError(422, "invalid_catalog", "the uploaded catalog is empty")
    fmt = _detect_format(file_format, filename, content_type)
    shown = _upload_name(filename)
    result, existed = await anyio.to_thread.run_sync(
        partial(_load_and_index, runtime, bot.library, name, data, fmt, shown, title_field, id_field),
        limiter=runtime.limiter,
    )
    if existed:
        response.status_code = status.HTTP_200_OK
    log_event(logging.INFO, "catalog_indexed", catalog=name, items=result.items, embedded=result.embedded,
              problems=result.problem_count, replaced=existed)
    return result


@v1.delete("/catalogs/{name}", status_code=status.HTTP_204_NO_CONTENT, tags=["catalogs"],
           dependencies=[Depends(require_admin)], response_class=Response,
           responses={**_ADMIN, **_NOT_FOUND, 409: {"model": ErrorPublic, "description": "Default or bundled."}})
def delete_catalog(name: str, bot: ChatbotDep, runtime: RuntimeDep) -> Response:
    """Delete an uploaded catalog with its index (admin only); the default and bundled catalogs stay."""
    library = bot.library
    if name not in library.names():
        raise ApiError(404, "catalog_not_found", f"unknown catalog {name!r}")
    if name == bot.settings.default_catalog or name in library.bundled():
        raise ApiError(409, "catalog_protected", f"catalog {name!r} is the default or a bundled one")
    with runtime.catalog_lock:
        library.remove(name)
    log_event(logging.INFO, "catalog_deleted", catalog=name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@probes.get("/healthz")
async def healthz() -> HealthPublic:
    """Liveness: the process is up and serving (always 200)."""
    return HealthPublic()


@probes.get("/readyz", responses={503: {"model": ReadinessPublic, "description": "Not ready, with the reason."}})
async def readyz(runtime: RuntimeDep) -> JSONResponse:
    """Readiness: 200 once the models are loaded, the default catalog is indexed and every dependency
    (session store, vector store, LM server) answers; else 503 with why."""
    readiness = runtime.readiness
    bot = runtime.chatbot
    catalog = bot.settings.default_catalog if bot is not None else None
    body = ReadinessPublic(status=readiness.state, catalog=catalog, reason=readiness.reason)
    if bot is not None and readiness.state == "ready":
        try:
            with anyio.fail_after(DEPENDENCY_CHECK_SECONDS):
                body.dependencies = await anyio.to_thread.run_sync(bot.check_dependencies, abandon_on_cancel=True)
        except TimeoutError:
            body.dependencies = {"all": f"no answer within {DEPENDENCY_CHECK_SECONDS} s"}
        down = sorted(name for name, outcome in body.dependencies.items() if outcome != "ok")
        if down:
            body.status, body.reason = "degraded", f"unavailable: {', '.join(down)}"
    return JSONResponse(body.model_dump(), status_code=200 if body.status == "ready" else 503)


# -- the app ---------------------------------------------------------------------------------------


def _mount_ui(app: FastAPI, runtime: ApiRuntime) -> None:
    """The web UI hook: ``ui.app.mount_ui(app, chatbot_getter)`` mounts the Gradio UI at ``/`` when installed."""
    try:
        from ui.app import mount_ui
    except ImportError as exc:
        log_event(logging.INFO, "ui_not_mounted", reason=str(exc)[:200])
        return
    mount_ui(app, runtime.get_chatbot)
    if runtime.config.auth_enabled:
        log_event(logging.WARNING, "ui_unprotected", detail="the web UI at / does not check API keys")


def create_app(
    chatbot_factory: Callable[[], Chatbot] | None = None,
    settings: Settings | None = None,
    *,
    config: ApiConfig | None = None,
    ui: bool = True,
) -> FastAPI:
    """The recchat HTTP API. The `Chatbot` is built by ``chatbot_factory`` at start-up, then warmed up in the
    background (``/readyz`` says when it is ready).

    ``config`` defaults to ``ApiConfig.from_settings(settings)``; ``ui=False`` skips mounting the web UI.

    >>> app = create_app(lambda: Chatbot(settings, use_lm=False), settings,  # doctest: +SKIP
    ...                  config=ApiConfig(api_keys="k1:client,k2:admin"))
    """
    if config is None or chatbot_factory is None:
        settings = settings or get_settings()
    if config is None:
        assert settings is not None
        config = ApiConfig.from_settings(settings)
    if chatbot_factory is None:
        default_settings = settings
        assert default_settings is not None

        def chatbot_factory() -> Chatbot:
            return Chatbot(default_settings)

    runtime = ApiRuntime(config, chatbot_factory)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime.limiter = anyio.CapacityLimiter(config.max_concurrency)
        if not config.auth_enabled:
            log_event(logging.WARNING, "auth_disabled",
                      detail="no API keys configured: authentication is off, every caller is 'local', "
                             "and only loopback clients are served")
        runtime.chatbot = await anyio.to_thread.run_sync(runtime.factory)
        runtime.background(runtime.warm_up())
        yield

    from importlib.metadata import PackageNotFoundError, version

    try:
        app_version = version("recchat")
    except PackageNotFoundError:
        app_version = "0"
    app = FastAPI(
        title="recchat",
        summary="Conversational recommendations over any catalog.",
        version=app_version,
        lifespan=lifespan,
    )
    app.state.runtime = runtime

    def body_limit(method: str, path: str) -> int | None:
        if not path.startswith(f"/{API_VERSION}/"):
            return None
        if method == "POST" and _UPLOAD_PATH.fullmatch(path):
            return config.max_upload_bytes
        return config.max_body_bytes

    app.add_middleware(DeclaredBodyLimitMiddleware, limit_for=body_limit)
    app.add_middleware(RequestContextMiddleware)  # outermost: request id and 500s cover everything
    for exc_type in (ApiError, SessionNotFound, SessionConflict, CatalogError, MessageError, DependencyUnavailable):
        app.add_exception_handler(exc_type, _handle_api_error)
    app.add_exception_handler(RequestValidationError, _handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, _handle_http_error)
    app.include_router(probes)
    app.include_router(v1, max_body_size=config.max_body_bytes)
    app.include_router(uploads, max_body_size=config.max_upload_bytes)
    if ui:
        _mount_ui(app, runtime)
    return app
