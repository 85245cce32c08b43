"""Stop 21: held-out effect of lifting the filters that a later liked item breaks.

Variants of the full recommender (no LM) on the held-out slice of the training dialogs
(`reports/heldout_slice.py`): no lifting; lifting on items the user names as liked; lifting also on items
the recommender mentioned (which the evaluation counts as liked). Never reads the ReDial test split.
"""

from __future__ import annotations

import sys
from pathlib import Path

from chatbot.dialogue import DialogueManager
from chatbot.justify import TemplateJustifier
from eval.recommend import FullRecommender, RetrievalRecommender, evaluate_recommender
from retrieval.candidates import Constraints

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "reports"))
from heldout_slice import heldout_slice  # noqa: E402


def main() -> None:
    data = heldout_slice()
    variants = sys.argv[1:] or ["none", "user", "all", "retrieval"]
    original = DialogueManager.lift_filters_broken_by
    for variant in variants:
        if variant == "retrieval":
            recommender = RetrievalRecommender(data.library.generator("movies"), data.library.linker("movies"))
        else:
            DialogueManager.lift_filters_broken_by = (  # type: ignore[method-assign]
                staticmethod(lambda state, item, year: Constraints()) if variant == "none" else staticmethod(original))
            dialogue = DialogueManager(data.library, None, lambda c, ch: TemplateJustifier())
            recommender = FullRecommender(dialogue, "movies", use_lm=False)
            recommender.lift_filters = variant == "all"
        if variant.startswith("all-"):
            # Ablations of the full recommender's own inputs, on top of lifting ("all").
            recommender.lift_filters = True
            inputs = recommender.inputs

            def ablated(context, inputs=inputs, what=variant[4:]):  # noqa: ANN001, ANN202
                prefs, lm = inputs(context)
                if what == "nofilter":
                    prefs.constraints = type(prefs.constraints)()
                elif what == "nopref":
                    prefs.preference = None
                elif what == "nodisliked":
                    prefs.disliked = []
                elif what == "linkattrs":
                    from retrieval.fusion import named_attributes
                    prefs.attributes = named_attributes(data.library.linker("movies"),
                                                        [t.text for t in context if t.role == "user"])
                return prefs, lm

            recommender.inputs = ablated  # type: ignore[method-assign]
        report = evaluate_recommender(recommender, data.held, "held", progress=False)
        print(variant, {k: round(v, 4) for k, v in report.metrics["new_items"].items()}, flush=True)


if __name__ == "__main__":
    main()
