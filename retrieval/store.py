"""The vector store: one Chroma collection per catalog, embedded or through a Chroma server."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec, TypeVar

import numpy as np

from retrieval.errors import VectorStoreUnavailable
from retrieval.settings import Settings

HASH_KEY = "_hash"
MAX_BATCH = 4000  # below Chroma's max batch size (5,461 seen here)
# Timeouts of the HTTP client of a Chroma server (chromadb's own default is none: a hung server would hang
# every request). Connecting fails fast; reads allow for a full-catalog vector read (a few MB) on a busy server.
CONNECT_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 10.0

_P = ParamSpec("_P")
_R = TypeVar("_R")


class VectorStoreError(RuntimeError):
    """The vector store is unreachable or refused an operation."""


class VectorStoreConnectionError(VectorStoreError, VectorStoreUnavailable):
    """The Chroma server cannot be reached or timed out.

    A `VectorStoreError` for the command line, and a `VectorStoreUnavailable` for the HTTP API (503 with
    ``vector_store_unavailable``).
    """


def _is_connection_error(exc: BaseException) -> bool:
    """Whether ``exc`` says the Chroma server is unreachable, rather than that a request was wrong."""
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    httpx = sys.modules.get("httpx")  # chromadb's HTTP client; not imported at all with embedded Chroma
    if httpx is not None and isinstance(exc, httpx.TransportError):
        return True
    # chromadb turns a refused connection into this ValueError when a client is created.
    return isinstance(exc, ValueError) and "Could not connect to a Chroma server" in str(exc)


def _unavailable_as_503(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """Raise connection failures and timeouts of the Chroma server as `VectorStoreConnectionError`."""

    @functools.wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(*args, **kwargs)
        except VectorStoreError:
            raise
        except Exception as exc:
            if _is_connection_error(exc):
                raise VectorStoreConnectionError(f"vector store unavailable: {type(exc).__name__}") from exc
            raise

    return wrapper


def _set_http_timeouts(client: Any) -> None:  # noqa: ANN401 - chromadb.ClientAPI
    """Give the HTTP client of a Chroma server finite timeouts (chromadb builds it with ``timeout=None``)."""
    import httpx

    session = getattr(getattr(client, "_server", None), "_session", None)
    if isinstance(session, httpx.Client):
        session.timeout = httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)


def make_chroma_client(settings: Settings):  # noqa: ANN201 - chromadb.ClientAPI
    """Embedded `PersistentClient` under the data directory, or `HttpClient` when a URL is set."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    chroma_settings = ChromaSettings(anonymized_telemetry=False)
    if settings.chroma_url:
        from urllib.parse import urlparse

        url = urlparse(settings.chroma_url)
        try:
            client = chromadb.HttpClient(
                host=url.hostname or "127.0.0.1",
                port=url.port or (443 if url.scheme == "https" else 8000),
                ssl=url.scheme == "https",
                settings=chroma_settings,
            )
        except Exception as exc:  # chromadb raises plain ValueError/ConnectionError variants
            error = VectorStoreConnectionError if _is_connection_error(exc) else VectorStoreError
            raise error(f"cannot reach the Chroma server at {settings.chroma_url}: {exc}") from exc
        _set_http_timeouts(client)
        return client
    path = settings.data_dir / "chroma"
    path.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(path), settings=chroma_settings)


class VectorStore:
    """Catalog vectors in Chroma (cosine space). Embeddings are always passed in, never computed by Chroma.

    Every method raises `VectorStoreConnectionError` (a `VectorStoreUnavailable`) when the Chroma server
    cannot be reached; the next call tries again, so the store recovers when the server is back.
    """

    def __init__(self, client) -> None:  # noqa: ANN001
        self.client = client

    @_unavailable_as_503
    def heartbeat(self) -> None:
        """Raise `VectorStoreConnectionError` unless Chroma answers."""
        self.client.heartbeat()

    @_unavailable_as_503
    def collection(self, name: str, create: bool = False):  # noqa: ANN201
        # embedding_function=None: Chroma's default function would try to download a model.
        if create:
            return self.client.get_or_create_collection(
                name, metadata={"hnsw:space": "cosine"}, embedding_function=None
            )
        return self.client.get_collection(name, embedding_function=None)

    @_unavailable_as_503
    def has(self, name: str) -> bool:
        return name in {c if isinstance(c, str) else c.name for c in self.client.list_collections()}

    @_unavailable_as_503
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

    @_unavailable_as_503
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

    @_unavailable_as_503
    def delete(self, name: str, ids: Sequence[str]) -> None:
        col = self.collection(name, create=True)
        for start in range(0, len(ids), MAX_BATCH):
            col.delete(ids=list(ids[start : start + MAX_BATCH]))

    @_unavailable_as_503
    def drop(self, name: str) -> None:
        if self.has(name):
            self.client.delete_collection(name)

    @_unavailable_as_503
    def count(self, name: str) -> int:
        return self.collection(name).count()

    @_unavailable_as_503
    def query(
        self, name: str, vector: np.ndarray, k: int, where: dict[str, Any] | None = None
    ) -> list[tuple[str, float]]:
        """Nearest items as (id, cosine similarity), best first."""
        if k <= 0:
            return []
        col = self.collection(name)
        # No count() first: Chroma >= 1.0 returns fewer results when k exceeds the collection, and the
        # count cost 73 ms of a 76 ms query at 1M items (bench retrieval).
        res = col.query(
            query_embeddings=[np.asarray(vector, dtype=np.float32)],
            n_results=k,
            where=where or None,
            include=["distances"],
        )
        return [(i, 1.0 - float(d)) for i, d in zip(res["ids"][0], res["distances"][0], strict=True)]

    @_unavailable_as_503
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
