"""The LM's share in ranking on held-out ReDial *training* dialogs: Recall@1/@10 of the re-ranked head by
fusion weight (final score = z(retrieval) + w * z(LM)), for the model the settings name.

The slice is the one `recchat train` holds out (stable hash, 10%); popularity and co-occurrence are recounted
without it. Run from the repository root with a data dir that has the `movies` index:
``RECCHAT_DATA_DIR=... python reports/lm_heldout/lm_weight.py [max_turns]``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from chatbot.dialogue import DialogueManager
from chatbot.finetune import fit_lm_weight, heldout_metrics, score_heldout
from chatbot.justify import TemplateJustifier
from chatbot.lm import LanguageModel
from chatbot.ranking import LMRanker

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "reports"))
from heldout_slice import heldout_slice  # noqa: E402  (the reports folder is not a package)


def main() -> None:
    data = heldout_slice()
    settings, library, held = data.settings, data.library, data.held
    lm = LanguageModel(settings)
    manager = DialogueManager(library, LMRanker(lm), lambda c, ch: TemplateJustifier())
    turns = score_heldout(manager, "movies", held, int(sys.argv[1]) if len(sys.argv) > 1 else 400)
    weight, table = fit_lm_weight(turns)
    print(json.dumps({"model": lm.model_folder().name, "adapter": settings.adapter, "turns": len(turns),
                      "without_lm": heldout_metrics(turns, 0.0), "chosen_weight": weight,
                      "at_0.5": heldout_metrics(turns, 0.5), "grid": table["grid"]}, indent=1))


if __name__ == "__main__":
    main()
