"""Full-without-lm variants vs retrieval on the held-out ReDial *training* dialogs (stop 13 diagnosis).

The slice is the one `recchat train` holds out (stable hash, 10%); popularity and co-occurrence are
recounted without it. Run from the repository root with a data dir that has the `movies` index:
``RECCHAT_DATA_DIR=... python reports/parity_heldout/parity.py retrieval full full-ctx-novec ...``
Mode words: ctx (retrieval's text), novec (no preference vector), nocons (attribute includes dropped),
nodis (every mentioned item liked, none disliked),
noinc / noxc / norng (only include, exclude or range constraints dropped), noexcl (no exclusions beyond liked),
attrs (the retrieval view's attributes: every value named, liked or not).
"""

from __future__ import annotations

import sys
from pathlib import Path

from chatbot.dialogue import DialogueManager
from chatbot.justify import TemplateJustifier
from eval.recommend import FullRecommender, RetrievalRecommender, evaluate_recommender
from retrieval.candidates import Constraints, Preferences
from retrieval.dialogs import Turn, context_text
from retrieval.fusion import preferences_for

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "reports"))
from heldout_slice import heldout_slice  # noqa: E402  (the reports folder is not a package)


def main() -> None:
    data = heldout_slice()
    library, catalog, held = data.library, data.catalog, data.held
    print(len(held), "held-out dialogs", flush=True)
    dialogue = DialogueManager(library, None, lambda c, ch: TemplateJustifier())
    original = FullRecommender.inputs
    for mode in sys.argv[1:]:
        def inputs(self: FullRecommender, context: list[Turn], mode: str = mode) -> tuple[Preferences, str]:
            prefs, lm_context = original(self, context)
            if "nocons" in mode:
                prefs.constraints = Constraints(exclude=prefs.constraints.exclude, ranges=prefs.constraints.ranges)
            if "noinc" in mode:
                prefs.constraints = Constraints(exclude=prefs.constraints.exclude, ranges=prefs.constraints.ranges)
                prefs.constraints.include, prefs.constraints.include_all = {}, {}
            if "noxc" in mode:
                prefs.constraints = Constraints(include=prefs.constraints.include,
                                                include_all=prefs.constraints.include_all,
                                                ranges=prefs.constraints.ranges)
            if "norng" in mode:
                prefs.constraints = Constraints(include=prefs.constraints.include,
                                                include_all=prefs.constraints.include_all,
                                                exclude=prefs.constraints.exclude)
            if "ctxtext" in mode:
                prefs.text = context_text(context)[0]
            elif "ctx" in mode:
                prefs.text, prefs.recent = context_text(context)
            if "novec" in mode:
                prefs.preference = None
            if "nodis" in mode:
                prefs.liked, prefs.disliked = preferences_for(context, catalog, library.linker("movies")).liked, []
            if "attrs" in mode:
                prefs.attributes = preferences_for(context, catalog, library.linker("movies")).attributes
            if "noexcl" in mode:
                prefs.exclude = []
            return prefs, lm_context

        FullRecommender.inputs = inputs  # type: ignore[method-assign]
        recommender = (RetrievalRecommender(library.generator("movies"), library.linker("movies"))
                       if mode == "retrieval" else FullRecommender(dialogue, "movies", use_lm=False))
        report = evaluate_recommender(recommender, held, "held", progress=False)
        print(mode, {k: round(v, 4) for k, v in report.metrics["new_items"].items()}, flush=True)


if __name__ == "__main__":
    main()
