"""Property tests of `load_catalog` on generated files: a usable `Catalog` or a `CatalogError`, nothing else.

Whatever the content (random bytes, random JSON values, odd encodings and byte-order marks, missing or duplicate
ids, huge fields, numbers as strings, deep nesting, empty files), loading either returns a catalog whose items
all have non-empty, unique ids and non-empty titles, only finite numbers, and that survives the normalised
round trip the index relies on (`Catalog.save_jsonl` then `Catalog.load_normalised`); or it raises
`CatalogError` with a message that names the file. Any other exception is a bug.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retrieval.catalog import Catalog, CatalogError, load_catalog

FUZZ = settings(max_examples=200, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
SUFFIXES = [".jsonl", ".json", ".csv", ".tsv", ".jsonl.gz", ".csv.gz", ""]
FIELD_NAMES = ["id", "ID", "item_id", "sku", "title", "Title", "name", "price", "genre", "tags", "year",
               "description", "x_id", "", " ", "title ", "Id", "rating", "\ufeffid"]
NUMBER_LIKE = ["$1,299.99", "4.7/5", "85%", "(1994)", "1,2,3", "-0", "1e999", "NaN", "Infinity", "0x10",
               "$", "€ 12", "12 Angry Men", "9" * 400, "1" * 5000, "-" * 3, "१२३"]


def scalar() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(), st.booleans(), st.integers(), st.integers(min_value=10**300, max_value=10**320),
        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30), st.sampled_from(NUMBER_LIKE),
    )


json_values = st.recursive(scalar(), lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=8), children,
                                                    max_size=5)), max_leaves=20)
rows = st.lists(st.dictionaries(st.sampled_from(FIELD_NAMES), json_values, max_size=7), max_size=12)


def check_outcome(path: Path, **kwargs: Any) -> None:
    """The property: a usable catalog or a clear `CatalogError`."""
    try:
        catalog = load_catalog(path, "fuzzed", **kwargs)
    except CatalogError as exc:
        message = str(exc)
        assert message.strip() and str(path) in message, message
        return
    assert len(catalog) > 0
    ids = [item.id for item in catalog]
    assert len(set(ids)) == len(ids), "duplicate ids"
    for item in catalog:
        assert item.id.strip() and item.title.strip(), item
        assert all(math.isfinite(value) for value in item.numbers.values()), item.numbers
        assert all(key.strip() for key in [*item.text, *item.lists, *item.numbers]), "empty field name"
        assert catalog.get(item.id) is item
        item.document()
        for key, value in item.metadata().items():  # what Chroma accepts, or it refuses the whole batch
            assert key and key[0] not in "#$" and key != "chroma:document", key
            assert isinstance(value, str | float) or (value and all(isinstance(v, str) for v in value)), value
    # The index stores the normalised catalog and reads it back: that must work for whatever loaded.
    saved = path.with_name("normalised.jsonl.gz")
    catalog.save_jsonl(saved)
    again = Catalog.load_normalised(saved, "fuzzed")
    assert [i.model_dump() for i in again] == [i.model_dump() for i in catalog]


def write(tmp_path: Path, suffix: str, data: bytes) -> Path:
    path = tmp_path / f"catalog{suffix}"
    path.write_bytes(gzip.compress(data, mtime=0) if suffix.endswith(".gz") else data)
    return path


def encode(text: str, encoding: str) -> bytes:
    if encoding == "utf-8-sig":
        return b"\xef\xbb\xbf" + text.encode("utf-8", "surrogatepass")
    return text.encode(encoding, errors="replace" if encoding != "utf-8" else "surrogatepass")


ENCODINGS = st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1", "cp1252"])


@FUZZ
@given(data=st.binary(max_size=2000), suffix=st.sampled_from(SUFFIXES), raw_gz=st.booleans())
def test_random_bytes(tmp_path_factory: pytest.TempPathFactory, data: bytes, suffix: str, raw_gz: bool) -> None:
    """Arbitrary bytes under every file name (``raw_gz``: a .gz name on bytes that are not gzip)."""
    path = tmp_path_factory.mktemp("bytes") / f"catalog{suffix}"
    path.write_bytes(gzip.compress(data, mtime=0) if suffix.endswith(".gz") and not raw_gz else data)
    check_outcome(path)


@FUZZ
@given(records=rows, layout=st.sampled_from(["array", "jsonl", "dict", "wrapped", "scalar"]),
       encoding=ENCODINGS, suffix=st.sampled_from([".json", ".jsonl", ".json.gz", ""]), ascii_only=st.booleans(),
       title_field=st.none() | st.sampled_from(FIELD_NAMES), id_field=st.none() | st.sampled_from(FIELD_NAMES))
def test_random_json_values(tmp_path_factory: pytest.TempPathFactory, records: list[dict[str, Any]], layout: str,
                            encoding: str, suffix: str, ascii_only: bool, title_field: str | None,
                            id_field: str | None) -> None:
    """JSON arrays, JSON lines, ``{id: record}`` and ``{"items": [...]}`` of random nested values, with non-ASCII
    characters escaped or raw (then U+2028 and friends appear inside JSON strings)."""

    def dumps(value: Any) -> str:  # noqa: ANN401 - any JSON value
        return json.dumps(value, ensure_ascii=ascii_only)

    if layout == "array":
        text = dumps(records)
    elif layout == "jsonl":
        text = "".join(dumps(record) + "\n" for record in records)
    elif layout == "dict":
        text = dumps({str(n): record for n, record in enumerate(records)})
    elif layout == "wrapped":
        text = dumps({"items": records, "count": len(records)})
    else:
        text = dumps(records[0] if records else None)
    path = write(tmp_path_factory.mktemp("json"), suffix, encode(text, encoding))
    check_outcome(path, title_field=title_field, id_field=id_field)


cells = st.one_of(st.text(max_size=20), st.sampled_from(NUMBER_LIKE), st.just(""),
                  st.text(alphabet=',"\n\r\t|[]\\', max_size=6), st.just('["a", "b"]'), st.just("[1, [2]]"),
                  st.just("[" * 3000 + "]" * 3000))


@FUZZ
@given(header=st.lists(st.sampled_from(FIELD_NAMES) | st.text(string.printable, max_size=6), max_size=6),
       body=st.lists(st.lists(cells, max_size=7), max_size=10), delimiter=st.sampled_from([",", "\t"]),
       encoding=ENCODINGS, suffix=st.sampled_from([".csv", ".tsv", ".csv.gz"]), huge=st.booleans())
def test_random_csv(tmp_path_factory: pytest.TempPathFactory, header: list[str], body: list[list[str]],
                    delimiter: str, encoding: str, suffix: str, huge: bool) -> None:
    """CSV/TSV with odd headers (duplicate, empty), ragged rows, quotes, newlines and (``huge``) a 200 KB cell."""
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter)
    writer.writerow(header)
    for row in body:
        writer.writerow(row)
    if huge:
        writer.writerow(["x" * 200_000 for _ in header or [""]])
    path = write(tmp_path_factory.mktemp("csv"), suffix, encode(out.getvalue(), encoding))
    check_outcome(path)


@FUZZ
@given(ids=st.lists(st.one_of(st.none(), st.just(""), st.just(" "), st.integers(-3, 3), st.booleans(),
                              st.sampled_from(["a", "a", "b", "A"]), st.floats(allow_nan=True)), min_size=1,
                    max_size=8),
       titles=st.lists(st.one_of(st.none(), st.just(""), st.just(" , "), st.text(max_size=8), st.integers(),
                                 st.floats(allow_nan=True, allow_infinity=True)), min_size=1, max_size=8),
       prices=st.lists(st.sampled_from(NUMBER_LIKE), min_size=1, max_size=8))
def test_missing_and_duplicate_ids(tmp_path_factory: pytest.TempPathFactory, ids: list[Any], titles: list[Any],
                                   prices: list[str]) -> None:
    """Ids that are missing, blank, duplicated or of odd types; titles likewise; numbers as strings."""
    records = [{"id": i, "title": t, "price": p} for i, t, p in zip(ids, titles, prices, strict=False)]
    path = write(tmp_path_factory.mktemp("ids"), ".jsonl", "".join(json.dumps(r) + "\n" for r in records).encode())
    check_outcome(path)


@pytest.mark.parametrize(
    ("suffix", "content"),
    [(".jsonl", b""), (".json", b""), (".csv", b""), (".tsv", b""), (".json", b"   \n"), (".jsonl.gz", b""),
     (".json", b"[" * 100_000), (".jsonl", b'{"title": ' + b"[" * 100_000 + b"}\n"),
     (".json", b'[{"title": "a", "n": ' + b"9" * 5000 + b"}]"),
     (".jsonl", b'{"title": "a", "n": 1' + b"0" * 320 + b"}"), (".jsonl", b'{"title": "\\u2028\\u00a0", "id": 1}\n'),
     (".jsonl.gz", b"\x1f\x8b\x08\x00truncated"), (".csv", b"\xef\xbb\xbftitle\n" + b"\x00" * 10),
     (".json", b'{"a": [{"title": "x"}], "b": [{"title": "y"}]}'), (".json", b'"just a string"'),
     (".csv", b"title,price\nA,$1,299.99\n"), (".csv", b'title,price\nA,"$1,299.99"\n')],
)
def test_edge_cases(tmp_path: Path, suffix: str, content: bytes) -> None:
    """Empty files, deep nesting, huge integers, NUL bytes, ambiguous JSON objects, unquoted thousands."""
    path = tmp_path / f"catalog{suffix}"
    path.write_bytes(content)
    check_outcome(path)


def test_numbers_as_strings_are_numbers(tmp_path: Path) -> None:
    """The fuzzed property is not vacuous: a quoted "$1,299.99" is still a number, a non-finite one is not."""
    path = tmp_path / "c.csv"
    cheap = "".join(f"{n},T{n},$5\n" for n in range(2, 12))  # enough numbers that the column is numeric
    path.write_text(f'id,title,price\n1,A,"$1,299.99"\n{cheap}99,Z,{"9" * 400}\n')
    catalog = load_catalog(path)
    assert catalog["1"].numbers["price"] == 1299.99 and catalog["2"].numbers == {"price": 5.0}
    assert catalog["99"].numbers == {}  # 400 nines overflow to infinity: not a number
    assert "is not a number" in "\n".join(catalog.report.problems)  # type: ignore[union-attr]
    path = tmp_path / "c.jsonl"
    path.write_text('{"title": "A", "weight": 1e999, "size": NaN, "n": 2}\n')
    catalog = load_catalog(path)
    assert catalog["A"].numbers == {"n": 2.0}
    assert "not a finite number" in "\n".join(catalog.report.problems)  # type: ignore[union-attr]


def test_unicode_line_separators_inside_json_lines(tmp_path: Path) -> None:
    """U+2028 and U+0085 are legal unescaped inside JSON strings: they do not end a JSON line."""
    path = tmp_path / "c.jsonl"
    path.write_text('{"title": "Line\u2028Separated", "note": "a\u0085b"}\n{"title": "Second"}\n', encoding="utf-8")
    catalog = load_catalog(path)
    assert catalog.ids == ["Line Separated", "Second"] and catalog.report.problems == []  # type: ignore[union-attr]


def test_utf16_tab_separated_text_loads(tmp_path: Path) -> None:
    """Excel's "Unicode text" export: UTF-16 with a byte-order mark, tab-separated."""
    path = tmp_path / "export.tsv"
    path.write_bytes("sku\ttitle\tprice\nk-1\tCaf\u00e9 Table\t$120\n".encode("utf-16"))
    assert load_catalog(path)["k-1"].title == "Caf\u00e9 Table"
