"""``recchat lm-serve``: the language model behind an OpenAI-compatible completions API (`chatbot.lm_server`).

For development and tests, and for CPU hosts; GPU hosts serve the same model with vLLM or TGI. Point a
recchat service at it with ``RECCHAT_LM_URL=http://127.0.0.1:8001``.
"""

from __future__ import annotations

from typing import Annotated

import typer

from retrieval.cli import fail
from retrieval.settings import get_settings


def lm_serve(
    host: Annotated[str, typer.Option(help="Address to listen on; other than loopback needs RECCHAT_LM_API_KEY.")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8001,
) -> None:
    """Serve the LM (RECCHAT_LM_MODEL with RECCHAT_ADAPTER) as /v1/completions, named RECCHAT_LM_SERVED_MODEL."""
    from pydantic import ValidationError

    from chatbot.api import is_loopback
    from chatbot.lm import LanguageModel, LanguageModelError
    from chatbot.lm_server import create_lm_app

    try:
        settings = get_settings()
    except (ValueError, ValidationError) as exc:  # ValidationError hides inputs: no key is printed
        raise fail(f"bad settings: {exc}", 2) from None
    api_key = settings.lm_api_key.get_secret_value()
    if not api_key and not is_loopback(host):
        raise fail(f"refusing to listen on {host!r} without RECCHAT_LM_API_KEY: anyone who can reach it could "
                   "use the model. Set a key or bind 127.0.0.1.", 2)
    lm = LanguageModel(settings)
    typer.secho("Loading the language model ...", fg=typer.colors.CYAN, err=True)
    try:
        _ = lm.model  # before listening: a bad model or adapter setting fails here, and no request waits
    except LanguageModelError as exc:
        raise fail(str(exc), 2) from None
    adapter = lm.adapter_path or "none"
    shown = f"[{host}]" if ":" in host else host
    typer.secho(f"LM server on http://{shown}:{port}/v1 (model {settings.lm_served_model!r}: {lm.source}, "
                f"adapter {adapter}, {lm.device}){'' if api_key else '; no API key: loopback only'}",
                fg=typer.colors.GREEN, err=True)

    import uvicorn

    # One process, one model: requests queue on the model's lock (scale out with more processes or vLLM).
    uvicorn.run(create_lm_app(lm, settings.lm_served_model, api_key), host=host, port=port, log_level="warning",
                access_log=False)


def register(app: typer.Typer) -> None:
    app.command("lm-serve")(lm_serve)
