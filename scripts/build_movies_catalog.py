"""Regenerate the bundled demo catalog ``movies`` and its priors from ../shared/datasets.

    python scripts/build_movies_catalog.py [--shared ../shared/datasets] [--skip-weights]

Writes ``retrieval/data/movies.jsonl.gz`` (the ReDial movie catalog, 6,924 items, normalised, with
MovieLens's genres after IMDb's, and MovieLens's year where the title has none) and
``retrieval/data/movies.priors.json.gz`` (popularity and co-occurrence from the ReDial train-split
conversations, E-ReDial's included, MovieLens item-item neighbours, and fusion weights fitted on those
conversations).
The ReDial official test split is never read except to assert that no test conversation is used.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from retrieval.catalog import Catalog, load_catalog  # noqa: E402
from retrieval.dialogs import Dialog, Turn, merge_turns, read_dialogs  # noqa: E402
from retrieval.priors import InteractionPriors  # noqa: E402

KEEP = ("genre", "plot", "director", "writer", "star")
# MovieLens genre names that differ from the IMDb names the ReDial catalog uses; "IMAX" is a format, not a genre.
MOVIELENS_GENRES = {"children": "family", "imax": None, "(no genres listed)": None}
TRAIN_FILES = ("kgsf_valid_data.jsonl", "cfcrs_valid_data.jsonl", "kepler_subset_train_data.jsonl",
               "kepler_subset_valid_data.jsonl")


def slim_catalog(shared: Path, out_dir: Path) -> tuple[Catalog, dict[str, str]]:
    """The ReDial catalog with display/search fields only; returns it and redial id -> MovieLens id."""
    rows, movielens = [], {}
    with open(shared / "redial/catalog/redial_catalog_merged.jsonl", encoding="utf-8") as fh:
        for line in fh:
            raw = json.loads(line)
            row = {"id": raw["redial_id"], "title": raw["title"]}
            row.update({k: raw[k] for k in KEEP if raw.get(k)})
            if genres := merged_genres(raw.get("genre") or [], raw.get("movielens_genres") or []):
                row["genre"] = genres
            if not _YEAR.search(raw["title"]) and (year := _YEAR.search(raw.get("movielens_title") or "")):
                row["year"] = int(year.group(1))  # the same film (linked by IMDb id); the title lacks its year
            if raw.get("movielens_tags"):
                row["tags"] = raw["movielens_tags"][:10]
            if raw.get("movielens_id"):
                movielens[raw["redial_id"]] = raw["movielens_id"]
            rows.append(row)
    tmp = out_dir / "movies.jsonl"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    catalog = load_catalog(tmp, "movies")
    tmp.unlink()
    return catalog, movielens


def merged_genres(imdb: list[str], movielens: list[str]) -> list[str]:
    """IMDb's genres (at most three per film in the ReDial catalog), then MovieLens's others.

    The ReDial records stop at three genres, so "a family movie" found neither Up nor Coco (animation,
    adventure, comedy); MovieLens lists them as Children's films too.
    """
    out = [g.lower() for g in imdb]
    for genre in movielens:
        name = MOVIELENS_GENRES.get(genre.lower(), genre.lower())
        if name and name not in out:
            out.append(name)
    return out


def train_dialogs(shared: Path, catalog: Catalog) -> list[Dialog]:
    """The union of the ReDial train-split files and E-ReDial's dialogs, by conversation id; never a test id."""
    test_ids = {str(json.loads(line)["conversationId"])
                for line in open(shared / "redial/official/test_data.jsonl", encoding="utf-8")}
    seen: dict[str, Dialog] = {}
    for name in TRAIN_FILES:
        for dialog in read_dialogs(shared / "redial/partial_train" / name, catalog, "redial").dialogs:
            seen.setdefault(dialog.id, dialog)
    for dialog in e_redial_dialogs(shared, catalog, set(seen)):
        seen[dialog.id] = dialog
    leaked = test_ids & set(seen)
    if leaked:
        raise SystemExit(f"test-split conversations in the training files: {sorted(leaked)[:5]}")
    return list(seen.values())


_BRACKETED = re.compile(r"\[([^\[\]]+)\]")
_YEAR = re.compile(r"\s*\((\d{4})\)\s*$")


def _title_key(title: str) -> str:
    return " ".join(title.lower().split())


def e_redial_dialogs(shared: Path, catalog: Catalog, known: set[str]) -> list[Dialog]:
    """E-ReDial's ReDial train-split dialogs that the ReDial files lack, movies linked by bracketed title.

    E-ReDial writes movies as "[Title (Year)]", not as ids. A title links when it matches one catalog
    title exactly (spacing and case aside), or, without a year, exactly one catalog title without its
    year; anything else stays unlinked, as a wrong link would add false co-occurrence.
    """
    path = shared / "e_redial" / "e_redial_explanations.json"
    if not path.exists():
        return []
    exact: dict[str, str] = {}
    bare: dict[str, list[str]] = defaultdict(list)
    for item in catalog:
        exact.setdefault(_title_key(item.title), item.id)
        bare[_title_key(_YEAR.sub("", item.title))].append(item.id)

    def link(title: str) -> str | None:
        key = _title_key(title)
        if key in exact:
            return exact[key]
        found = bare.get(key, []) if not _YEAR.search(title) else []
        return found[0] if len(found) == 1 else None

    out = []
    for raw in json.loads(path.read_text(encoding="utf-8")):
        dialog_id = str(raw.get("conversationId", ""))
        if not dialog_id or dialog_id in known:
            continue
        turns = []
        for message in raw.get("messages", []):
            text = message.get("text", "")
            items = [i for i in (link(t) for t in _BRACKETED.findall(text)) if i]
            turns.append(Turn(role="user" if message.get("role") == 0 else "assistant",
                              text=_BRACKETED.sub(r"\1", text), items=items))
        out.append(Dialog(id=dialog_id, turns=merge_turns(turns)))
    return out


