"""Retrieval and full-without-lm on the held-out slice of the training dialogs (stop 21, catalog genres).

The same slice and recounted priors as the other diagnosis scripts (`reports/heldout_slice.py`); run it
once per catalog build, each with its own data dir: ``RECCHAT_DATA_DIR=... python reports/catalog_genres/heldout.py``.
Also counts the new-item targets that the session's hard filters remove. Never reads the ReDial test split.
"""

from __future__ import annotations

import sys
from pathlib import Path

from chatbot.dialogue import DialogueManager
from chatbot.justify import TemplateJustifier
from eval.recommend import FullRecommender, RetrievalRecommender, evaluate_recommender
from retrieval.dialogs import iter_samples

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "reports"))
from heldout_slice import heldout_slice  # noqa: E402


def main() -> None:
    data = heldout_slice()
    dialogue = DialogueManager(data.library, None, lambda c, ch: TemplateJustifier())
    full = FullRecommender(dialogue, "movies", use_lm=False)
    blocked = total = 0
    for sample in iter_samples(data.held):
        if sample.is_new and sample.target in data.catalog:
            total += 1
            prefs, _ = full.inputs(sample.context)
            blocked += not prefs.constraints.allows(data.catalog[sample.target])
    print(f"filters remove {blocked} of {total} new-item targets", flush=True)
    for recommender in (RetrievalRecommender(data.library.generator("movies"), data.library.linker("movies")),
                        FullRecommender(dialogue, "movies", use_lm=False)):
        report = evaluate_recommender(recommender, data.held, "held", progress=False)
        print(recommender.name, {k: round(v, 4) for k, v in report.metrics["new_items"].items()}, flush=True)


if __name__ == "__main__":
    main()
