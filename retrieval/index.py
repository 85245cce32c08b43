"""Indexing catalogs into the vector store, and the library of named catalogs under the data directory."""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from retrieval.candidates import CandidateGenerator
from retrieval.catalog import Catalog, CatalogError, safe_name
from retrieval.embedding import Embedder
from retrieval.priors import InteractionPriors
from retrieval.settings import Settings
from retrieval.store import HASH_KEY, VectorStore, make_chroma_client

if TYPE_CHECKING:
    from retrieval.linking import EntityLinker

BUNDLED_DIR = Path(__file__).parent / "data"  # catalogs shipped with the package, indexed on first use


@dataclass
class IndexStats:
    """What one indexing run did."""

    catalog: str
    items: int
    embedded: int
    removed: int
    unchanged: int
    seconds: float


def index_catalog(
    catalog: Catalog, store: VectorStore, embedder: Embedder, progress: bool = True
) -> IndexStats:
    """Embed new or changed items into the catalog's collection and delete removed ones.

    Unchanged items (same content hash) are not embedded again.
    """
    start = time.perf_counter()
    stored = store.hashes(catalog.name)
    todo = [item for item in catalog if stored.get(item.id) != item.content_hash()]
    current = set(catalog.ids)
    removed = [item_id for item_id in stored if item_id not in current]
    if removed:
        store.delete(catalog.name, removed)
    chunk = 512  # embed and write in chunks so an interrupted run keeps its progress
    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc=f"embedding {catalog.name}", unit="item", file=sys.stderr)
    for offset in range(0, len(todo), chunk):
        batch = todo[offset : offset + chunk]
        vectors = embedder.encode([item.document() for item in batch])
        metadatas = [{**item.metadata(), HASH_KEY: item.content_hash()} for item in batch]
        store.upsert(catalog.name, [i.id for i in batch], vectors, metadatas, [i.document() for i in batch])
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    return IndexStats(
        catalog=catalog.name,
        items=len(catalog),
        embedded=len(todo),
        removed=len(removed),
        unchanged=len(catalog) - len(todo),
        seconds=time.perf_counter() - start,
    )


# The first word of a catalog's origin marker (see `Library._outdated_bundled`).
_USER_MARKER = "user"
_PENDING_MARKER = "pending"


