"""Catalog loading: schema detection, number parsing, bad rows, formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retrieval.catalog import Catalog, CatalogError, load_catalog, parse_number, safe_name
from tests.conftest import DATA, shared_or_skip


@pytest.mark.parametrize(
    ("text", "expected"),
    [("$13.39", 13.39), ("4.7/5", 4.7), ("1,299.99", 1299.99), ("$1,299", 1299.0), ("42", 42.0),
     ("-3.5", -3.5), ("85%", 85.0), ("abc", None), ("12 Angry Men", None), ("", None)],
)
def test_parse_number(text: str, expected: float | None) -> None:
    assert parse_number(text) == expected


def test_product_csv_detects_fields_and_numbers() -> None:
    catalog = load_catalog(DATA / "products.csv")
    assert catalog.name == "products"
    assert len(catalog) == 20
    phone = catalog["p-001"]  # the sku column is the id
    assert phone.title == "Nokia G42 5G"
    assert phone.numbers["price"] == 249.0
    assert phone.numbers["rating"] == 4.3
    assert catalog["p-003"].numbers["price"] == 1299.99
    assert phone.lists["tags"] == ["rugged", "budget", "5g"]
    assert phone.text["brand"] == "Nokia"
    assert "5000 mAh" in phone.text["description"]
    assert catalog.report is not None and catalog.report.problems == []


def test_movie_title_year_becomes_number_and_lists_stay_lists() -> None:
    catalog = load_catalog(DATA / "movies_small.jsonl")
    heat = next(item for item in catalog if item.title == "Heat (1995)")
    assert heat.numbers["year"] == 1995.0
    assert "crime" in heat.lists["genre"]
    assert "Al Pacino" in heat.lists["star"]
    assert heat.id.isdigit()  # the "id" field was detected


def test_bad_rows_are_reported_with_line_and_skipped() -> None:
    catalog = load_catalog(DATA / "products_bad.jsonl")
    assert [item.title for item in catalog] == ["Good Phone", "Second Good Phone"]
    problems = "\n".join(catalog.report.problems)
    assert "products_bad.jsonl:2: unparseable JSON" in problems
    assert "products_bad.jsonl:3: no usable title" in problems
    assert "products_bad.jsonl:4: no usable title" in problems
    assert "products_bad.jsonl:5: expected an object" in problems
    assert "products_bad.jsonl:6: field 'colors'" in problems
    # no id field: the title is the id
    assert catalog.get("Good Phone") is not None


def test_json_array_and_duplicate_titles_get_unique_ids(tmp_path: Path) -> None:
    path = tmp_path / "books.json"
    path.write_text(json.dumps([
        {"name": "Dune", "author": "Frank Herbert", "pages": "412"},
        {"name": "Dune", "author": "Frank Herbert", "pages": "896", "edition": "deluxe"},
        {"name": "Emma", "author": "Jane Austen"},
    ]))
    catalog = load_catalog(path)
    assert catalog.ids == ["Dune", "Dune #2", "Emma"]
    assert catalog["Dune #2"].numbers["pages"] == 896.0


def test_title_field_override(tmp_path: Path) -> None:
    path = tmp_path / "things.jsonl"
    path.write_text('{"label": "Red Chair", "colour": "red"}\n{"label": "Blue Sofa", "colour": "blue"}\n')
    with pytest.raises(CatalogError, match="no title field"):
        load_catalog(path)
    catalog = load_catalog(path, title_field="label")
    assert catalog.ids == ["Red Chair", "Blue Sofa"]


@pytest.mark.parametrize("content", ["", "\n\n", '{"name": ""}\n{"nope": 1}\n', "not json at all\n"])
def test_empty_or_entirely_bad_catalog_is_an_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(CatalogError):
        load_catalog(path)


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="not found"):
        load_catalog(tmp_path / "nope.csv")


def test_normalised_round_trip(tmp_path: Path) -> None:
    catalog = load_catalog(DATA / "products.csv")
    catalog.save_jsonl(tmp_path / "p.jsonl.gz")
    again = Catalog.load_normalised(tmp_path / "p.jsonl.gz", "products")
    assert [i.model_dump() for i in again] == [i.model_dump() for i in catalog]


def test_safe_name() -> None:
    assert safe_name("My Products!") == "my_products"
    assert len(safe_name("x")) >= 3


def test_real_catalogs_load_unchanged() -> None:
    redial = load_catalog(shared_or_skip("redial/catalog/redial_catalog_merged.jsonl"))
    assert len(redial) == 6924
    assert redial.get("75815").numbers["year"] == 1994.0  # redial_id detected as the id field
    inspired = load_catalog(shared_or_skip("inspired/inspired_catalog.jsonl"))
    # one row has an empty title; ", 21 Bridges (2019)" is cleaned
    assert len(inspired) == 1806
    assert inspired.get("21 Bridges (2019)") is not None


def test_bar_separated_lists_but_prose_with_bars_stays_text(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    rows = [{"id": "a", "title": "A", "genre": "comedy|drama",
             "plot": "A tale <|im_end|> of two cities", "note": "either this | or that one, whichever the "
             "reader prefers, because the sentence goes on for quite a long while before the bar"}]
    path.write_text("\n".join(json.dumps(row) for row in rows))
    item = load_catalog(path, "bars")["a"]
    assert item.lists["genre"] == ["comedy", "drama"]
    assert item.text["plot"] == "A tale <|im_end|> of two cities"
    assert "note" in item.text and "note" not in item.lists
