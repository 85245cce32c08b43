"""Indexing into real Chroma with the real embedding model: incremental updates, several catalogs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retrieval.catalog import Catalog, CatalogError, load_catalog
from retrieval.index import Library
from tests.conftest import DATA


def test_incremental_reindex(library: Library, tmp_path: Path) -> None:
    rows = [json.loads(line) for line in (DATA / "movies_small.jsonl").read_text().splitlines()]
    path = tmp_path / "films.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:10]))
    first = library.add(load_catalog(path), progress=False)
    assert (first.embedded, first.unchanged, first.removed) == (10, 0, 0)

    again = library.add(load_catalog(path), progress=False)
    assert (again.embedded, again.unchanged, again.removed) == (0, 10, 0)

    rows[0]["plot"] = "A changed plot."
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:9]) + json.dumps(rows[20]) + "\n")
    changed = library.add(load_catalog(path), progress=False)
    # item 0 changed, item 9 removed, item 20 added
    assert (changed.embedded, changed.unchanged, changed.removed) == (2, 8, 1)
    assert library.store.count("films") == 10
    assert rows[9]["id"] not in library.store.hashes("films")


def test_catalogs_coexist_and_reload(library: Library, movies_small, products, settings, embedder) -> None:  # noqa: ANN001
    assert library.store.count("movies_small") == 49
    assert library.store.count("products") == 20
    fresh = Library(settings, embedder=embedder, log=lambda m: None)
    assert {"movies_small", "products", "movies"} <= set(fresh.names())
    assert len(fresh.catalog("products")) == 20


def test_metadata_is_filterable(library: Library, products) -> None:  # noqa: ANN001
    vector = library.embedder.encode_one("phone")
    cheap = library.store.query("products", vector, 20, {"price": {"$lte": 300}})
    assert cheap and all(products[i].numbers["price"] <= 300 for i, _ in cheap)
    rugged = library.store.query("products", vector, 20, {"tags": {"$contains": "rugged"}})
    assert {i for i, _ in rugged} == {"p-001", "p-005", "p-018"}


def test_unknown_catalog_is_a_clear_error(library: Library) -> None:
    with pytest.raises(CatalogError, match="unknown catalog 'nope'"):
        library.catalog("nope")


def test_bundled_catalog_indexes_on_first_use(settings, embedder, tmp_path: Path) -> None:  # noqa: ANN001
    """The bundled-catalog path, with a small catalog standing in for the 6,924-movie one."""
    bundled = tmp_path / "bundled"
    load_catalog(DATA / "movies_small.jsonl", "demo").save_jsonl(bundled / "demo.jsonl.gz")
    messages: list[str] = []
    library = Library(settings, embedder=embedder, log=messages.append, bundled_dir=bundled)
    catalog = library.catalog("demo")
    assert len(catalog) == 49
    assert any("First use" in m for m in messages)
    assert library.store.count("demo") == 49
    messages.clear()
    again = Library(settings, embedder=embedder, log=messages.append, bundled_dir=bundled)
    assert len(again.catalog("demo")) == 49 and messages == []  # no second indexing


def test_a_new_release_of_a_bundled_catalog_replaces_the_indexed_copy(settings, embedder, tmp_path: Path) -> None:  # noqa: ANN001
    """Upgrading the package updates the demo catalog's index, re-embedding only what changed; a catalog the user
    indexed under its name is kept."""
    bundled = tmp_path / "bundled"
    first = load_catalog(DATA / "movies_small.jsonl", "demo")
    first.save_jsonl(bundled / "demo.jsonl.gz")

    def open_demo() -> tuple[Catalog, list[str]]:
        messages: list[str] = []
        library = Library(settings, embedder=embedder, log=messages.append, bundled_dir=bundled)
        return library.catalog("demo"), messages

    open_demo()
    # The next release adds a genre to one film.
    items = list(first)
    genres = [*items[0].lists.get("genre", []), "family"]
    changed = items[0].model_copy(update={"lists": {**items[0].lists, "genre": genres}})
    Catalog("demo", [changed, *items[1:]]).save_jsonl(bundled / "demo.jsonl.gz")
    upgraded, messages = open_demo()
    assert "family" in upgraded[changed.id].lists["genre"]
    assert any("has changed" in m for m in messages) and any("(1 embedded)" in m for m in messages)
    store = Library(settings, embedder=embedder, log=lambda m: None, bundled_dir=bundled).store
    assert store.count("demo") == 49
    assert open_demo()[1] == []  # up to date: nothing indexed again

    # A data dir indexed before installs left a marker: the same ids and no priors of its own make it the
    # bundled copy; an unchanged one is recognised without indexing.
    marker = settings.data_dir / "catalogs" / "demo.origin"
    marker.unlink()
    assert open_demo()[1] == [] and marker.is_file()
    marker.unlink()
    Catalog("demo", items).save_jsonl(bundled / "demo.jsonl.gz")
    legacy, messages = open_demo()
    assert "family" not in legacy[changed.id].lists.get("genre", []) and any("has changed" in m for m in messages)

    # The user indexes their own catalog under the bundled name: a later release does not overwrite it,
    # whether it has other items or the same ones edited.
    Library(settings, embedder=embedder, log=lambda m: None, bundled_dir=bundled).add(
        Catalog("demo", items[:10]), progress=False)
    Catalog("demo", [changed, *items[1:]]).save_jsonl(bundled / "demo.jsonl.gz")
    kept, messages = open_demo()
    assert len(kept) == 10 and messages == []
    edited = [item.model_copy(update={"title": item.title + " (edited)"}) for item in items]
    Library(settings, embedder=embedder, log=lambda m: None, bundled_dir=bundled).add(
        Catalog("demo", edited), progress=False)
    kept, messages = open_demo()
    assert all(item.title.endswith("(edited)") for item in kept) and messages == []
    assert open_demo()[1] == []  # and after another restart


def test_an_interrupted_bundled_install_resumes(settings, embedder, tmp_path: Path,  # noqa: ANN001
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A process killed while a new release is being indexed leaves its install pending: the next start finishes it,
    even when the release added or removed items."""
    bundled = tmp_path / "bundled"
    items = list(load_catalog(DATA / "movies_small.jsonl", "demo"))
    Catalog("demo", items[:-1]).save_jsonl(bundled / "demo.jsonl.gz")
    Library(settings, embedder=embedder, log=lambda m: None, bundled_dir=bundled).catalog("demo")
    Catalog("demo", items[1:]).save_jsonl(bundled / "demo.jsonl.gz")  # one item gone, one new

    def killed(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise KeyboardInterrupt  # stands in for the kill, after the install began

    monkeypatch.setattr("retrieval.index.index_catalog", killed)
    with pytest.raises(KeyboardInterrupt):
        Library(settings, embedder=embedder, log=lambda m: None, bundled_dir=bundled).catalog("demo")
    monkeypatch.undo()
    messages: list[str] = []
    resumed = Library(settings, embedder=embedder, log=messages.append, bundled_dir=bundled).catalog("demo")
    assert set(resumed.ids) == {i.id for i in items[1:]} and any("has changed" in m for m in messages)
    library = Library(settings, embedder=embedder, log=messages.append, bundled_dir=bundled)
    assert library.store.count("demo") == len(items) - 1
