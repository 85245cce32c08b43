"""``recchat index`` and ``recchat search``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from retrieval.settings import get_settings


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print a clear error to stderr and return the exit to raise."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def parse_pairs(values: list[str] | None, what: str) -> dict[str, list[str]]:
    """``["genre=comedy", "genre=drama"]`` -> ``{"genre": ["comedy", "drama"]}``."""
    out: dict[str, list[str]] = {}
    for value in values or []:
        name, sep, wanted = value.partition("=")
        if not sep or not name.strip() or not wanted.strip():
            raise fail(f"{what} takes FIELD=VALUE, got {value!r}", 2)
        out.setdefault(name.strip(), []).append(wanted.strip())
    return out


def parse_ranges(values: list[str] | None) -> dict[str, tuple[float | None, float | None]]:
    """``["year=1990:1999", "price=:300"]`` -> ``{"year": (1990, 1999), "price": (None, 300)}``."""
    out: dict[str, tuple[float | None, float | None]] = {}
    for value in values or []:
        name, sep, bounds = value.partition("=")
        low, colon, high = bounds.partition(":")
        try:
            if not sep or not colon:
                raise ValueError
            out[name.strip()] = (float(low) if low.strip() else None, float(high) if high.strip() else None)
        except ValueError:
            raise fail(f"--range takes FIELD=MIN:MAX (either may be empty), got {value!r}", 2) from None
    return out


def index(
    catalog: Annotated[Path, typer.Option("--catalog", help="Catalog file: JSONL, JSON array or CSV.")],
    name: Annotated[str | None, typer.Option(help="Catalog name (default: from the file name).")] = None,
    title_field: Annotated[str | None, typer.Option(help="Field holding the item title.")] = None,
    id_field: Annotated[str | None, typer.Option(help="Field holding the item id.")] = None,
    dialogs: Annotated[
        list[Path] | None, typer.Option(help="Training conversations to learn popularity/co-occurrence from.")
    ] = None,
    fit: Annotated[bool, typer.Option(help="With --dialogs: also fit fusion weights and the query projection.")] = True,
) -> None:
    """Embed a catalog into the vector store (incremental: unchanged items are not embedded again)."""
    from retrieval.catalog import CatalogError, load_catalog
    from retrieval.index import Library
    from retrieval.store import VectorStoreError

    try:
        loaded = load_catalog(catalog, name, title_field=title_field, id_field=id_field)
    except CatalogError as exc:
        raise fail(str(exc)) from None
    for problem in (loaded.report.problems if loaded.report else [])[:20]:
        typer.secho(f"skipped: {problem}", fg=typer.colors.YELLOW, err=True)
    if loaded.report and len(loaded.report.problems) > 20:
        typer.secho(f"... {len(loaded.report.problems) - 20} more problems", fg=typer.colors.YELLOW, err=True)
    priors = None
    if dialogs:
        from retrieval.dialogs import DialogError, read_dialogs
        from retrieval.priors import InteractionPriors

        all_dialogs = []
        try:
            for path in dialogs:
                all_dialogs += read_dialogs(path, loaded).dialogs
        except DialogError as exc:
            raise fail(str(exc)) from None
        priors = InteractionPriors.from_dialogs(all_dialogs, source=", ".join(str(p) for p in dialogs))
    library = Library(get_settings())
    try:
        stats = library.add(loaded, priors)
    except VectorStoreError as exc:
        raise fail(str(exc)) from None
    if priors is not None and fit:
        from retrieval.fusion import fit_retrieval

        typer.echo(f"fitting fusion weights and query projection on {priors.dialogs} conversations...", err=True)
        fitted = fit_retrieval(all_dialogs, loaded, library.store, library.embedder)
        fitted.store_in(priors)
        priors.save(library.priors_path(loaded.name))
        typer.echo(f"fusion weights: {priors.weights}")
        if fitted.report:
            typer.echo(f"held-out recall (linear vs learned fusion): {fitted.report}", err=True)
    typer.echo(
        f"catalog {stats.catalog!r}: {stats.items} items; embedded {stats.embedded}, unchanged "
        f"{stats.unchanged}, removed {stats.removed} in {stats.seconds:.1f} s"
    )


def search(
    text: Annotated[str, typer.Argument(help="What the user wants, in words.")],
    catalog: Annotated[str | None, typer.Option(help="Catalog name (default from settings).")] = None,
    k: Annotated[int, typer.Option("-k", min=1, max=1000, help="How many candidates.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    include: Annotated[list[str] | None, typer.Option(help="FIELD=VALUE that items must have.")] = None,
    exclude: Annotated[list[str] | None, typer.Option(help="FIELD=VALUE that items must not have.")] = None,
    range_: Annotated[list[str] | None, typer.Option("--range", help="FIELD=MIN:MAX numeric range.")] = None,
) -> None:
    """Print the candidates for a request, with their signals. Items named in the text count as liked;
    attribute values named in it (genres, people, brands) as a soft preference."""
    from retrieval.candidates import Constraints, Preferences
    from retrieval.catalog import CatalogError
    from retrieval.fusion import named_attributes
    from retrieval.index import Library

    if not text.strip():
        raise fail("the search text is empty", 2)
    constraints = Constraints(
        include=parse_pairs(include, "--include"), exclude=parse_pairs(exclude, "--exclude"),
        ranges=parse_ranges(range_),
    )
    library = Library(get_settings())
    try:
        generator = library.generator(catalog)
    except CatalogError as exc:
        raise fail(str(exc)) from None
    linker = library.linker(generator.catalog.name)
    liked = [m.item_id for m in linker.link_items(text)]
    prefs = Preferences(text=text, recent=text, liked=liked, constraints=constraints,
                        attributes=named_attributes(linker, [text]))
    results = generator.candidates(prefs, k)
    if as_json:
        json.dump([c.as_dict() for c in results], sys.stdout, indent=1)
        sys.stdout.write("\n")
        return
    from rich.console import Console
    from rich.table import Table

    if liked:
        typer.echo("named in the text: " + ", ".join(generator.catalog[i].title for i in liked))
    if prefs.attributes:
        typer.echo("attributes named: " + ", ".join(f"{k}={v}" for k, vs in prefs.attributes.items() for v in vs))
    table = Table("#", "id", "title", "score", "dense", "item", "cooc", "pop", "attr")
    for n, c in enumerate(results, 1):
        s = c.signals
        table.add_row(str(n), c.item_id, c.title, f"{c.score:.3f}", f"{s['dense']:.2f}",
                      f"{s['item_sim_max']:.2f}", f"{s['cooc'] + s['follow']:.2f}", f"{s['popularity']:.2f}",
                      f"{s['attr_match']:.0f}")
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.command()(index)
    app.command()(search)
