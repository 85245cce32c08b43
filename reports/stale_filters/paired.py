"""Stop 21: full (no LM; the LM's fusion weight is 0, so this is what `--recommender full` ranks) against
retrieval on the same samples, paired: how many samples each gets that the other misses at k, and a paired
bootstrap interval of the difference in Recall@k (new items).

Evaluation only: ``python reports/stale_filters/paired.py DIALOGS`` (the ReDial official test split was
read this way once, after the code was final; nothing was chosen on it).
"""

from __future__ import annotations

import sys

import numpy as np

from chatbot.dialogue import DialogueManager
from chatbot.justify import TemplateJustifier
from eval.recommend import FullRecommender, RetrievalRecommender, evaluate_recommender
from retrieval.dialogs import read_dialogs
from retrieval.index import Library
from retrieval.settings import get_settings


def ranks(recommender, dialogs) -> tuple[list[int | None], dict]:  # noqa: ANN001
    out: list[int | None] = []

    def keep(sample, rank) -> None:  # noqa: ANN001
        if sample.is_new:
            out.append(rank)

    report = evaluate_recommender(recommender, dialogs, "paired", progress=False, on_sample=keep)
    return out, report.metrics["new_items"]


def main() -> None:
    library = Library(get_settings(), log=lambda m: None)
    catalog = library.catalog("movies")
    dialogs = read_dialogs(sys.argv[1], catalog, "auto", linker=library.linker("movies")).dialogs
    retrieval, r_metrics = ranks(RetrievalRecommender(library.generator("movies"), library.linker("movies")),
                                 dialogs)
    dialogue = DialogueManager(library, None, lambda c, ch: TemplateJustifier())
    full, f_metrics = ranks(FullRecommender(dialogue, "movies", use_lm=False), dialogs)
    print("retrieval", {k: round(v, 4) for k, v in r_metrics.items()})
    print("full", {k: round(v, 4) for k, v in f_metrics.items()})
    rng = np.random.default_rng(0)
    for k in (1, 10, 50):
        a = np.array([r is not None and r <= k for r in full], dtype=float)
        b = np.array([r is not None and r <= k for r in retrieval], dtype=float)
        diff = a - b
        boot = [diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(2000)]
        low, high = np.percentile(boot, [2.5, 97.5])
        only_full, only_retrieval = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
        print(f"R@{k}: full only {only_full}, retrieval only {only_retrieval}, difference {diff.mean():+.4f}, "
              f"95% paired bootstrap [{low:+.4f}, {high:+.4f}], n={len(diff)}")


if __name__ == "__main__":
    main()
