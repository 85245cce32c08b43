"""The held-out slice of the training dialogs that the diagnosis scripts under `reports/` measure on.

The slice is the one `recchat train` holds out (stable hash of the dialog id, 10%); popularity and
co-occurrence are recounted without it and the `movies` generator uses those, so retrieval scores on the
slice are honest. Needs a data dir with the `movies` index (``RECCHAT_DATA_DIR``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from chatbot.finetune import heldout
from retrieval.candidates import CandidateGenerator, Preferences
from retrieval.catalog import Catalog, Item
from retrieval.dialogs import Dialog, Sample, iter_samples
from retrieval.index import Library
from retrieval.settings import Settings, get_settings

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class HeldoutSlice:
    settings: Settings
    library: Library
    catalog: Catalog
    dialogs: list[Dialog]  # all training dialogs
    held: list[Dialog]  # the held-out ones


def heldout_slice() -> HeldoutSlice:
    """Training dialogs on `movies`, the held-out slice, and a generator with priors recounted without it."""
    spec = importlib.util.spec_from_file_location("build", ROOT / "scripts" / "build_movies_catalog.py")
    build = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(build)  # type: ignore[union-attr]
    settings = get_settings()
    library = Library(settings, log=lambda m: None)
    catalog = library.catalog("movies")
    dialogs = build.train_dialogs(ROOT.parent / "shared" / "datasets", catalog)
    fresh = library.priors("movies").recounted([d for d in dialogs if not heldout(d.id, 0.1)])
    library.set_generator("movies", CandidateGenerator(catalog, library.store, library.embedder, fresh))
    return HeldoutSlice(settings, library, catalog, dialogs, [d for d in dialogs if heldout(d.id, 0.1)])


def new_item_samples(data: HeldoutSlice) -> Iterator[tuple[Sample, Item | None, Preferences]]:
    """Each new-item sample of the slice with its target (None outside the catalog) and the preferences the
    full recommender (no LM) has after replaying its context."""
    from chatbot.dialogue import DialogueManager
    from chatbot.justify import TemplateJustifier
    from eval.recommend import FullRecommender

    full = FullRecommender(DialogueManager(data.library, None, lambda c, ch: TemplateJustifier()), "movies",
                           use_lm=False)
    for sample in iter_samples(data.held):
        if sample.is_new:
            prefs, _ = full.inputs(sample.context)
            yield sample, data.catalog.get(sample.target), prefs
