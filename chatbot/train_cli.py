"""``recchat train``: fine-tune the LM (LoRA) on training conversations; see `chatbot.finetune`."""

from __future__ import annotations

import json
import threading
from concurrent.futures import Future, wait
from pathlib import Path
from typing import Annotated, Any

import typer

from retrieval import model_thread
from retrieval.cli import fail
from retrieval.settings import get_settings

DEFAULT_DATASETS = Path("../shared/datasets")


def train(
    steps: Annotated[int, typer.Option(min=1, help="Optimiser steps.")] = 400,
    out: Annotated[Path | None, typer.Option(help="Adapter folder (default: <data dir>/adapter).")] = None,
    batch: Annotated[int, typer.Option(min=1, help="Examples per step.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of data order, negatives and LoRA initialisation.")] = 0,
    lr: Annotated[float, typer.Option(min=0.0, help="Peak learning rate.")] = 3e-4,
    datasets: Annotated[Path, typer.Option(help="The shared datasets folder (defaults for every source).")] = (
        DEFAULT_DATASETS),
    dialogs: Annotated[list[Path] | None, typer.Option(
        help="Training dialogs (repeatable; replaces the default sources). Any format `recchat eval` reads.")] = None,
    heldout_dialogs: Annotated[list[Path] | None, typer.Option(help="Held-out dialogs for model selection.")] = None,
    catalog: Annotated[str | None, typer.Option(help="Catalog of --dialogs / --heldout-dialogs.")] = None,
    justifications: Annotated[Path | None, typer.Option(
        help="E-ReDial explanations file (default: <datasets>/e_redial/e_redial_explanations.json).")] = None,
    no_justifications: Annotated[bool, typer.Option("--no-justifications", help="Ranking examples only.")] = False,
    forbid: Annotated[list[Path] | None, typer.Option(
        help="Dialog files never to train on (default: the ReDial official test split).")] = None,
    heldout_turns: Annotated[int, typer.Option(min=0, help="Held-out turns for fitting the fusion weight.")] = 300,
    compare_base: Annotated[bool, typer.Option(help="Also score the held-out turns with the base model.")] = True,
    progress: Annotated[bool, typer.Option(help="Progress bars on stderr.")] = True,
) -> None:
    """Fine-tune the LM with LoRA for ranking and justification; resumable (re-run the same command)."""
    from chatbot.finetune import (
        DialogSource,
        TrainConfig,
        TrainingDataError,
        TrainingInterruptedError,
        default_sources,
        forbidden_ids,
        run_training,
    )
    from chatbot.lm import LanguageModelError
    from retrieval.catalog import CatalogError
    from retrieval.dialogs import DialogError
    from retrieval.index import Library

    settings = get_settings()
    library = Library(settings)
    if dialogs:
        name = catalog or settings.default_catalog
        sources = [DialogSource("train", name, list(dialogs))]
        if heldout_dialogs:
            sources.append(DialogSource("heldout", name, list(heldout_dialogs), split="heldout"))
    else:
        sources = []
        for source in default_sources(datasets):
            if source.catalog not in library.names():
                typer.secho(f"skipping {source.name}: no catalog {source.catalog!r} (index it with "
                            f"recchat index --catalog {datasets}/inspired/inspired_catalog.jsonl --name inspired)",
                            fg=typer.colors.YELLOW, err=True)
                continue
            sources.append(source)
        if not sources:
            raise fail(f"no training dialogs found under {datasets} (or pass --dialogs)")
    if justifications is None and not no_justifications and not dialogs:
        default = datasets / "e_redial" / "e_redial_explanations.json"
        justifications = default if default.is_file() else None
    if no_justifications:
        justifications = None
    if forbid is None:
        test_split = datasets / "redial" / "official" / "test_data.jsonl"
        forbid = [test_split] if test_split.is_file() else []
    config = TrainConfig(steps=steps, batch=batch, seed=seed, lr=lr)
    target = out or Path(settings.data_dir) / "adapter"
    # All model work runs on the model thread (see `retrieval.model_thread`): training, then held-out
    # scoring. Ctrl-C here asks the run to stop after the step under way, which saves a checkpoint.
    stop = threading.Event()
    job = model_thread.submit(run_training, library, sources, target, config, justifications=justifications,
                              forbidden=forbidden_ids(forbid), heldout_turns=heldout_turns,
                              compare_base=compare_base, progress=progress,
                              log=lambda message: typer.echo(message, err=True), stop=stop)
    try:
        try:
            result = _result(job)
        except KeyboardInterrupt:
            stop.set()
            typer.secho("stopping after the current step (a checkpoint is saved) ...", fg=typer.colors.YELLOW,
                        err=True)
            result = _result(job)
    except TrainingInterruptedError as exc:
        raise fail(str(exc), 130) from None
    except (TrainingDataError, CatalogError, DialogError, LanguageModelError, OSError) as exc:
        raise fail(str(exc)) from None
    typer.echo(json.dumps({"out": str(target), "lm_weight": result["lm_weight"], "training": result["training"],
                           "heldout": {k: v for k, v in result["heldout"].items() if k != "fit"}}, indent=2))


def _result(job: Future[Any]) -> Any:  # noqa: ANN401
    """``job.result()``, waking up often: the kernel may hand SIGINT to a worker thread, and a main thread
    blocked for good in a lock would then never run Python's handler (Ctrl-C would go unnoticed)."""
    while True:
        done, _ = wait([job], timeout=0.2)
        if done:
            return job.result()


def register(app: typer.Typer) -> None:
    app.command("train")(train)