def _digest(path: Path) -> str:
    """SHA-256 of a file's bytes (catalog files are a few MB at most)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Library:
    """Named catalogs: the normalised catalog file, its priors and its Chroma collection.

    Catalogs live under ``<data_dir>/catalogs/<name>.jsonl.gz``; the bundled demo catalog is copied and
    indexed there on first use.
    """

    def __init__(self, settings: Settings, embedder: Embedder | None = None,
                 log: Callable[[str], None] | None = None, bundled_dir: Path = BUNDLED_DIR) -> None:
        self.settings = settings
        self.bundled_dir = bundled_dir
        self.embedder = embedder or Embedder.from_settings(settings)
        self.log = log or (lambda message: print(message, file=sys.stderr))
        self._store: VectorStore | None = None
        self._catalogs: dict[str, Catalog] = {}
        self._generators: dict[str, CandidateGenerator] = {}
        self._linkers: dict[str, tuple[Catalog, EntityLinker]] = {}
        self._install_lock = threading.Lock()

    @property
    def store(self) -> VectorStore:
        if self._store is None:
            self._store = VectorStore(make_chroma_client(self.settings))
        return self._store

    def ping(self) -> None:
        """Raise `retrieval.errors.VectorStoreUnavailable` unless the vector store answers (for ``/readyz``).

        A failed client creation is not cached (``store`` stays unset), so a later ping connects afresh.
        """
        self.store.heartbeat()

    @property
    def catalog_dir(self) -> Path:
        return self.settings.data_dir / "catalogs"

    def catalog_path(self, name: str) -> Path:
        return self.catalog_dir / f"{name}.jsonl.gz"

    def priors_path(self, name: str) -> Path:
        return self.catalog_dir / f"{name}.priors.json.gz"

    def names(self) -> list[str]:
        """Catalogs available: indexed ones plus bundled ones."""
        found = {p.name.removesuffix(".jsonl.gz") for p in self.catalog_dir.glob("*.jsonl.gz")}
        return sorted(found | self.bundled())

    def bundled(self) -> set[str]:
        """Names of the catalogs shipped with the package."""
        return {p.name.removesuffix(".jsonl.gz") for p in self.bundled_dir.glob("*.jsonl.gz")}

    def bundled_path(self, name: str, suffix: str) -> Path:
        return self.bundled_dir / f"{name}{suffix}"

    def add(self, catalog: Catalog, priors: InteractionPriors | None = None,
            progress: bool = True) -> IndexStats:
        """Index a catalog under its name (incremental) and remember it."""
        catalog.name = safe_name(catalog.name)
        # Whatever the user indexes under a name is theirs, never replaced by a bundled release
        # (see `_outdated_bundled`); marked before indexing, so that an interrupted run is theirs too.
        self._write_marker(catalog.name, _USER_MARKER)
        return self._index(catalog, priors, progress)

    def _index(self, catalog: Catalog, priors: InteractionPriors | None, progress: bool) -> IndexStats:
        stats = index_catalog(catalog, self.store, self.embedder, progress=progress)
        catalog.save_jsonl(self.catalog_path(catalog.name))
        if priors is not None:
            priors.save(self.priors_path(catalog.name))
        self._catalogs[catalog.name] = catalog
        self._generators.pop(catalog.name, None)
        self._linkers.pop(catalog.name, None)
        return stats

    def remove(self, name: str) -> None:
        """Forget a catalog: its file, priors and collection."""
        self.store.drop(name)
        for path in (self.catalog_path(name), self.priors_path(name), self._marker_path(name)):
            path.unlink(missing_ok=True)
        self._catalogs.pop(name, None)
        self._generators.pop(name, None)
        self._linkers.pop(name, None)

    def catalog(self, name: str | None = None) -> Catalog:
        """The named catalog, indexing the bundled demo catalog on first use."""
        name = name or self.settings.default_catalog
        if name in self._catalogs:
            return self._catalogs[name]
        path = self.catalog_path(name)
        with self._install_lock:  # two first uses at once (warm-up and a request) index once
            if name in self._catalogs:
                return self._catalogs[name]
            indexed = path.is_file() and self.store.has(name)
            if indexed and not self._outdated_bundled(name, path):
                catalog = Catalog.load_normalised(path, name)
            elif name in self.bundled():
                catalog = self._install_bundled(name, update=indexed)
            else:
                raise CatalogError(f"unknown catalog {name!r}; available: {', '.join(self.names())}. "
                                   "Index one with: recchat index --catalog PATH --name NAME")
            self._catalogs[name] = catalog
            return catalog

    def priors(self, name: str) -> InteractionPriors | None:
        """Popularity, co-occurrence and fusion weights learned for a catalog, if any."""
        path = self.priors_path(name)
        if not path.is_file() and self.bundled_path(name, ".priors.json.gz").is_file():
            path = self.bundled_path(name, ".priors.json.gz")
        return InteractionPriors.load(path) if path.is_file() else None

    def _install_bundled(self, name: str, update: bool = False) -> Catalog:
        if update:
            self.log(f"The bundled '{name}' catalog has changed since it was indexed here: updating its index...")
        else:
            self.log(f"First use of the bundled '{name}' catalog: building its index (a few minutes on 2 cores, "
                     "once)...")
        bundled = self.bundled_path(name, ".jsonl.gz")
        catalog = Catalog.load_normalised(bundled, name)
        # A process killed from here on leaves the pending marker: the next start resumes the install.
        self._write_marker(name, f"{_PENDING_MARKER} {_digest(bundled)}")
        stats = self._index(catalog, None, progress=True)  # incremental: only changed items are embedded again
        self._write_marker(name, f"{_digest(self.catalog_path(name))} {_digest(bundled)}")
        self.log(f"Indexed {stats.items} items ({stats.embedded} embedded) in {stats.seconds:.1f} s.")
        return catalog

    def _marker_path(self, name: str) -> Path:
        return self.catalog_dir / f"{name}.origin"

    def _write_marker(self, name: str, content: str) -> None:
        """Record where the catalog indexed under ``name`` came from (see `_outdated_bundled`)."""
        marker = self._marker_path(name)
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_name(f"{marker.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(content + "\n", encoding="utf-8")
        tmp.replace(marker)  # never a torn marker

    def _outdated_bundled(self, name: str, installed: Path) -> bool:
        """Whether ``installed`` is a bundled catalog as an earlier release shipped it (a new one replaces it).

        The marker beside the catalog says where it came from: ``user`` (`add`: the user's own, kept
        forever), ``pending <bundled digest>`` (an install that did not finish: resumed), or ``<installed
        digest> <bundled digest>`` (an installed copy, outdated when it is still the one installed and the
        bundled file is no longer the one it came from; digests of files, not re-encodings, so a zlib that
        compresses differently changes nothing). Data dirs from before markers: the copy is the bundled one
        when it has no priors of its own and the bundled item ids; it is outdated when its records differ.
        """
        bundled = self.bundled_path(name, ".jsonl.gz")
        if not bundled.is_file():
            return False
        marker = self._marker_path(name)
        if marker.is_file():
            installed_digest, _, bundled_digest = marker.read_text(encoding="utf-8").strip().partition(" ")
            if installed_digest == _USER_MARKER:
                return False
            if installed_digest == _PENDING_MARKER:
                return True
            return installed_digest == _digest(installed) and bundled_digest != _digest(bundled)
        if self.priors_path(name).is_file():
            return False
        old, new = Catalog.load_normalised(installed, name), Catalog.load_normalised(bundled, name)
        if set(old.ids) != set(new.ids):
            return False  # the user's own catalog under this name
        if all(old[i] == new[i] for i in new.ids):
            self._write_marker(name, f"{_digest(installed)} {_digest(bundled)}")  # by digest from now on
            return False
        return True

    def generator(self, name: str | None = None) -> CandidateGenerator:
        """A `CandidateGenerator` over a named catalog with its priors (cached per catalog)."""
        catalog = self.catalog(name)
        cached = self._generators.get(catalog.name)
        if cached is None or cached.catalog is not catalog:
            cached = CandidateGenerator(catalog, self.store, self.embedder, self.priors(catalog.name))
            self._generators[catalog.name] = cached
        return cached

    def set_generator(self, name: str, generator: CandidateGenerator) -> None:
        """Use ``generator`` for a catalog from now on (e.g. one whose priors leave out held-out dialogs)."""
        self._generators[self.catalog(name).name] = generator

    def linker(self, name: str | None = None) -> EntityLinker:
        """An `EntityLinker` over a named catalog, popularity from its priors (cached per catalog)."""
        catalog = self.catalog(name)
        cached = self._linkers.get(catalog.name)
        if cached is None or cached[0] is not catalog:
            from retrieval.linking import EntityLinker

            priors = self.priors(catalog.name)
            cached = (catalog, EntityLinker(catalog, priors.popularity if priors else None))
            self._linkers[catalog.name] = cached
        return cached[1]
