"""The evaluation protocol: sample counts, an independent popularity computation, other formats and catalogs."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

from eval.recommend import PopularityRecommender, RetrievalRecommender, evaluate_recommender
from retrieval.catalog import Catalog, load_catalog
from retrieval.dialogs import Dialog, Turn, iter_samples, merge_turns, read_dialogs
from retrieval.index import Library
from retrieval.priors import InteractionPriors
from tests.conftest import DATA, shared_or_skip


def test_merge_and_samples_on_a_hand_made_dialog() -> None:
    turns = merge_turns([
        Turn(role="user", text="hi", items=["a"]), Turn(role="user", text="I like a", items=["a"]),
        Turn(role="assistant", text="try b", items=["b"]), Turn(role="assistant", text="or b or a", items=["b", "a"]),
        Turn(role="user", text="ok", items=[]), Turn(role="assistant", text="c", items=["c", "c"]),
    ])
    assert [t.role for t in turns] == ["user", "assistant", "user", "assistant"]
    assert turns[1].items == ["b", "a"] and turns[3].items == ["c"]
    samples = list(iter_samples([Dialog(id="d", turns=turns)]))
    assert [(s.target, s.is_new, len(s.context)) for s in samples] == [
        ("b", True, 1), ("a", False, 1), ("c", True, 3)]


def _bundled_movies() -> Catalog:
    return Catalog.load_normalised(Path(__file__).resolve().parents[1] / "retrieval/data/movies.jsonl.gz", "movies")


def test_redial_test_counts_match_the_datasets_readme() -> None:
    path = shared_or_skip("redial/official/test_data.jsonl")
    read = read_dialogs(path, _bundled_movies())
    samples = list(iter_samples(read.dialogs))
    assert len(read.dialogs) == 1342 and read.unresolved == 0
    assert len(samples) == 4969
    assert sum(s.is_new for s in samples) == 4498


def test_popularity_recall_matches_an_independent_computation() -> None:
    """Popularity ranking and recall recomputed from the raw files with plain json/re."""
    test_path = shared_or_skip("redial/official/test_data.jsonl")
    train_dir = shared_or_skip("redial/partial_train")
    catalog = _bundled_movies()
    counts: Counter[str] = Counter()
    seen_ids: set[str] = set()
    for path in sorted(train_dir.glob("*.jsonl")):
        for line in path.open():
            record = json.loads(line)
            if record["conversationId"] in seen_ids:
                continue
            seen_ids.add(record["conversationId"])
            counts.update({m for msg in record["messages"] for m in re.findall(r"@(\d+)", msg["text"])})
    ranking = [i for i, _ in sorted(counts.items(), key=lambda kv: -kv[1])]
    hits10 = hits50 = n = 0
    for line in test_path.open():
        record = json.loads(line)
        merged: list[list] = []
        for msg in record["messages"]:
            seeker = msg["senderWorkerId"] == record["initiatorWorkerId"]
            found = re.findall(r"@(\d+)", msg["text"])
            if merged and merged[-1][0] == seeker:
                merged[-1][1].extend(found)
            else:
                merged.append([seeker, found])
        for seeker, found in merged:
            if not seeker:
                for item in dict.fromkeys(found):
                    n += 1
                    hits10 += item in ranking[:10]
                    hits50 += item in ranking[:50]
    assert n == 4969
    priors = InteractionPriors.from_dialogs(read_dialogs(train_dir / "kgsf_valid_data.jsonl", catalog).dialogs)
    assert priors.dialogs == 901  # the reader agrees with the raw file on one train file
    bundled = Path(__file__).resolve().parents[1] / "retrieval/data/movies.priors.json.gz"
    library_priors = InteractionPriors.load(bundled)
    report = evaluate_recommender(PopularityRecommender(catalog, library_priors),
                                  read_dialogs(test_path, catalog).dialogs, "redial-test", progress=False)
    assert abs(report.metrics["all"]["recall@10"] - hits10 / n) < 0.01
    assert abs(report.metrics["all"]["recall@50"] - hits50 / n) < 0.01


def test_neutral_format_on_a_product_catalog(library: Library, products) -> None:  # noqa: ANN001
    read = read_dialogs(DATA / "shop_dialogs.jsonl", products)
    assert read.format == "neutral"
    assert read.unresolved == 1 and "Unknown Gadget 9" in read.unresolved_examples[0]
    assert read.dialogs[0].turns[3].items == ["p-001"]  # a title resolved to the id
    recommender = RetrievalRecommender(library.generator("products"), library.linker("products"))
    report = evaluate_recommender(recommender, read.dialogs, "shop", unresolved=read.unresolved, progress=False)
    assert report.samples == 7 and report.unresolved == 1
    assert report.metrics["all"]["recall@10"] > 0.5  # a 20-item catalog: the targets are easy to reach
    data = report.as_dict()
    assert set(data) >= {"dataset", "recommender", "samples", "unresolved", "metrics", "latency_ms"}
    assert set(data["metrics"]["all"]) >= {"recall@1", "recall@10", "recall@50", "mrr@50", "ndcg@10"}


def test_inspired_reader_links_titles() -> None:
    catalog = load_catalog(shared_or_skip("inspired/inspired_catalog.jsonl"), "inspired")
    read = read_dialogs(shared_or_skip("inspired/valid_data_dbpedia.jsonl"), catalog)
    assert read.format == "inspired" and len(read.dialogs) == 99
    samples = list(iter_samples(read.dialogs))
    assert len(samples) > 100
    assert read.unresolved < 0.2 * (len(samples) + read.unresolved)


def test_eval_command_writes_the_report(products, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "report.json"
    result = subprocess.run([sys.executable, "-m", "chatbot", "eval", "--dialogs", str(DATA / "shop_dialogs.jsonl"),
                             "--catalog", "products", "--recommender", "retrieval", "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "recall@10" in result.stdout and "1 item mentions could not be resolved" in result.stderr
    report = json.loads(out.read_text())
    assert report["recommender"] == "retrieval" and report["samples"] == 7


def test_cross_fitting_folds_keep_each_recommender_together() -> None:
    """ReDial dialogs carry their recommender as the group, and folds never split a group."""
    from retrieval.fusion import _assign_folds

    path = shared_or_skip("redial/partial_train/kepler_subset_valid_data.jsonl")
    dialogs = read_dialogs(path, _bundled_movies()).dialogs
    raw = {str(r["conversationId"]): str(r["respondentWorkerId"])
           for r in map(json.loads, path.read_text(encoding="utf-8").splitlines())}
    assert all(d.group == raw[d.id] for d in dialogs)
    ungrouped = [Dialog(id=f"x{n}", turns=[]) for n in range(7)]
    fold_of = _assign_folds(dialogs + ungrouped, 5, seed=0)
    assert set(fold_of) == {d.id for d in dialogs + ungrouped}
    by_group: dict[str, set[int]] = {}
    for d in dialogs:
        by_group.setdefault(d.group, set()).add(fold_of[d.id])
    assert all(len(folds) == 1 for folds in by_group.values())
    sizes = Counter(fold_of.values())
    assert len(sizes) == 5 and max(sizes.values()) - min(sizes.values()) <= max(
        sum(d.group == g for d in dialogs) for g in by_group)


def test_bundled_records_hold_only_what_their_sources_say() -> None:
    """Genres are IMDb's (at most three, first: they are shown first), then MovieLens's others; a title without
    its year takes MovieLens's. So a reply that names a genre or a year states a fact, and "a family movie" can
    find Up, which IMDb's three genres miss."""
    source = {}
    with open(shared_or_skip("redial/catalog/redial_catalog_merged.jsonl"), encoding="utf-8") as fh:
        for line in fh:
            raw = json.loads(line)
            source[raw["redial_id"]] = raw
    catalog = _bundled_movies()
    extended = dated = 0
    for item in catalog:
        raw = source[item.id]
        genres = item.lists.get("genre", [])
        imdb = [g.lower() for g in raw.get("genre") or []]
        movielens = [{"children": "family"}.get(g.lower(), g.lower()) for g in raw.get("movielens_genres") or []]
        assert genres[: len(imdb)] == imdb, item.title
        assert set(genres) <= set(imdb) | set(movielens) and "imax" not in genres, item.title
        extended += len(genres) > len(imdb)
        if "year" in item.numbers:
            years = re.findall(r"\((\d{4})\)\s*$", raw["title"]) or re.findall(r"\((\d{4})\)\s*$",
                                                                              raw.get("movielens_title") or "")
            assert years and item.numbers["year"] == float(years[0]), item.title
            dated += not re.search(r"\(\d{4}\)\s*$", raw["title"])
    assert extended > 1000 and dated > 250
    by_title = {item.title: item for item in catalog}
    assert {"animation", "family"} <= set(by_title["Up (2009)"].lists["genre"])
    assert by_title["The Big Lebowski"].numbers["year"] == 1998


def test_merged_genres_keep_imdb_first_and_map_movielens_names() -> None:
    spec = importlib.util.spec_from_file_location("build", Path(__file__).resolve().parents[1] / "scripts" /
                                                  "build_movies_catalog.py")
    build = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(build)  # type: ignore[union-attr]
    assert build.merged_genres(["animation", "adventure", "comedy"], ["Adventure", "Animation", "Children", "Drama",
                                                                      "IMAX"]) == [
        "animation", "adventure", "comedy", "family", "drama"]
    assert build.merged_genres([], ["(no genres listed)"]) == []
