"""``recchat chat``: interactive terminal chat, or JSON lines when stdin is not a terminal."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from retrieval.cli import fail
from retrieval.settings import get_settings


def chat(
    catalog: Annotated[str | None, typer.Option(help="Catalog name (default from settings).")] = None,
    session: Annotated[str | None, typer.Option("--session", help="Resume this session id.")] = None,
    no_lm: Annotated[bool, typer.Option("--no-lm", help="Retrieval and templates only (no language model).")] = False,
) -> None:
    """Chat with the recommender. Piped input: one message per line in, one JSON object per reply out."""
    from chatbot.dialogue import MessageError
    from chatbot.service import Chatbot
    from chatbot.sessions import SessionNotFound
    from retrieval.catalog import CatalogError

    interactive = sys.stdin.isatty()
    try:
        bot = Chatbot(get_settings(), use_lm=not no_lm)
        if session:
            try:
                state = bot.get_session(session)
            except SessionNotFound:
                if not interactive:
                    raise fail(f"unknown session {session!r}") from None
                state = bot.create_session(catalog, session_id=session)
        else:
            state = bot.create_session(catalog)
    except CatalogError as exc:
        raise fail(str(exc)) from None
    if interactive:
        typer.secho(f"recchat on '{state.catalog}' (session {state.id}). Ctrl-D to quit.", fg=typer.colors.CYAN)
    for line in _lines(interactive):
        if not line.strip():
            if not interactive:
                _emit({"session_id": state.id, "error": "empty message", "code": "empty_message"})
            continue
        try:
            if interactive:
                reply = bot.send(state.id, line, on_token=lambda piece: (sys.stdout.write(piece), sys.stdout.flush()))
                sys.stdout.write("\n")
            else:
                reply = bot.send(state.id, line)
                out = reply.as_dict()
                out["recommendations"] = [
                    {k: r[k] for k in ("id", "title", "score", "justification")} for r in out["recommendations"]
                ]
                _emit(out)
        except MessageError as exc:
            if interactive:
                typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            else:
                _emit({"session_id": state.id, "error": str(exc), "code": "bad_message"})


def _lines(interactive: bool):  # noqa: ANN202 - Iterator[str]
    if not interactive:
        yield from (line.rstrip("\n") for line in sys.stdin)
        return
    while True:
        try:
            yield input("you> ")
        except EOFError:
            return


def _emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def register(app: typer.Typer) -> None:
    app.command()(chat)