def movielens_ratings(shared: Path, movielens: dict[str, str]
                      ) -> tuple[dict[str, list[str]], dict[str, int], dict[str, int], list[tuple[int, int, float]]]:
    """MovieLens ratings of the movies linked to catalog items: (MovieLens id -> catalog ids, user -> row,
    movie -> row, (user row, movie row, rating) triples)."""
    by_ml: dict[str, list[str]] = defaultdict(list)
    for item_id, ml in movielens.items():
        by_ml[ml].append(item_id)
    users: dict[str, int] = {}
    movies: dict[str, int] = {}
    entries = []
    with open(shared / "movielens/ratings.csv", encoding="utf-8") as fh:
        next(fh)
        for line in fh:
            user, movie, rating, _ = line.split(",")
            if movie in by_ml:
                entries.append((users.setdefault(user, len(users)), movies.setdefault(movie, len(movies)),
                                float(rating)))
    return by_ml, users, movies, entries


def movielens_neighbours(shared: Path, movielens: dict[str, str], top: int = 30,
                         min_sim: float = 0.1) -> dict[str, dict[str, float]]:
    """Item-item cosine similarity of mean-centred MovieLens ratings, for catalog items linked to it."""
    by_ml, users, movies, entries = movielens_ratings(shared, movielens)
    matrix = np.zeros((len(movies), len(users)), dtype=np.float32)
    for u, m, r in entries:
        matrix[m, u] = r
    rated = matrix > 0
    means = matrix.sum(axis=0) / np.maximum(rated.sum(axis=0), 1)
    centred = np.where(rated, matrix - means, 0.0)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    unit = centred / np.maximum(norms, 1e-6)
    sims = unit @ unit.T
    np.fill_diagonal(sims, 0.0)
    counts = rated.astype(np.float32) @ rated.astype(np.float32).T
    sims *= np.minimum(counts / 5.0, 1.0)  # shrink similarities backed by few common raters
    return top_neighbours(sims, by_ml, movies, top, min_sim, digits=4)


def top_neighbours(weights: np.ndarray, by_ml: dict[str, list[str]], movies: dict[str, int], top: int,
                   min_weight: float, digits: int) -> dict[str, dict[str, float]]:
    """Catalog id -> its ``top`` heaviest MovieLens neighbours (catalog ids) of weight at least ``min_weight``,
    from a movie x movie ``weights`` matrix whose rows and columns are numbered by ``movies``."""
    names = {i: m for m, i in movies.items()}
    out: dict[str, dict[str, float]] = {}
    for row in range(len(movies)):
        neighbours = {}
        for col in np.argsort(-weights[row])[:top]:
            if weights[row, col] < min_weight:
                break
            for other in by_ml[names[col]]:
                neighbours[other] = round(float(weights[row, col]), digits)
        for item_id in by_ml[names[row]]:
            if neighbours:
                out[item_id] = neighbours
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--out", type=Path, default=ROOT / "retrieval" / "data")
    parser.add_argument("--skip-weights", action="store_true", help="keep default fusion weights")
    parser.add_argument("--data-dir", type=Path, help="reuse this recchat data dir for the index (default: temporary)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    catalog, movielens = slim_catalog(args.shared, args.out)
    catalog.save_jsonl(args.out / "movies.jsonl.gz")
    print(f"catalog: {len(catalog)} items", file=sys.stderr)

    dialogs = train_dialogs(args.shared, catalog)
    source = f"ReDial train-split conversations ({len(dialogs):,} known here, E-ReDial's included)"
    priors = InteractionPriors.from_dialogs(dialogs, source=source)
    priors.neighbours = movielens_neighbours(args.shared, movielens)
    print(f"priors: {priors.dialogs} dialogs, {len(priors.popularity)} items mentioned, "
          f"{len(priors.neighbours)} items with MovieLens neighbours", file=sys.stderr)

    if not args.skip_weights:
        from retrieval.fusion import fit_retrieval
        from retrieval.index import Library
        from retrieval.settings import Settings

        with tempfile.TemporaryDirectory() as tmp:
            library = Library(Settings(data_dir=args.data_dir or Path(tmp)))
            library.add(catalog)
            fitted = fit_retrieval(dialogs, catalog, library.store, library.embedder, priors.neighbours)
        fitted.store_in(priors)
        print(f"fusion weights: {priors.weights}", file=sys.stderr)
        print(f"held-out recall (linear vs learned fusion): {fitted.report}", file=sys.stderr)
    priors.save(args.out / "movies.priors.json.gz")


if __name__ == "__main__":
    main()
