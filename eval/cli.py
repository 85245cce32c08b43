"""``recchat eval``: recommendation metrics on held-out conversations."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from retrieval.cli import fail
from retrieval.settings import get_settings


class RecommenderName(str, Enum):
    popularity = "popularity"
    retrieval = "retrieval"
    full = "full"


class FormatName(str, Enum):
    auto = "auto"
    neutral = "neutral"
    redial = "redial"
    inspired = "inspired"


def evaluate(
    dialogs: Annotated[Path, typer.Option(help="Conversations: neutral JSONL, raw ReDial or INSPIRED.")],
    catalog: Annotated[str | None, typer.Option(help="Catalog name (default from settings).")] = None,
    recommender: Annotated[RecommenderName, typer.Option(help="What to evaluate.")] = RecommenderName.retrieval,
    fmt: Annotated[FormatName, typer.Option("--format", help="Conversation format.")] = FormatName.auto,
    limit: Annotated[int | None, typer.Option(min=1, help="Evaluate the first N samples only.")] = None,
    out: Annotated[Path | None, typer.Option(help="Write the JSON report here.")] = None,
) -> None:
    """Rank each held-out recommendation among all catalog items; report Recall@k, MRR, NDCG."""
    from eval.recommend import PopularityRecommender, RetrievalRecommender, evaluate_recommender, format_report
    from retrieval.catalog import CatalogError
    from retrieval.dialogs import DialogError, read_dialogs
    from retrieval.index import Library

    library = Library(get_settings())
    try:
        cat = library.catalog(catalog)
        read = read_dialogs(dialogs, cat, fmt.value, linker=library.linker(cat.name))
    except (CatalogError, DialogError) as exc:
        raise fail(str(exc)) from None
    for problem in read.problems[:10]:
        typer.secho(f"skipped: {problem}", fg=typer.colors.YELLOW, err=True)
    if read.unresolved:
        typer.secho(f"{read.unresolved} item mentions could not be resolved in catalog {cat.name!r} "
                    f"(e.g. {', '.join(read.unresolved_examples[:3])}); they are not samples.",
                    fg=typer.colors.YELLOW, err=True)
    if recommender is RecommenderName.popularity:
        rec = PopularityRecommender(cat, library.priors(cat.name))
    elif recommender is RecommenderName.retrieval:
        rec = RetrievalRecommender(library.generator(cat.name))
    else:
        raise fail("the 'full' recommender (dialogue manager with LM ranking) is not available yet", 2)
    report = evaluate_recommender(rec, read.dialogs, dataset=str(dialogs), unresolved=read.unresolved,
                                  limit=limit)
    typer.echo(format_report(report))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report.as_dict(), indent=2) + "\n", encoding="utf-8")
        typer.echo(f"report written to {out}")


def register(app: typer.Typer) -> None:
    app.command("eval")(evaluate)
