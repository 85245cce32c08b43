"""``recchat serve``: the HTTP API (and the web UI at ``/`` when it is installed) on uvicorn."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from retrieval.cli import fail
from retrieval.settings import get_settings


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on; other than loopback needs API keys.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 7860,
    catalog: Annotated[str | None, typer.Option(help="Default catalog of new sessions (from settings).")] = None,
    no_lm: Annotated[bool, typer.Option("--no-lm", help="Retrieval and templates only (no language model).")] = False,
) -> None:
    """Serve the HTTP API (/v1, docs at /docs); the models and the default catalog load in the background."""
    from pydantic import ValidationError

    from chatbot.api import ApiConfig, InsecureBindError, check_bind, create_app
    from chatbot.service import Chatbot

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

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if not config.auth_enabled:
        typer.secho("warning: no API keys configured (RECCHAT_API_KEYS): authentication is off, every caller is "
                    "'local', and only loopback clients are served.", fg=typer.colors.YELLOW, err=True)
    models = "the embedding model" if no_lm else "the embedding and language models"
    typer.secho(f"Warming up in the background: {models} and the '{settings.default_catalog}' catalog, indexed on "
                "first use (a bundled catalog takes a few minutes on 2 cores, once). /readyz answers 503 until it "
                "is done.", fg=typer.colors.CYAN, err=True)

    def build() -> Chatbot:
        return Chatbot(settings, use_lm=not no_lm)

    app = create_app(build, settings, config=config)
    shown = f"[{host}]" if ":" in host else host
    typer.secho(f"recchat API on http://{shown}:{port}/v1  (docs /docs, health /healthz, readiness /readyz)",
                fg=typer.colors.GREEN, err=True)

    import uvicorn

    # One process: per-session locks and the concurrency limit live in it (scale out behind a proxy instead).
    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False)


def register(app: typer.Typer) -> None:
    app.command()(serve)
