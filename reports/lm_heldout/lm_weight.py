"""The LM's share in ranking on held-out ReDial *training* dialogs: Recall@1/@10 of the re-ranked head by
fusion weight (final score = z(retrieval) + w * z(LM)), for the model the settings name.

The slice is the one `recchat train` holds out (stable hash, 10%); popularity and co-occurrence are recounted
without it. Run from the repository root with a data dir that has the `movies` index:
``RECCHAT_DATA_DIR=... python reports/lm_heldout/lm_weight.py [max_turns]``
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from chatbot.dialogue import DialogueManager
from chatbot.finetune import fit_lm_weight, heldout, heldout_metrics, score_heldout
from chatbot.justify import TemplateJustifier
from chatbot.lm import LanguageModel
from chatbot.ranking import LMRanker
from retrieval.candidates import CandidateGenerator
from retrieval.index import Library
from retrieval.settings import get_settings

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    spec = importlib.util.spec_from_file_location("build", ROOT / "scripts" / "build_movies_catalog.py")
    build = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(build)  # type: ignore[union-attr]
    settings = get_settings()
    library = Library(settings, log=lambda m: None)
    catalog = library.catalog("movies")
    dialogs = build.train_dialogs(ROOT.parent / "shared" / "datasets", catalog)
    held = [d for d in dialogs if heldout(d.id, 0.1)]
    fresh = library.priors("movies").recounted([d for d in dialogs if not heldout(d.id, 0.1)])
    library.set_generator("movies", CandidateGenerator(catalog, library.store, library.embedder, fresh))
    lm = LanguageModel(settings)
    manager = DialogueManager(library, LMRanker(lm), lambda c, ch: TemplateJustifier())
    turns = score_heldout(manager, "movies", held, int(sys.argv[1]) if len(sys.argv) > 1 else 400)
    weight, table = fit_lm_weight(turns)
    print(json.dumps({"model": lm.model_folder().name, "adapter": settings.adapter, "turns": len(turns),
                      "without_lm": heldout_metrics(turns, 0.0), "chosen_weight": weight,
                      "at_0.5": heldout_metrics(turns, 0.5), "grid": table["grid"]}, indent=1))


if __name__ == "__main__":
    main()
