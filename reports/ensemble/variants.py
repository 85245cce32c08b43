"""Stop 22: which of the full recommender's own inputs move it away from retrieval, on the held-out slice.

Each variant swaps one part of full's candidate-generator preferences for the retrieval view's
(`preferences_for`), keeping full's filters unless the name says so. Never reads the ReDial test split.
"""

from __future__ import annotations

import sys
from pathlib import Path

from chatbot.dialogue import DialogueManager
from chatbot.justify import TemplateJustifier
from eval.metrics import rank_of
from eval.recommend import FullRecommender
from retrieval.dialogs import iter_samples
from retrieval.fusion import preferences_for

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "reports"))
from heldout_slice import heldout_slice  # noqa: E402


def main() -> None:
    data = heldout_slice()
    generator = data.library.generator("movies")
    linker = data.library.linker("movies")
    full = FullRecommender(DialogueManager(data.library, None, lambda c, ch: TemplateJustifier()), "movies",
                           use_lm=False)
    variants = {
        "full": lambda f, r: f,
        "retrieval": lambda f, r: r,
        "retrieval+filters": lambda f, r: r.model_copy(update={"constraints": f.constraints}),
        "no_pref": lambda f, r: f.model_copy(update={"preference": None}),
        "no_disliked": lambda f, r: f.model_copy(update={"disliked": []}),
        "retr_liked": lambda f, r: f.model_copy(update={"liked": r.liked}),
        "retr_attrs": lambda f, r: f.model_copy(update={"attributes": r.attributes}),
        "retr_text": lambda f, r: f.model_copy(update={"text": r.text, "recent": r.recent}),
        "no_pref_no_disliked": lambda f, r: f.model_copy(update={"preference": None, "disliked": []}),
    }
    hits = {name: {10: 0, 50: 0} for name in variants}
    n = 0
    for sample in iter_samples(data.held):
        if not sample.is_new:
            continue
        n += 1
        f, _ = full.inputs(sample.context)
        r = preferences_for(sample.context, data.catalog, linker)
        for name, make in variants.items():
            prefs = make(f, r)
            prefs.exclude = list(dict.fromkeys(prefs.exclude + f.exclude + r.liked))
            rank = rank_of(sample.target, [c.item_id for c in generator.candidates(prefs, 100)])
            for k in (10, 50):
                hits[name][k] += rank is not None and rank <= k
    for name, h in hits.items():
        print(f"{name:22s} R@10 {h[10] / n:.4f} ({h[10]})  R@50 {h[50] / n:.4f} ({h[50]})", flush=True)


if __name__ == "__main__":
    main()
