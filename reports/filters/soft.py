"""Requested attributes as a score penalty instead of a hard filter, on the held-out slice (stop 20).

For each penalty P, an item that breaks the session's include constraints ("I want a comedy") keeps its
place in the pool but loses P from its fused score; excludes and ranges stay hard. Reports new-item
recall and how often the top 3 of a turn with an include constraint all satisfy it.
``RECCHAT_DATA_DIR=... python reports/filters/soft.py 0.5 1 2 inf``
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from chatbot.dialogue import DialogueManager
from chatbot.justify import TemplateJustifier
from eval.recommend import FullRecommender, evaluate_recommender
from retrieval.candidates import CandidateGenerator, Constraints, Preferences

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "reports"))
from heldout_slice import heldout_slice  # noqa: E402


def main() -> None:
    data = heldout_slice()
    dialogue = DialogueManager(data.library, None, lambda c, ch: TemplateJustifier())
    original = CandidateGenerator.candidates
    for arg in sys.argv[1:]:
        penalty = math.inf if arg == "inf" else float(arg)
        turns = compliant = 0

        def candidates(self: CandidateGenerator, prefs: Preferences, k: int = 100,
                       penalty: float = penalty) -> list:
            c = prefs.constraints
            if math.isinf(penalty) or not (c.include or c.include_all):
                return original(self, prefs, k)
            wanted = Constraints(include=c.include, include_all=c.include_all)
            soft = prefs.model_copy(update={"constraints": Constraints(exclude=c.exclude, ranges=c.ranges)})
            out = original(self, soft, k * 2)
            for cand in out:
                if not wanted.allows(self.catalog[cand.item_id]):
                    cand.score -= penalty
            out.sort(key=lambda cand: -cand.score)
            nonlocal turns, compliant
            turns += 1
            compliant += all(wanted.allows(self.catalog[x.item_id]) for x in out[:3])
            return out[:k]

        CandidateGenerator.candidates = candidates  # type: ignore[method-assign]
        report = evaluate_recommender(FullRecommender(dialogue, "movies", use_lm=False), data.held, "held",
                                      progress=False)
        rate = compliant / turns if turns else 1.0
        print(f"penalty {arg}", {k: round(v, 4) for k, v in report.metrics["new_items"].items()},
              f"top3 compliant {rate:.3f} of {turns} ranked turns with includes", flush=True)


if __name__ == "__main__":
    main()
