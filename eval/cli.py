"""``recchat eval``: recommendation metrics on held-out conversations."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from retrieval.cli import fail
from retrieval.settings import get_settings


class RecommenderName(StrEnum):
    popularity = "popularity"
    retrieval = "retrieval"
    full = "full"
    full_without_lm = "full-without-lm"


class FormatName(StrEnum):
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
        from chatbot.service import Chatbot
        from eval.recommend import FullRecommender

        use_lm = recommender is RecommenderName.full
        bot = Chatbot(get_settings(), library=library, use_lm=use_lm)
        rec = FullRecommender(bot.dialogue, cat.name, use_lm=use_lm)
    report = evaluate_recommender(rec, read.dialogs, dataset=str(dialogs), unresolved=read.unresolved,
                                  limit=limit)
    typer.echo(format_report(report))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report.as_dict(), indent=2) + "\n", encoding="utf-8")
        typer.echo(f"report written to {out}")


class JustifierName(StrEnum):
    template = "template"
    lm = "lm"


def evaluate_justifications(
    dialogs: Annotated[Path, typer.Option(help="E-ReDial explanations JSON.")],
    catalog: Annotated[str | None, typer.Option(help="Catalog name (default from settings).")] = None,
    justifier: Annotated[JustifierName, typer.Option(help="Which justifier.")] = JustifierName.lm,
    limit: Annotated[int | None, typer.Option(min=1, help="First N cases only.")] = None,
    out: Annotated[Path | None, typer.Option(help="Write the JSON report here.")] = None,
) -> None:
    """Justification quality on E-ReDial: BLEU-2, ROUGE-L, Distinct-2, unsupported claims, personal share."""
    from chatbot.justify import TemplateJustifier
    from chatbot.service import Chatbot
    from eval.justification import evaluate_justifier, format_justification_report, read_e_redial
    from retrieval.catalog import CatalogError

    if not dialogs.is_file():
        raise fail(f"file not found: {dialogs}")
    use_lm = justifier is JustifierName.lm
    try:
        bot = Chatbot(get_settings(), use_lm=use_lm)
        tools = bot.dialogue.tools(catalog or get_settings().default_catalog)
    except CatalogError as exc:
        raise fail(str(exc)) from None
    cases, skipped = read_e_redial(dialogs)
    if limit is not None:
        cases = cases[:limit]
    chosen = tools.justifier if use_lm else TemplateJustifier()
    report = evaluate_justifier(chosen, justifier.value, bot.dialogue, tools.catalog.name, cases, skipped,
                                str(dialogs))
    typer.echo(format_justification_report(report))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report.as_dict(), indent=2) + "\n", encoding="utf-8")
        typer.echo(f"report written to {out}")


def evaluate_scripts(
    paths: Annotated[list[Path], typer.Argument(help="YAML scripts or folders of them.")],
    junit: Annotated[Path | None, typer.Option(help="Write JUnit XML here.")] = None,
    no_lm: Annotated[bool, typer.Option("--no-lm", help="Retrieval and templates only.")] = False,
) -> None:
    """Run scripted dialogues through the real chatbot and check every expectation."""
    from chatbot.service import Chatbot
    from eval.scripts import ScriptError, collect_scripts, junit_xml, run_script

    try:
        scripts = collect_scripts(paths)
    except ScriptError as exc:
        raise fail(str(exc), 2) from None
    if not scripts:
        raise fail("no scripts found", 2)
    bot = Chatbot(get_settings(), use_lm=not no_lm)
    results = []
    for path in scripts:
        result = run_script(bot, path)
        results.append(result)
        mark = typer.style("PASS", fg=typer.colors.GREEN) if result.passed else typer.style("FAIL", fg=typer.colors.RED)
        typer.echo(f"{mark} {result.name} ({result.seconds:.1f} s)")
        if result.error:
            typer.echo(f"     error: {result.error}")
        for check in result.checks:
            if not check.passed:
                typer.echo(f"     turn {check.turn} {check.name}: {check.detail}")
    checks = [c for r in results for c in r.checks]
    passed = sum(c.passed for c in checks)
    failed_scripts = sum(not r.passed for r in results)
    typer.echo(f"{len(results) - failed_scripts}/{len(results)} scripts passed; "
               f"{passed}/{len(checks)} expectations met")
    if junit is not None:
        junit.parent.mkdir(parents=True, exist_ok=True)
        junit.write_text(junit_xml(results), encoding="utf-8")
    if failed_scripts:
        raise typer.Exit(1)


bench_app = typer.Typer(help="Benchmarks: figures for the closing notes.", no_args_is_help=True)


@bench_app.command("turn")
def bench_turn(
    catalog: Annotated[str | None, typer.Option(help="Catalog name (default from settings).")] = None,
    turns: Annotated[int, typer.Option(min=1, help="Scripted user turns to run.")] = 100,
    no_lm: Annotated[bool, typer.Option("--no-lm", help="Retrieval and templates only.")] = False,
    out: Annotated[Path | None, typer.Option(help="Write the JSON result here.")] = None,
) -> None:
    """End-to-end turn latency: p50/p95, time to first streamed token, split by stage."""
    from chatbot.service import Chatbot
    from eval.bench import bench_turns

    bot = Chatbot(get_settings(), use_lm=not no_lm)
    result = bench_turns(bot, catalog, turns)
    data = result.as_dict()
    typer.echo(json.dumps(data, indent=2))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


@bench_app.command("search")
def bench_search_cmd(
    catalog: Annotated[str | None, typer.Option(help="Catalog name (default from settings).")] = None,
    queries: Annotated[int, typer.Option(min=1, help="How many queries.")] = 200,
    k: Annotated[int, typer.Option("-k", min=1, help="Candidates per query.")] = 100,
) -> None:
    """Search latency p50/p95 of the candidate generator (query embedding + Chroma + fusion)."""
    from eval.bench import bench_search
    from retrieval.index import Library

    typer.echo(json.dumps(bench_search(Library(get_settings()), catalog, queries, k), indent=2))


@bench_app.command("api")
def bench_api_cmd(
    url: Annotated[str, typer.Option(help="Base URL of a running `recchat serve`.")] = "http://127.0.0.1:7860",
    conversations: Annotated[int, typer.Option(min=1)] = 20,
    turns: Annotated[int, typer.Option(min=1)] = 5,
    catalog: Annotated[str | None, typer.Option(help="Catalog name (server default if omitted).")] = None,
    api_key: Annotated[str | None, typer.Option(help="Bearer key, if the server has keys.")] = None,
) -> None:
    """Latency per message over HTTP for sequential scripted conversations."""
    from eval.bench import bench_api

    typer.echo(json.dumps(bench_api(url, conversations, turns, catalog, api_key), indent=2))


def register(app: typer.Typer) -> None:
    app.command("eval")(evaluate)
    app.command("eval-justify")(evaluate_justifications)
    app.command("eval-script")(evaluate_scripts)
    app.add_typer(bench_app, name="bench")
