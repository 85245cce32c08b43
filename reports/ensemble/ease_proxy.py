"""Stop 22: item-item signals from MovieLens ratings, compared alone on the training dialogs.

For each new-item sample of the training dialogs (never the test split), score every catalog item by the
sum, over the items mentioned so far, of an item-item table, and report Recall@10/50 of that score alone.
Tables: the shipped cosine neighbours (top 30) and EASE (Steck 2019) weights at several lambdas / depths.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
spec = importlib.util.spec_from_file_location("build", ROOT / "scripts" / "build_movies_catalog.py")
build = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
spec.loader.exec_module(build)  # type: ignore[union-attr]

from retrieval.dialogs import iter_samples  # noqa: E402

SHARED = ROOT.parent / "shared" / "datasets"


def ease_neighbours(movielens: dict[str, str], lam: float, top: int,
                    binary: bool = True) -> dict[str, dict[str, float]]:
    """EASE (Steck 2019) item-item weights on MovieLens raters (binary or rating-valued), top ``top`` per item."""
    by_ml, users, movies, entries = build.movielens_ratings(SHARED, movielens)
    x = np.zeros((len(users), len(movies)), dtype=np.float64)
    for u, m, r in entries:
        x[u, m] = 1.0 if binary else r
    g = x.T @ x
    g[np.diag_indices_from(g)] += lam
    p = np.linalg.inv(g)
    b = p / (-np.diag(p))
    np.fill_diagonal(b, 0.0)
    return build.top_neighbours(b, by_ml, movies, top, 1e-12, digits=5)  # positive weights only


def proxy(table: dict[str, dict[str, float]], samples, ids) -> tuple[float, float, float]:  # noqa: ANN001
    row = {i: n for n, i in enumerate(ids)}
    h10 = h50 = cov = 0
    for s in samples:
        mentioned = []
        for t in s.context:
            mentioned += [i for i in t.items if i in row]
        scores = np.zeros(len(ids))
        for m in mentioned:
            for other, w in table.get(m, {}).items():
                if other in row:
                    scores[row[other]] += w
        tgt = scores[row[s.target]]
        if tgt > 0:
            cov += 1
        scores[[row[m] for m in mentioned]] = -1e9
        rank = int((scores > tgt).sum()) + 1 if tgt > 0 else 10**9
        h10 += rank <= 10
        h50 += rank <= 50
    n = len(samples)
    return h10 / n, h50 / n, cov / n


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        catalog, movielens = build.slim_catalog(SHARED, Path(tmp))
    dialogs = build.train_dialogs(SHARED, catalog)
    samples = [s for s in iter_samples(dialogs) if s.is_new and s.target in catalog]
    ids = catalog.ids
    print("samples", len(samples), flush=True)
    print("cosine top30", proxy(build.movielens_neighbours(SHARED, movielens), samples, ids), flush=True)
    print("cosine top100", proxy(build.movielens_neighbours(SHARED, movielens, top=100), samples, ids), flush=True)
    for lam in (50.0, 200.0, 500.0):
        for top in (30, 100):
            print(f"ease lambda {lam} top {top}", proxy(ease_neighbours(movielens, lam, top), samples, ids), flush=True)


if __name__ == "__main__":
    main()
