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
        rec = RetrievalRecommender(library.generator(cat.name), library.linker(cat.name))
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
    heldout_only: Annotated[bool, typer.Option(
        "--heldout-only", help="Only the dialogs `recchat train` holds out (compare a fine-tuned LM fairly).")] = False,
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
    if heldout_only:
        from chatbot.finetune import TrainConfig, heldout

        cases = [c for c in cases if heldout(c.dialog_id, TrainConfig().heldout_fraction)]
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


class VectorsName(StrEnum):
    auto = "auto"
    catalog = "catalog"
    synthetic = "synthetic"


def _write_json(out: Path, data: object) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    typer.echo(f"report written to {out}")


@bench_app.command("load")
def bench_load_cmd(
    url: Annotated[str, typer.Option(help="Base URL of a running `recchat serve`.")] = "http://127.0.0.1:7860",
    users: Annotated[str, typer.Option(help="Concurrent simulated users: M, or a sweep like 1,2,4,8,16.")] = "4",
    duration: Annotated[float, typer.Option(min=1.0, help="Seconds each level runs (in-flight turns finish).")] = 30.0,
    catalog: Annotated[str | None, typer.Option(help="Catalog of the sessions (server default if omitted).")] = None,
    api_key: Annotated[str | None, typer.Option(help="Bearer key, if the server has keys.")] = None,
    timeout: Annotated[float, typer.Option(min=1.0, help="Per-request timeout in seconds.")] = 120.0,
    threshold: Annotated[float, typer.Option(min=0.1, help="p95 turn latency (s) whose crossing is reported.")] = 5.0,
    wait_ready: Annotated[float, typer.Option(min=0.0, help="Seconds to wait for /readyz before failing.")] = 30.0,
    note: Annotated[list[str] | None, typer.Option(
        help="Free text recorded in the report, e.g. the server's settings (repeatable).")] = None,
    out: Annotated[Path | None, typer.Option(help="Write the JSON report here.")] = None,
) -> None:
    """Concurrent users replaying scripted conversations: throughput, turn p50/p95/p99, errors per level."""
    from eval.bench import BenchError, bench_load, format_load_table, parse_counts

    try:
        counts = parse_counts(users)
    except ValueError as exc:
        raise fail(f"--users: {exc}", 2) from None

    def progress(level: dict) -> None:
        lat = level["turn_latency_ms"]
        typer.echo(f"{level['users']} user(s): {level['ok_turns']} turns, p50 {lat['p50']} ms, p95 {lat['p95']} ms, "
                   f"{level['error_count']} errors", err=True)

    try:
        report = bench_load(url, counts, duration, catalog, api_key, timeout, threshold, wait_ready,
                            on_level=progress)
    except BenchError as exc:
        raise fail(str(exc)) from None
    report["notes"] = note or []
    typer.echo(f"{report['url']} catalog {report['catalog']!r}, {report['conversations_from']}, "
               f"{duration:g} s per level")
    typer.echo(format_load_table(report))
    if out is not None:
        _write_json(out, report)


@bench_app.command("retrieval")
def bench_retrieval_cmd(
    items: Annotated[str, typer.Option(help="Catalog size(s): 2000, 7k, 100k, 1M or a list 7k,100k.")],
    chroma_url: Annotated[str | None, typer.Option(help="A Chroma server (default: embedded, temp folder).")] = None,
    queries: Annotated[int, typer.Option(min=1, help="Timed queries per kind.")] = 200,
    k: Annotated[int, typer.Option("-k", min=1, help="Nearest neighbours per query.")] = 100,
    vectors: Annotated[VectorsName, typer.Option(
        help="catalog: the real catalog's vectors; synthetic; auto: real when the catalog is big enough.")]
        = VectorsName.auto,
    catalog: Annotated[str | None, typer.Option(help="Catalog of the real vectors (default from settings).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic vectors and the queries.")] = 0,
    time_limit: Annotated[float | None, typer.Option(
        min=1.0, help="Stop a build after this many seconds and report it as incomplete.")] = None,
    progress: Annotated[bool, typer.Option(help="Progress bar on stderr.")] = True,
    note: Annotated[list[str] | None, typer.Option(help="Free text recorded in the report (repeatable).")] = None,
    out: Annotated[Path | None, typer.Option(help="Write the JSON report here.")] = None,
) -> None:
    """Chroma index build time and k-NN query p50/p95 (plain and filtered) at a catalog size."""
    from eval.bench import bench_retrieval, format_retrieval_table, parse_counts
    from retrieval.catalog import CatalogError
    from retrieval.store import VectorStoreError

    try:
        sizes = parse_counts(items)
    except ValueError as exc:
        raise fail(f"--items: {exc}", 2) from None
    library = None
    if vectors is not VectorsName.synthetic:
        from retrieval.index import Library

        library = Library(get_settings())
    reports = []
    for size in sizes:
        try:
            reports.append(bench_retrieval(size, chroma_url, queries, k, vectors.value, catalog, seed, time_limit,
                                           progress, library=library))
        except (CatalogError, VectorStoreError) as exc:
            raise fail(str(exc)) from None
        if len(sizes) > 1:  # a long list: each size's line as soon as it is measured
            typer.echo(format_retrieval_table(reports[-1:]), err=True)
    typer.echo(format_retrieval_table(reports))
    if out is not None:
        for report in reports:
            report["notes"] = note or []
        _write_json(out, reports[0] if len(reports) == 1 else {"benchmark": "retrieval", "runs": reports})


def register(app: typer.Typer) -> None:
    app.command("eval")(evaluate)
    app.command("eval-justify")(evaluate_justifications)
    app.command("eval-script")(evaluate_scripts)
    app.add_typer(bench_app, name="bench")
