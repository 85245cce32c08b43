"""Stop 22: where full (no LM) and retrieval differ on the held-out slice, sample by sample.

Writes one JSON line per new-item sample: ranks under retrieval, full, and full without its filters, and
whether full's filters allow the target. Never reads the ReDial test split.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from chatbot.dialogue import DialogueManager
from chatbot.justify import TemplateJustifier
from eval.metrics import rank_of
from eval.recommend import FullRecommender, RetrievalRecommender
from retrieval.candidates import Constraints
from retrieval.dialogs import iter_samples

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "reports"))
from heldout_slice import heldout_slice  # noqa: E402


def main() -> None:
    data = heldout_slice()
    generator = data.library.generator("movies")
    retrieval = RetrievalRecommender(generator, data.library.linker("movies"))
    full = FullRecommender(DialogueManager(data.library, None, lambda c, ch: TemplateJustifier()), "movies",
                           use_lm=False)
    out = open(sys.argv[1], "w")
    for sample in iter_samples(data.held):
        if not sample.is_new:
            continue
        prefs, _ = full.inputs(sample.context)
        item = data.catalog.get(sample.target)
        allowed = item is not None and prefs.constraints.allows(item)
        f = [c.item_id for c in generator.candidates(prefs, 100)]
        nofilter = prefs.model_copy(update={"constraints": Constraints()})
        nf = [c.item_id for c in generator.candidates(nofilter, 100)]
        r = retrieval.rank(sample.context, 100)
        out.write(json.dumps({"dialog": sample.dialog_id, "turn": len(sample.context), "target": sample.target,
                              "retrieval": rank_of(sample.target, r), "full": rank_of(sample.target, f),
                              "nofilter": rank_of(sample.target, nf), "allowed": allowed,
                              "constraints": prefs.constraints.model_dump(exclude_defaults=True)}) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
