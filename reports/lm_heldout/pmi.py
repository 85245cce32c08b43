"""Does the LM's score help ranking once the item's own likelihood is taken out? (stop 21 probe)

PMI scoring ("surface form competition", Holtzman et al. 2021): score = log p(item | user's context) -
alpha * log p(item | empty context). The second term depends on the item only, so a service could cache it
per catalog item; alpha = 0 is the shipped `LMRanker` score. Stop 16 found the plain score lowers held-out
R@10 at every weight (`base_lm_stop16.json`); this checks whether that was the item prior.

Measured on the held-out slice of the training dialogs (`reports/heldout_slice.py`; never the test split):
the retrieval head of ``depth`` candidates from the full pipeline without the LM, re-ordered by
z(retrieval) + w * z(LM score). Writes the per-turn scores to ``$OUT`` (json) and prints the grid.
``RECCHAT_DATA_DIR=... python reports/lm_heldout/pmi.py [max_turns] [depth] [out.json]``
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from chatbot.dialogue import DialogueManager, zscore
from chatbot.finetune import new_item_turns
from chatbot.justify import TemplateJustifier
from chatbot.lm import LanguageModel
from chatbot.ranking import LMRanker
from eval.recommend import FullRecommender

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "reports"))
from heldout_slice import heldout_slice  # noqa: E402


def recall(turns: list[dict], alpha: float, weight: float, k: int) -> float:
    hits = total = 0
    for t in turns:
        base = np.asarray(t["retrieval"])
        if weight and len(base) > 1:
            lm = np.asarray(t["cond"]) - alpha * np.asarray(t["null"])
            fused = zscore(list(base)) + weight * zscore(list(lm))
        else:
            fused = base
        order = np.argsort(-np.asarray(fused), kind="stable")
        rank = {int(p): r for r, p in enumerate(order)}
        hits += sum(rank[p] < k for p in t["targets"])
        total += len(t["targets"]) + t["missing"]
    return hits / total


def main() -> None:
    max_turns = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    depth = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    out = Path(sys.argv[3]) if len(sys.argv) > 3 else None
    data = heldout_slice()
    lm = LanguageModel(data.settings)
    ranker = LMRanker(lm)
    dialogue = DialogueManager(data.library, ranker, lambda c, ch: TemplateJustifier())
    replay = FullRecommender(dialogue, "movies", use_lm=False)
    catalog = data.catalog
    null: dict[str, float] = {}
    turns: list[dict] = []
    start = time.time()
    for dialog in data.held:
        for samples in new_item_turns(dialog, catalog):
            if len(turns) >= max_turns:
                break
            prefs, context = replay.inputs(samples[0].context)
            if not context.strip():
                continue
            head = dialogue.rank(prefs, "", "movies", depth)[:depth]
            ids = [c.item_id for c in head]
            cond = ranker.score(context, [catalog[i] for i in ids])
            todo = [i for i in ids if i not in null]
            if todo:
                null.update(zip(todo, ranker.score("", [catalog[i] for i in todo]), strict=True))
            positions = [ids.index(s.target) for s in samples if s.target in ids]
            turns.append({"retrieval": [c.score for c in head], "cond": cond, "null": [null[i] for i in ids],
                          "targets": positions, "missing": len(samples) - len(positions)})
            if len(turns) % 50 == 0:
                print(f"{len(turns)} turns, {time.time() - start:.0f} s", file=sys.stderr, flush=True)
        if len(turns) >= max_turns:
            break
    if out:
        out.write_text(json.dumps(turns))
    print(f"turns {len(turns)}, depth {depth}, samples {sum(len(t['targets']) + t['missing'] for t in turns)}")
    for k in (1, 10):
        print(f"without LM: R@{k} {recall(turns, 0, 0, k):.4f}")
    for alpha in (0.0, 0.5, 0.75, 1.0):
        row = [f"w={w}: {recall(turns, alpha, w, 10):.4f}/{recall(turns, alpha, w, 1):.4f}"
               for w in (0.1, 0.25, 0.5, 0.75, 1.0)]
        print(f"alpha {alpha} R@10/R@1 " + "  ".join(row))


if __name__ == "__main__":
    main()
