"""The vector store: one Chroma collection per catalog, embedded or through a Chroma server."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from retrieval.settings import Settings

HASH_KEY = "_hash"
MAX_BATCH = 4000  # below Chroma's max batch size (5,461 seen here)


class VectorStoreError(RuntimeError):
    """The vector store is unreachable or refused an operation."""


def make_chroma_client(settings: Settings):  # noqa: ANN201 - chromadb.ClientAPI
    """Embedded `PersistentClient` under the data directory, or `HttpClient` when a URL is set."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    chroma_settings = ChromaSettings(anonymized_telemetry=False)
    if settings.chroma_url:
        from urllib.parse import urlparse

        url = urlparse(settings.chroma_url)
        try:
            return chromadb.HttpClient(
                host=url.hostname or "127.0.0.1",
                port=url.port or (443 if url.scheme == "https" else 8000),
                ssl=url.scheme == "https",
                settings=chroma_settings,
            )
        except Exception as exc:  # chromadb raises plain ValueError/ConnectionError variants
            raise VectorStoreError(f"cannot reach the Chroma server at {settings.chroma_url}: {exc}") from exc
    path = settings.data_dir / "chroma"
    path.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(path), settings=chroma_settings)


class VectorStore:
    """Catalog vectors in Chroma (cosine space). Embeddings are always passed in, never computed by Chroma."""

    def __init__(self, client) -> None:  # noqa: ANN001
        self.client = client

    def collection(self, name: str, create: bool = False):  # noqa: ANN201
        # embedding_function=None: Chroma's default function would try to download a model.
        if create:
            return self.client.get_or_create_collection(
                name, metadata={"hnsw:space": "cosine"}, embedding_function=None
            )
        return self.client.get_collection(name, embedding_function=None)

    def has(self, name: str) -> bool:
        return name in {c if isinstance(c, str) else c.name for c in self.client.list_collections()}

    def hashes(self, name: str) -> dict[str, str]:
        """id -> content hash of everything stored in a collection."""
        col = self.collection(name, create=True)
        out: dict[str, str] = {}
        total = col.count()
        for offset in range(0, total, MAX_BATCH):
            got = col.get(include=["metadatas"], limit=MAX_BATCH, offset=offset)
            for item_id, meta in zip(got["ids"], got["metadatas"], strict=True):
                out[item_id] = (meta or {}).get(HASH_KEY, "")
        return out

    def upsert(
        self, name: str, ids: Sequence[str], vectors: np.ndarray, metadatas: Sequence[dict[str, Any]],
        documents: Sequence[str],
    ) -> None:
        col = self.collection(name, create=True)
        for start in range(0, len(ids), MAX_BATCH):
            end = start + MAX_BATCH
            col.upsert(
                ids=list(ids[start:end]),
                embeddings=vectors[start:end],
                metadatas=list(metadatas[start:end]),
                documents=list(documents[start:end]),
            )

    def delete(self, name: str, ids: Sequence[str]) -> None:
        col = self.collection(name, create=True)
        for start in range(0, len(ids), MAX_BATCH):
            col.delete(ids=list(ids[start : start + MAX_BATCH]))

    def drop(self, name: str) -> None:
        if self.has(name):
            self.client.delete_collection(name)

    def count(self, name: str) -> int:
        return self.collection(name).count()

    def query(
        self, name: str, vector: np.ndarray, k: int, where: dict[str, Any] | None = None
    ) -> list[tuple[str, float]]:
        """Nearest items as (id, cosine similarity), best first."""
        col = self.collection(name)
        k = min(k, col.count())
        if k <= 0:
            return []
        res = col.query(
            query_embeddings=[np.asarray(vector, dtype=np.float32)],
            n_results=k,
            where=where or None,
            include=["distances"],
        )
        return [(i, 1.0 - float(d)) for i, d in zip(res["ids"][0], res["distances"][0], strict=True)]

    def vectors(self, name: str, ids: Sequence[str] | None = None) -> tuple[list[str], np.ndarray]:
        """Stored vectors for the given ids (all when None), in Chroma's order."""
        col = self.collection(name)
        out_ids: list[str] = []
        chunks: list[np.ndarray] = []
        if ids is None:
            total = col.count()
            for offset in range(0, total, MAX_BATCH):
                got = col.get(include=["embeddings"], limit=MAX_BATCH, offset=offset)
                out_ids += got["ids"]
                chunks.append(np.asarray(got["embeddings"], dtype=np.float32))
        else:
            for start in range(0, len(ids), MAX_BATCH):
                got = col.get(ids=list(ids[start : start + MAX_BATCH]), include=["embeddings"])
                out_ids += got["ids"]
                chunks.append(np.asarray(got["embeddings"], dtype=np.float32))
        if not chunks:
            return [], np.zeros((0, 0), dtype=np.float32)
        return out_ids, np.concatenate(chunks)
