"""Catalogs: any JSONL, JSON-array or CSV file of items, normalised into `Item`s.

Field detection is schema-free so that movie, product or any other catalog loads unchanged:
an id field if there is one, a title field (``title``/``name``), every other string field is text,
lists stay lists, and numbers that arrive as strings ("$13.39", "4.7/5", "(1994)" in a title)
become numbers so that filters can use them.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import math
import os
import re
import threading
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

TITLE_FIELDS = ("title", "name", "product_name", "item_name")
ID_FIELDS = ("id", "item_id", "itemid", "product_id", "sku", "asin")
# A string that is a number with an optional currency sign, thousands separators and "/5"-style scale.
_NUMBER_RE = re.compile(r"^\s*(?P<cur>[$€£¥])?\s*(?P<num>-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?)\s*"
                        r"(?:/\s*\d+(?:\.\d+)?)?\s*(?P<unit>%|usd|eur|gbp|stars?)?\s*$", re.IGNORECASE)
_YEAR_IN_TITLE_RE = re.compile(r"\((?P<year>1[89]\d\d|20\d\d)\)\s*$")
# Text is truncated for embedding: MiniLM sees at most 256 word pieces anyway.
MAX_TEXT_CHARS = 1000
MAX_SHORT_STRING = 60  # string fields up to this long are also usable as filter attributes
# What a file's reading may raise besides UnicodeDecodeError: I/O and gzip trouble (BadGzipFile is an OSError,
# a truncated stream an EOFError, corrupt data a zlib.error).
_READ_ERRORS = (OSError, EOFError, zlib.error)
# Metadata keys Chroma refuses, rejecting the whole batch: empty, starting with "#" or "$" (its query
# operators and keys such as "#document"), and "chroma:document".
_RESERVED_METADATA = re.compile(r"^(?:[#$]|chroma:document$|$)")


class CatalogError(ValueError):
    """The catalog cannot be used at all (missing, empty, or every row bad)."""


class Item(BaseModel):
    """One catalog item. ``text`` holds free-text fields, ``lists`` list fields, ``numbers`` numeric ones."""

    id: str
    title: str
    text: dict[str, str] = Field(default_factory=dict)
    lists: dict[str, list[str]] = Field(default_factory=dict)
    numbers: dict[str, float] = Field(default_factory=dict)

    def document(self, max_chars: int = MAX_TEXT_CHARS) -> str:
        """The text that represents this item for embedding: title, then lists, then free text."""
        parts = [self.title]
        for name, values in self.lists.items():
            if values:
                parts.append(f"{name}: {', '.join(values[:8])}")
        for name, value in self.text.items():
            parts.append(f"{name}: {value}")
        return ". ".join(parts)[:max_chars]

    def content_hash(self) -> str:
        """Stable hash of everything that goes into the index, for incremental re-indexing."""
        return hashlib.sha1(self.model_dump_json().encode()).hexdigest()[:16]

    def metadata(self) -> dict[str, Any]:
        """Chroma metadata: numbers, short strings and non-empty lists (lower-cased for filtering).

        Fields whose names Chroma reserves (``#...``, ``$...``, ``chroma:document``) are left out: Chroma would
        refuse the whole batch.
        """
        meta: dict[str, Any] = {}
        for name, number in self.numbers.items():
            meta[name] = number
        for name, value in self.text.items():
            if len(value) <= MAX_SHORT_STRING:
                meta[name] = value.lower()
        for name, values in self.lists.items():
            cleaned = [v.lower() for v in values if v]
            if cleaned:
                meta[name] = cleaned
        meta["title"] = self.title  # last: a field that happens to be called "title" does not replace it
        return {name: value for name, value in meta.items() if not _RESERVED_METADATA.match(name)}

    def attribute_values(self) -> Iterator[tuple[str, str]]:
        """(field, value) pairs a user may name: list members and short strings."""
        for name, values in self.lists.items():
            for value in values:
                yield name, value
        for name, value in self.text.items():
            if len(value) <= MAX_SHORT_STRING:
                yield name, value

    def display(self) -> dict[str, Any]:
        """Fields for showing the item to a person."""
        out: dict[str, Any] = {"id": self.id, "title": self.title}
        for fields in (self.numbers, self.lists, self.text):
            for name, value in fields.items():
                out.setdefault(name, value)  # a field called "id" or "title" does not hide the real ones
        return out


@dataclass
class LoadReport:
    """What loading skipped or changed, with file and line, so nothing is dropped silently."""

    path: str
    rows: int = 0
    problems: list[str] = field(default_factory=list)

    def add(self, line: int, message: str) -> None:
        self.problems.append(f"{self.path}:{line}: {message}")


class Catalog:
    """An ordered collection of `Item`s with lookup by id."""

    def __init__(self, name: str, items: Iterable[Item], report: LoadReport | None = None) -> None:
        self.name = name
        self.items: list[Item] = list(items)
        self.report = report
        self._by_id = {item.id: item for item in self.items}
        self._index = {item.id: i for i, item in enumerate(self.items)}

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._by_id

    def get(self, item_id: str) -> Item | None:
        """The item with this id, or None."""
        return self._by_id.get(item_id)

    def __getitem__(self, item_id: str) -> Item:
        return self._by_id[item_id]

    def position(self, item_id: str) -> int:
        """Row index of an item (stable order of the catalog)."""
        return self._index[item_id]

    @property
    def ids(self) -> list[str]:
        return [item.id for item in self.items]

    def save_jsonl(self, path: Path) -> None:
        """Write the normalised catalog (one `Item` per line, gzip when the name ends in .gz)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")  # writers never share one
        text = "".join(item.model_dump_json() + "\n" for item in self.items).encode("utf-8")
        # mtime=0: the same catalog gives the same bytes (the bundled file is in git).
        tmp.write_bytes(gzip.compress(text, mtime=0) if path.suffix == ".gz" else text)
        tmp.replace(path)

    @classmethod
    def load_normalised(cls, path: Path, name: str) -> Catalog:
        """Read a catalog written by `save_jsonl` (already normalised, no detection)."""
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as fh:
            items = [Item.model_validate_json(line) for line in fh if line.strip()]
        return cls(name, items)


def parse_number(value: str) -> float | None:
    """'$13.39' -> 13.39, '4.7/5' -> 4.7, '1,299' -> 1299.0; anything else -> None."""
    match = _NUMBER_RE.match(value)
    if not match:
        return None
    number = float(match.group("num").replace(",", ""))
    return number if math.isfinite(number) else None  # 400 nines are "inf": not a number filters can use


def _finite(value: int | float) -> float | None:
    """``value`` as a finite float, or None (NaN, infinities and integers beyond float range)."""
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _short(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: problem reports quote values, which may be huge."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _encoding(path: Path) -> str:
    """UTF-16 when the file starts with its byte-order mark (Excel's "Unicode text"), else UTF-8 (BOM or not)."""
    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as fh:
        head = fh.read(2)
    return "utf-16" if head in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"


def _open_text(path: Path) -> io.TextIOBase:
    encoding = _encoding(path)
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding=encoding)
    return open(path, encoding=encoding)  # noqa: SIM115 - closed by caller


def _parse_json(text: str) -> Any:  # noqa: ANN401 - any JSON value
    """`json.loads` whose failures are all `ValueError`: deep nesting (RecursionError) and integers of more
    than 4,300 digits (a plain ValueError) included."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _raw_rows(path: Path, report: LoadReport) -> Iterator[tuple[int, Any]]:
    """(line number, parsed row) pairs; unparseable rows are reported and skipped."""
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    kind = suffixes[-1] if suffixes else ""
    with _open_text(path) as fh:
        if kind == ".csv" or kind == ".tsv":
            reader = csv.DictReader(fh, delimiter="\t" if kind == ".tsv" else ",")
            try:
                for row in reader:
                    if None in row:  # more cells than header columns
                        report.add(reader.line_num, "more values than header columns")
                        continue
                    yield reader.line_num, {k.strip(): v for k, v in row.items() if k}
            except csv.Error as exc:
                report.add(reader.line_num, f"unreadable CSV: {exc}")
            return
        text = fh.read()
    stripped = text.lstrip()
    if kind == ".json" or (stripped.startswith("[") and kind != ".jsonl"):
        try:
            data = _parse_json(text)
        except ValueError as exc:
            raise CatalogError(f"{path}: not valid JSON ({_first_line(exc)})") from None
        if isinstance(data, dict):
            # {"items": [...]} or {id: record}
            lists = [v for v in data.values() if isinstance(v, list)]
            if len(lists) == 1:
                data = lists[0]
            else:
                data = [{"id": k, **v} if isinstance(v, dict) else v for k, v in data.items()]
        if not isinstance(data, list):
            raise CatalogError(f"{path}: a JSON catalog must be an array of objects")
        for i, row in enumerate(data, start=1):
            yield i, row
        return
    # JSON lines end at "\n" only: splitlines() would also split at U+2028, U+0085 and the like, which JSON
    # allows unescaped inside strings.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, _parse_json(line)
        except json.JSONDecodeError as exc:
            report.add(lineno, f"unparseable JSON line ({exc.msg})")
        except ValueError as exc:
            report.add(lineno, f"unparseable JSON line ({_first_line(exc)})")


def _first_line(exc: BaseException, limit: int = 200) -> str:
    return str(exc).split("\n", 1)[0][:limit]


def _pick_field(keys: Iterable[str], preferred: tuple[str, ...]) -> str | None:
    lowered = {k.lower(): k for k in keys}
    for name in preferred:
        if name in lowered:
            return lowered[name]
    return None


def _detect_id_field(rows: list[tuple[int, dict[str, Any]]], title_field: str) -> str | None:
    keys: dict[str, None] = {}
    for _, row in rows[:200]:
        keys.update(dict.fromkeys(row))
    exact = _pick_field(keys, ID_FIELDS)
    candidates = [exact] if exact else []
    candidates += [k for k in keys if k != title_field and re.search(r"(^|_)id$|Id$", k) and k not in candidates]
    for name in candidates:
        values = [row.get(name) for _, row in rows]
        present = [v for v in values if v not in (None, "")]
        if len(present) == len(values) and len({str(v) for v in present}) == len(present):
            return name
    return None


def _as_strings(value: list[Any]) -> list[str] | None:
    if all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in value):
        return [str(v).strip() for v in value if str(v).strip()]
    return None


def _maybe_list(value: str) -> list[str] | None:
    """CSV cells such as 'comedy|drama' or '["a", "b"]' hold lists."""
    value = value.strip()
    if value.startswith("[") and value.endswith("]"):
        try:
            parsed = _parse_json(value)
        except ValueError:
            return None
        return _as_strings(parsed) if isinstance(parsed, list) else None
    if "|" in value and len(value) < 300 and "<|" not in value and "|>" not in value:
        # Only short parts make a list ('comedy|drama'); prose that merely contains a bar stays text.
        parts = [v.strip() for v in value.split("|") if v.strip()]
        if len(parts) >= 2 and all(len(part) <= 60 for part in parts):
            return parts
    return None


def _numeric_fields(rows: list[tuple[int, dict[str, Any]]], skip: set[str]) -> set[str]:
    """String fields whose non-empty values are (almost) all numbers-as-strings."""
    seen: dict[str, list[int]] = {}
    for _, row in rows:
        for key, value in row.items():
            if key in skip or not isinstance(value, str) or not value.strip():
                continue
            counts = seen.setdefault(key, [0, 0])
            counts[0] += 1
            counts[1] += parse_number(value) is not None
    return {k for k, (n, ok) in seen.items() if n and ok / n >= 0.9}


def load_catalog(
    path: str | Path,
    name: str | None = None,
    *,
    title_field: str | None = None,
    id_field: str | None = None,
) -> Catalog:
    """Load a catalog file and normalise it; bad rows are reported in ``catalog.report`` and skipped.

    Raises `CatalogError` when the file is missing, unreadable, or has no usable row.

    >>> load_catalog("products.csv").get("p-1").numbers["price"]  # doctest: +SKIP
    13.39
    """
    path = Path(path)
    if not path.is_file():
        raise CatalogError(f"catalog file not found: {path}")
    name = name or catalog_name_from_path(path)
    report = LoadReport(str(path))
    rows: list[tuple[int, dict[str, Any]]] = []
    try:
        for lineno, row in _raw_rows(path, report):
            if not isinstance(row, dict):
                report.add(lineno, f"expected an object, got {type(row).__name__}")
                continue
            rows.append((lineno, row))
    except UnicodeDecodeError as exc:
        raise CatalogError(f"{path}: not UTF-8 text ({exc})") from None
    except _READ_ERRORS as exc:
        raise CatalogError(f"{path}: cannot read the file ({type(exc).__name__}: {_first_line(exc)})") from None
    report.rows = len(rows)
    if not rows:
        raise CatalogError(f"{path}: no catalog rows found" + _problem_tail(report))

    keys: dict[str, None] = {}
    for _, row in rows[:200]:
        keys.update(dict.fromkeys(row))
    if title_field is None:
        title_field = _pick_field(keys, TITLE_FIELDS)
        if title_field is None:
            raise CatalogError(f"{path}: no title field (looked for {', '.join(TITLE_FIELDS)}); "
                               "name one with --title-field")
    if id_field is None:
        id_field = _detect_id_field(rows, title_field)
    numeric = _numeric_fields(rows, {title_field, id_field or ""})

    items: list[Item] = []
    used_ids: set[str] = set()
    for lineno, row in rows:
        item = _make_item(row, lineno, title_field, id_field, numeric, report)
        if item is None:
            continue
        if item.id in used_ids:
            if id_field is not None:
                report.add(lineno, f"duplicate id {item.id!r}; skipped")
                continue
            base, n = item.id, 2
            while f"{base} #{n}" in used_ids:
                n += 1
            item.id = f"{base} #{n}"
        used_ids.add(item.id)
        items.append(item)
    if not items:
        raise CatalogError(f"{path}: every row was bad" + _problem_tail(report))
    return Catalog(name, items, report)


def _problem_tail(report: LoadReport) -> str:
    if not report.problems:
        return ""
    shown = "\n  ".join(report.problems[:5])
    more = f"\n  ... and {len(report.problems) - 5} more" if len(report.problems) > 5 else ""
    return f":\n  {shown}{more}"


def _make_item(
    row: dict[str, Any],
    lineno: int,
    title_field: str,
    id_field: str | None,
    numeric: set[str],
    report: LoadReport,
) -> Item | None:
    title = row.get(title_field)
    if isinstance(title, int | float) and not isinstance(title, bool) and _finite(title) is not None:
        title = str(title)
    # Whitespace is collapsed first: a title of only Unicode spaces (U+2028, U+00A0...) is no title.
    title = " ".join(title.split()).strip(" ,") if isinstance(title, str) else ""
    if not title:
        report.add(lineno, f"no usable title in field {title_field!r}")
        return None
    item_id = title
    if id_field is not None:
        raw_id = row.get(id_field)
        if not isinstance(raw_id, str | int) or isinstance(raw_id, bool) or str(raw_id).strip() == "":
            report.add(lineno, f"bad id in field {id_field!r}: {_short(raw_id)}")
            return None
        item_id = str(raw_id).strip()
    text: dict[str, str] = {}
    lists: dict[str, list[str]] = {}
    numbers: dict[str, float] = {}
    for key, value in row.items():
        if key in (title_field, id_field) or value is None:
            continue
        key = str(key).strip()
        if not key:
            report.add(lineno, "a field without a name; ignored")
            continue
        if key in (title_field, id_field) or key in text or key in lists or key in numbers:
            report.add(lineno, f"field {key!r} appears twice (up to spaces); ignored")
            continue
        if isinstance(value, bool):
            numbers[key] = float(value)
        elif isinstance(value, int | float):
            number = _finite(value)
            if number is None:
                report.add(lineno, f"field {key!r}: {_short(value, 40)} is not a finite number; ignored")
            else:
                numbers[key] = number
        elif isinstance(value, str):
            value = value.strip()
            if not value:
                continue
            if key in numeric:
                number = parse_number(value)
                if number is None:
                    report.add(lineno, f"field {key!r}: {_short(value)} is not a number; ignored")
                else:
                    numbers[key] = number
                continue
            as_list = _maybe_list(value)
            if as_list is not None:
                lists[key] = as_list
            else:
                text[key] = value
        elif isinstance(value, list):
            strings = _as_strings(value)
            if strings is None:
                report.add(lineno, f"field {key!r}: list of non-scalar values; ignored")
            elif strings:
                lists[key] = strings
        else:
            report.add(lineno, f"field {key!r}: nested {type(value).__name__}; ignored")
    year = _YEAR_IN_TITLE_RE.search(title)
    if year and "year" not in numbers:
        numbers["year"] = float(year.group("year"))
    return Item(id=item_id, title=title, text=text, lists=lists, numbers=numbers)


def catalog_name_from_path(path: Path) -> str:
    """A collection-safe catalog name from a file name: 'My Products.csv' -> 'my_products'."""
    stem = path.name
    for suffix in (".gz", ".jsonl", ".json", ".csv", ".tsv"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    return safe_name(stem)


def safe_name(name: str) -> str:
    """Chroma collection names: 3-63 chars of [a-z0-9._-], starting and ending alphanumeric."""
    cleaned = re.sub(r"[^a-z0-9._-]+", "_", name.lower()).strip("._-")
    if len(cleaned) < 3:
        cleaned = (cleaned + "_catalog").strip("_")
    return cleaned[:63].rstrip("._-")
