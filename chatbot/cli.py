"""The ``recchat`` command line: thin commands over the service objects, one module per command group."""

from __future__ import annotations

import os

import typer

app = typer.Typer(
    name="recchat",
    help="Conversational recommendations over any catalog: index, search, chat, serve, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    # Command modules import nothing heavy at module level, so `recchat --help` stays fast.
    from chatbot import chat_cli, lm_serve_cli, serve_cli, train_cli
    from eval import cli as eval_cli
    from retrieval import cli as retrieval_cli

    retrieval_cli.register(app)
    chat_cli.register(app)
    serve_cli.register(app)
    lm_serve_cli.register(app)
    train_cli.register(app)
    eval_cli.register(app)


def main() -> None:
    """Console-script entry point."""
    # No model hub is reachable: make every library fail fast instead of trying to download.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    _register()
    app()


_register()
