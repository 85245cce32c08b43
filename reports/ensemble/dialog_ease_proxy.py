"""Stop 22: co-occurrence from training dialogs, normalised counts (shipped `cooc`) against EASE, alone.

Five folds of the training dialogs (never the test split): each fold's new-item samples are scored with
tables counted on the other four, by the summed weights over the items mentioned so far.
"""

from __future__ import annotations

import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "reports" / "ensemble"))
from ease_proxy import SHARED, build  # noqa: E402  (loads scripts/build_movies_catalog.py)

from retrieval.dialogs import iter_samples  # noqa: E402
from retrieval.priors import InteractionPriors  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        catalog, _ = build.slim_catalog(SHARED, Path(tmp))
    dialogs = build.train_dialogs(SHARED, catalog)
    fold = {d.id: zlib.crc32(d.id.encode()) % 5 for d in dialogs}
    ids = catalog.ids
    row = {i: n for n, i in enumerate(ids)}
    lams = (5.0, 20.0, 50.0, 100.0)
    hits = {name: [0, 0] for name in ["cooc", "cooc+follow"] + [f"ease{lam}" for lam in lams]}
    n = 0
    for f in range(5):
        train = [d for d in dialogs if fold[d.id] != f]
        priors = InteractionPriors.from_dialogs(train)
        items = sorted({i for d in train for t in d.turns for i in t.items if i in row})
        col = {i: n for n, i in enumerate(items)}
        x = np.zeros((len(train), len(items)))
        for r, d in enumerate(train):
            for t in d.turns:
                for i in t.items:
                    if i in col:
                        x[r, col[i]] = 1.0
        gram = x.T @ x
        eases = {}
        for lam in lams:
            g = gram.copy()
            g[np.diag_indices_from(g)] += lam
            p = np.linalg.inv(g)
            b = p / -np.diag(p)
            np.fill_diagonal(b, 0.0)
            eases[lam] = b
        for s in iter_samples([d for d in dialogs if fold[d.id] == f]):
            if not s.is_new or s.target not in row:
                continue
            n += 1
            mentioned = []
            for t in s.context:
                mentioned += [i for i in t.items if i in row and i not in mentioned]
            tables = {}
            sc = np.zeros(len(ids))
            sf = np.zeros(len(ids))
            for m in mentioned:
                norm = 1.0 / (priors.popularity.get(m, 0.0) + 1.0)
                for o, c in priors.cooc.get(m, {}).items():
                    sc[row[o]] += c * norm
                for o, c in priors.follow.get(m, {}).items():
                    sf[row[o]] += c * norm
            tables["cooc"] = sc
            tables["cooc+follow"] = sc + sf
            known = [col[m] for m in mentioned if m in col]
            for lam, b in eases.items():
                se = np.zeros(len(ids))
                if known:
                    vals = b[known].sum(axis=0)
                    se[[row[i] for i in items]] = vals
                tables[f"ease{lam}"] = se
            for name, scores in tables.items():
                tgt = scores[row[s.target]]
                scores[[row[m] for m in mentioned]] = -1e9
                rank = int((scores > tgt).sum()) + 1 if tgt > 0 else 10**9
                hits[name][0] += rank <= 10
                hits[name][1] += rank <= 50
    for name, (h10, h50) in hits.items():
        print(f"{name:12s} R@10 {h10 / n:.4f} R@50 {h50 / n:.4f} (n={n})", flush=True)


if __name__ == "__main__":
    main()
