"""Stop 21: does linking items in the user's words (beyond the dataset's own item mentions) cost the full
recommender recall? Held-out slice of the training dialogs only (`reports/heldout_slice.py`).

Variants: `linked` (as shipped), `gold` (only items the dataset marks somewhere in the context so far keep
the signal the interpreter gives them).
"""

from __future__ import annotations

import sys
from pathlib import Path

from chatbot.dialogue import DialogueManager
from chatbot.justify import TemplateJustifier
from eval.recommend import FullRecommender, evaluate_recommender

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "reports"))
from heldout_slice import heldout_slice  # noqa: E402


def main() -> None:
    data = heldout_slice()
    for variant in sys.argv[1:] or ["linked", "gold"]:
        dialogue = DialogueManager(data.library, None, lambda c, ch: TemplateJustifier())
        tools = dialogue.tools("movies")
        interpret = tools.interpreter.interpret
        gold: set[str] = set()
        extra = [0, 0]
        if variant == "gold":
            def gold_only(text, has_recs, interpret=interpret, gold=gold, extra=extra):  # noqa: ANN001, ANN202
                u = interpret(text, has_recs)
                extra[0] += sum(s.item_id not in gold for s in u.items)
                extra[1] += len(u.items)
                u.items = [s for s in u.items if s.item_id in gold]
                return u
            tools.interpreter.interpret = gold_only  # type: ignore[method-assign]
        recommender = FullRecommender(dialogue, "movies", use_lm=False)
        inputs = recommender.inputs

        def with_gold(context, inputs=inputs, gold=gold):  # noqa: ANN001, ANN202
            gold.clear()
            for turn in context:
                gold.update(turn.items)
            return inputs(context)

        recommender.inputs = with_gold  # type: ignore[method-assign]
        report = evaluate_recommender(recommender, data.held, "held", progress=False)
        print(variant, {k: round(v, 4) for k, v in report.metrics["new_items"].items()},
              f"links outside the dataset's mentions: {extra[0]} of {extra[1]}" if variant == "gold" else "",
              flush=True)


if __name__ == "__main__":
    main()
