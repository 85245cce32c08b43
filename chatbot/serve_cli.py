"""``recchat serve``: the HTTP API (and the web UI at ``/`` when it is installed) on uvicorn."""

from __future__ import annotations

import logging
import os
from enum import StrEnum
from typing import Annotated

import typer

from retrieval.cli import fail
from retrieval.settings import get_settings


class LogFormat(StrEnum):
    """How ``recchat serve`` writes its log lines (stderr)."""

    text = "text"
    json = "json"


class LogLevel(StrEnum):
    """The lowest level logged; DEBUG also shows exception messages (which may quote user input)."""

    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on; other than loopback needs API keys.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 7860,
    catalog: Annotated[str | None, typer.Option(help="Default catalog of new sessions (from settings).")] = None,
    no_lm: Annotated[bool, typer.Option("--no-lm", help="Retrieval and templates only (no language model).")] = False,
    log_format: Annotated[LogFormat, typer.Option(
        help="text: 'time LEVEL logger event=... key=value'; json: one JSON object per line.")] = LogFormat.text,
    log_level: Annotated[LogLevel, typer.Option(
        help="Lowest level logged. Message texts and exception messages appear at debug only.")] = LogLevel.info,
) -> None:
    """Serve the HTTP API (/v1, docs at /docs); the models and the default catalog load in the background."""
    from pydantic import ValidationError

    from chatbot.api import ApiConfig, InsecureBindError, check_bind, configure_logging, create_app, log_event
    from chatbot.service import Chatbot

    structured = log_format is LogFormat.json
    if structured:
        # Keep stderr to one JSON object per line: no progress bars from the model loaders.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TQDM_DISABLE", "1")

    def notice(message: str, color: str, level: int = logging.INFO) -> None:
        """A start-up notice: coloured text for people, or a ``notice`` event in the JSON log."""
        if structured:
            log_event(level, "notice", detail=message)
        else:
            typer.secho(message, fg=color, err=True)

    try:
        settings = get_settings()
        if catalog:
            settings = settings.model_copy(update={"default_catalog": catalog})
        config = ApiConfig.from_settings(settings)
    except (ValueError, ValidationError) as exc:  # ValidationError hides inputs: no key is printed
        raise fail(f"bad settings: {exc}", 2) from None
    try:
        check_bind(host, config)
    except InsecureBindError as exc:
        raise fail(str(exc), 2) from None

    # Access logs stay off (uvicorn's would carry query strings); recchat logs one "request" event per request.
    configure_logging(log_format.value, log_level.value)  # type: ignore[arg-type]
    if structured:
        _quiet_progress_bars()
    if not config.auth_enabled:
        notice("warning: no API keys configured (RECCHAT_API_KEYS): authentication is off, every caller is "
               "'local', and only loopback clients are served.", typer.colors.YELLOW, logging.WARNING)
    models = "the embedding model" if no_lm else "the embedding and language models"
    notice(f"Warming up in the background: {models} and the '{settings.default_catalog}' catalog, indexed on "
           "first use (a bundled catalog takes a few minutes on 2 cores, once). /readyz answers 503 until it "
           "is done.", typer.colors.CYAN)

    def build() -> Chatbot:
        from retrieval.index import Library

        # The library's notices (first use of a bundled catalog) go to the log, in its format, not to print().
        library = Library(settings, log=lambda message: log_event(logging.INFO, "library", detail=message))
        return Chatbot(settings, library=library, use_lm=not no_lm)

    app = create_app(build, settings, config=config)
    shown = f"[{host}]" if ":" in host else host
    notice(f"recchat API on http://{shown}:{port}/v1  (docs /docs, health /healthz, readiness /readyz)",
           typer.colors.GREEN)

    import uvicorn

    # One process: per-session locks and the concurrency limit live in it (scale out behind a proxy instead).
    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False)


def _quiet_progress_bars() -> None:
    """Turn off the progress bars transformers draws on stderr (they would break the one-JSON-per-line log)."""
    try:
        from transformers.utils import logging as transformers_logging
    except ImportError:
        return
    transformers_logging.disable_progress_bar()


def register(app: typer.Typer) -> None:
    app.command()(serve)
