"""Stop 22: the held-out samples where no filter is set, retrieval has the target in its top 50 and full
not in its top 100 (from `pairs_heldout.jsonl`): full's state and the last turns of each.

Never reads the ReDial test split.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from chatbot.dialogue import DialogueManager
from chatbot.justify import TemplateJustifier
from eval.recommend import FullRecommender
from retrieval.dialogs import iter_samples

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "reports"))
from heldout_slice import heldout_slice  # noqa: E402


def main() -> None:
    rows = [json.loads(line) for line in open(ROOT / "reports" / "ensemble" / "pairs_heldout.jsonl")]
    wanted = {(x["dialog"], x["turn"], x["target"]) for x in rows
              if x["allowed"] and not x["constraints"] and x["full"] is None
              and x["retrieval"] is not None and x["retrieval"] <= 50}
    data = heldout_slice()
    catalog = data.catalog
    full = FullRecommender(DialogueManager(data.library, None, lambda c, ch: TemplateJustifier()), "movies",
                           use_lm=False)
    for sample in iter_samples(data.held):
        if not sample.is_new:
            continue
        prefs, _ = full.inputs(sample.context)
        if (sample.dialog_id, len(sample.context), sample.target) not in wanted:
            continue
        target = sample.target
        where = [name for name, ids in (("liked", prefs.liked), ("disliked", prefs.disliked),
                                        ("excluded", prefs.exclude)) if target in ids]
        print(f"dialog {sample.dialog_id}: target {catalog[target].title} {where or ''}")
        print("   liked:", [catalog[i].title for i in prefs.liked[-4:]])
        print("   disliked:", [catalog[i].title for i in prefs.disliked], "attributes:", prefs.attributes)
        for turn in sample.context[-3:]:
            print(f"   {turn.role}: {turn.text[:200]}")


if __name__ == "__main__":
    main()
