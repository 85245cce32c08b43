"""Stop 22: five-fold cross-fitted Recall of the learned fusion with the old (cosine) and new (EASE)
MovieLens neighbours, on all training dialogs (never the test split).

Same cross-fitting as `retrieval.fusion.fit_retrieval` (projection and co-occurrence from the other folds),
but the learned scorer is also fitted five times, once per held-out fold, so every one of the 8,473 new-item
samples is scored by a scorer that did not see its dialog. The projection is shared by both tables.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "reports" / "ensemble"))
from ease_proxy import SHARED, build, ease_neighbours  # noqa: E402  (loads scripts/build_movies_catalog.py)

from retrieval.candidates import CandidateGenerator, LearnedFusion  # noqa: E402
from retrieval.dialogs import iter_samples  # noqa: E402
from retrieval.fusion import (  # noqa: E402
    _assign_folds,
    _fit_mlp,
    encode_queries,
    fit_projection,
    preferences_for,
)
from retrieval.index import Library  # noqa: E402
from retrieval.linking import EntityLinker  # noqa: E402
from retrieval.priors import InteractionPriors  # noqa: E402
from retrieval.settings import get_settings  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _, movielens = build.slim_catalog(SHARED, Path(tmp))
    library = Library(get_settings(), log=lambda m: None)
    catalog = library.catalog("movies")
    tables = {"cosine": build.movielens_neighbours(SHARED, movielens), "ease": ease_neighbours(movielens, 500.0, 100)}
    dialogs = build.train_dialogs(SHARED, catalog)
    fold_of = _assign_folds(dialogs, 5, 0)
    samples = [s for s in iter_samples(dialogs) if s.is_new and s.target in catalog]
    linker = EntityLinker(catalog)
    prefs_list = [preferences_for(s.context, catalog, linker) for s in samples]
    embedder = library.embedder
    queries = encode_queries(prefs_list, embedder)
    n, d = len(samples), queries.shape[1] // 2
    base = CandidateGenerator(catalog, library.store, embedder)
    matrix, row = base.matrix, base.row_of
    targets = [row[s.target] for s in samples]
    masks = np.zeros((n, len(catalog)), dtype=bool)
    for i, prefs in enumerate(prefs_list):
        masks[i, [row[x] for x in prefs.liked if x in row]] = True
    groups: dict[str, list] = {name: [] for name in tables}
    for fold in range(5):
        train_idx = [i for i, s in enumerate(samples) if fold_of[s.dialog_id] != fold]
        held_idx = [i for i, s in enumerate(samples) if fold_of[s.dialog_id] == fold]
        weight, bias = fit_projection(queries[train_idx], [targets[i] for i in train_idx], masks[train_idx], matrix)
        for name, table in tables.items():
            priors = InteractionPriors.from_dialogs(x for x in dialogs if fold_of[x.id] != fold)
            priors.neighbours = table
            priors.projection, priors.projection_bias = weight.tolist(), bias.tolist()
            generator = CandidateGenerator(catalog, library.store, embedder, priors)
            for i in held_idx:
                prefs = prefs_list[i]
                prefs.text_vector = queries[i, :d].tolist()
                prefs.recent_vector = queries[i, d:].tolist()
                pool, query, recent = generator._pool(prefs, 200)
                if samples[i].target in pool:
                    features = generator.features(pool, prefs, query, recent)
                    groups[name].append((features, pool.index(samples[i].target), fold))
        print(f"fold {fold} done", {k: len(v) for k, v in groups.items()}, flush=True)
    for name, g in groups.items():
        ranks = []
        for fold in range(5):
            fit = [(f, t) for f, t, k in g if k != fold]
            scorer = LearnedFusion(**_fit_mlp(fit, 16, 100, 0))
            ranks += [int((s > s[t]).sum()) + 1 for s, t in ((scorer.score(f), t) for f, t, k in g if k == fold)]
        recalls = {f"recall@{k}": round(sum(r <= k for r in ranks) / n, 4) for k in (1, 10, 50, 100)}
        print(name, "in pool", len(g), recalls, f"n={n}", flush=True)


if __name__ == "__main__":
    main()
