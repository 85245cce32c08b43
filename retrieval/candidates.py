"""Candidate generation: dense retrieval, item-to-item, co-occurrence and popularity, fused into one score."""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from retrieval.catalog import Catalog, Item
from retrieval.embedding import Embedder
from retrieval.priors import InteractionPriors
from retrieval.store import VectorStore

# Order matters: fitted weights are stored by name, feature matrices use this order.
FEATURES = (
    "dense",          # cosine(preference text, item)
    "dense_recent",   # cosine(latest request, item)
    "dense_learned",  # cosine(learned projection of both queries, item)
    "item_sim_max",   # max cosine(item, liked item)
    "item_sim_mean",  # mean cosine(item, liked items)
    "item_sim_last",  # cosine(item, most recently liked item)
    "cooc",           # sum over liked items of P(item | liked) from co-mentions
    "follow",         # sum over liked items of P(item recommended after liked)
    "neighbours",     # external item-item similarity (e.g. ratings CF), summed over liked items
    "popularity",     # log popularity, scaled to 0..1
    "rec_popularity",  # log count of times recommended as a new item, scaled to 0..1
    "disliked_sim",   # max cosine(item, disliked item)
    "attr_match",     # how many of the attribute values the user named (genres, people, brands) the item has
)
DEFAULT_WEIGHTS = {
    "dense": 4.0, "dense_recent": 2.0, "dense_learned": 4.0, "item_sim_max": 2.0, "item_sim_mean": 1.0,
    "item_sim_last": 1.0, "cooc": 2.0, "follow": 3.0,
    "neighbours": 1.0, "popularity": 1.0, "rec_popularity": 1.0, "disliked_sim": -2.0,
    "attr_match": 1.0,
}


# How much of a session's preference vector is mixed into its text query (which has unit length); 0.3 was
# chosen on held-out training dialogs (0 and 0.3 measured; see reports/parity_heldout).
PREFERENCE_BLEND = 0.3

# Below this spread a signal is taken as constant in the data a `LearnedFusion` was fitted on.
UNSEEN_STD = 1e-4

# Count-like signals: their scale grows with the number of liked items, so the learned scorer reads log1p.
COUNT_FEATURES = ("cooc", "follow", "neighbours")


@dataclass
class LearnedFusion:
    """A small MLP over the signals (one tanh layer), fitted listwise on training conversations.

    A linear fusion cannot express interactions such as "co-occurrence matters more for unpopular items";
    this one can, at the cost of a (pool x 12) @ (12 x hidden) product per request.
    """

    features: list[str]
    mean: list[float]
    std: list[float]
    w1: list[list[float]]
    b1: list[float]
    w2: list[float]
    b2: float = 0.0

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> LearnedFusion | None:
        """The scorer stored in priors, or None when absent or fitted for another feature set."""
        if not data or list(data.get("features", [])) != list(FEATURES):
            return None
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def __post_init__(self) -> None:
        # Converted once: `score` runs on every request.
        self._mean = np.asarray(self.mean, np.float32)
        self._std = np.asarray(self.std, np.float32)
        self._w1 = np.asarray(self.w1, np.float32).T
        self._b1 = np.asarray(self.b1, np.float32)
        self._w2 = np.asarray(self.w2, np.float32)
        # A signal that never varied in the fitting data (e.g. `disliked_sim` when the training view has no
        # dislikes) has untrained weights and a near-zero std: any nonzero value would saturate the MLP.
        # It is read linearly instead, at its default weight.
        unseen = self._std < UNSEEN_STD
        self._linear = np.where(unseen, [DEFAULT_WEIGHTS[name] for name in FEATURES], 0.0).astype(np.float32)
        self._w1[unseen] = 0.0
        self._std[unseen] = 1.0

    @staticmethod
    def prepare(features: np.ndarray) -> np.ndarray:
        """The scorer's input view of a raw feature matrix (counts on a log scale)."""
        out = features.astype(np.float32, copy=True)
        for name in COUNT_FEATURES:
            n = FEATURES.index(name)
            out[:, n] = np.log1p(np.maximum(out[:, n], 0.0))
        return out

    def score(self, features: np.ndarray) -> np.ndarray:
        """One score per row of a raw (n, len(FEATURES)) feature matrix."""
        x = (self.prepare(features) - self._mean) / self._std
        return np.tanh(x @ self._w1 + self._b1) @ self._w2 + np.float32(self.b2) + features @ self._linear


class Constraints(BaseModel):
    """Hard filters. Field names are catalog fields; string values are compared case-insensitively."""

    include: dict[str, list[str]] = Field(default_factory=dict, description="field -> any of these values")
    include_all: dict[str, list[str]] = Field(default_factory=dict, description="field -> all of these values")
    exclude: dict[str, list[str]] = Field(default_factory=dict, description="field -> none of these values")
    ranges: dict[str, tuple[float | None, float | None]] = Field(
        default_factory=dict, description="numeric field -> (min, max), either may be None"
    )

    def is_empty(self) -> bool:
        return not (self.include or self.include_all or self.exclude or self.ranges)

    def allows(self, item: Item) -> bool:
        """Whether an item satisfies every constraint (items lacking a constrained field fail)."""
        for name, wanted in self.include.items():
            if wanted and not _values(item, name) & {w.lower() for w in wanted}:
                return False
        for name, wanted in self.include_all.items():
            if not {w.lower() for w in wanted} <= _values(item, name):
                return False
        for name, unwanted in self.exclude.items():
            if _values(item, name) & {u.lower() for u in unwanted}:
                return False
        for name, (low, high) in self.ranges.items():
            value = item.numbers.get(name)
            if value is None or (low is not None and value < low) or (high is not None and value > high):
                return False
        return True

    def drop_broken_by(self, item: Item, range_fields: Collection[str] = ()) -> Constraints:
        """Remove the include filters, and the ranges on ``range_fields``, that ``item`` breaks; return them.

        Exclusions are never removed, and a field the item has no value for breaks nothing.
        """
        dropped = Constraints()
        for bucket, out, holds in ((self.include, dropped.include, lambda have, want: bool(have & want)),
                                   (self.include_all, dropped.include_all, lambda have, want: want <= have)):
            for name, wanted in list(bucket.items()):
                have = _values(item, name)
                if have and not holds(have, {w.lower() for w in wanted}):
                    out[name] = bucket.pop(name)
        for name in [n for n in range_fields if n in self.ranges]:
            low, high = self.ranges[name]
            value = item.numbers.get(name)
            if value is not None and ((low is not None and value < low) or (high is not None and value > high)):
                dropped.ranges[name] = self.ranges.pop(name)
        return dropped

    def chroma_where(self, list_fields: set[str]) -> dict[str, Any] | None:
        """The same constraints as a Chroma ``where`` filter (pre-filtering the dense search)."""
        clauses: list[dict[str, Any]] = []
        for name, wanted in self.include.items():
            values = [w.lower() for w in wanted]
            if not values:
                continue
            if name in list_fields:
                ors = [{name: {"$contains": v}} for v in values]
                clauses.append(ors[0] if len(ors) == 1 else {"$or": ors})
            else:
                clauses.append({name: {"$in": values}})
        for name, wanted in self.include_all.items():
            for value in (w.lower() for w in wanted):
                clauses.append({name: {"$contains": value}} if name in list_fields else {name: value})
        for name, unwanted in self.exclude.items():
            for value in (u.lower() for u in unwanted):
                clauses.append({name: {"$not_contains": value}} if name in list_fields else {name: {"$ne": value}})
        for name, (low, high) in self.ranges.items():
            if low is not None:
                clauses.append({name: {"$gte": low}})
            if high is not None:
                clauses.append({name: {"$lte": high}})
        if not clauses:
            return None
        return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def _values(item: Item, name: str) -> set[str]:
    if name in item.lists:
        return {v.lower() for v in item.lists[name]}
    if name in item.text:
        return {item.text[name].lower()}
    return set()


class Preferences(BaseModel):
    """What is known about the user, as far as candidate generation is concerned."""

    text: str = Field(default="", description="The user's wishes in words (the conversation so far).")
    recent: str = Field(default="", description="The latest request, weighted on its own.")
    liked: list[str] = Field(default_factory=list, description="Item ids the user likes, oldest first.")
    disliked: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list, description="Item ids never to return (shown, mentioned).")
    constraints: Constraints = Field(default_factory=Constraints)
    attributes: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Attribute values the user named (field -> values): a soft signal, unlike `constraints`.",
    )
    preference: list[float] | None = Field(
        default=None,
        description="A session's dense preference vector (item-embedding space), blended into the text query.",
    )
    text_vector: list[float] | None = Field(default=None, description="`text`, already encoded.")
    recent_vector: list[float] | None = Field(default=None, description="`recent`, already encoded.")


@dataclass
class Candidate:
    """One candidate item with its fused score and the value of every signal."""

    item_id: str
    title: str
    score: float
    signals: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.item_id, "title": self.title, "score": round(self.score, 6),
                "signals": {k: round(v, 6) for k, v in self.signals.items()}}


class CandidateGenerator:
    """Top-N catalog items for a user's preferences, with a score per signal and a fused score.

    The dense signal comes from a Chroma query (with the hard constraints as a ``where`` filter); the pool is
    widened with neighbours of liked items, co-occurring items and popular items, and every pooled item gets
    all signals from the catalog vectors held in memory.
    """

    def __init__(
        self,
        catalog: Catalog,
        store: VectorStore,
        embedder: Embedder,
        priors: InteractionPriors | None = None,
        weights: dict[str, float] | None = None,
    ) -> None:
        self.catalog = catalog
        self.store = store
        self.embedder = embedder
        self.priors = priors or InteractionPriors()
        self.weights = dict(DEFAULT_WEIGHTS)
        self.weights.update(self.priors.weights or {})
        self.weights.update(weights or {})
        self._matrix: np.ndarray | None = None
        self._row: dict[str, int] = {}
        self.list_fields = {name for item in catalog for name in item.lists}
        pops = self.priors.popularity
        self._popular = sorted(pops, key=lambda i: -pops[i])[:200]
        self._item_values: dict[str, frozenset[tuple[str, str]]] = {}
        self._projection: tuple[np.ndarray, np.ndarray] | None = None
        # Explicit weights (a caller's choice) win over the learned scorer.
        self.learned = None if weights else LearnedFusion.from_dict(self.priors.scorer)
        if self.priors.projection:
            self._projection = (np.asarray(self.priors.projection, dtype=np.float32),
                                np.asarray(self.priors.projection_bias or [0.0] * len(self.priors.projection),
                                           dtype=np.float32))

    def project(self, query: np.ndarray | None, recent: np.ndarray | None) -> np.ndarray | None:
        """The learned query vector in item space (unit length), or None without a projection or query."""
        if self._projection is None or (query is None and recent is None):
            return None
        q = query if query is not None else recent
        r = recent if recent is not None else query
        weight, bias = self._projection
        if weight.shape[1] != q.shape[0] * 2:
            return None
        vector = weight @ np.concatenate([q, r]) + bias
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm > 0 else None

    @property
    def matrix(self) -> np.ndarray:
        """All item vectors (rows in ``catalog`` order), read once from the vector store."""
        if self._matrix is None:
            ids, vectors = self.store.vectors(self.catalog.name)
            order = {item_id: i for i, item_id in enumerate(ids)}
            missing = [i for i in self.catalog.ids if i not in order]
            if missing:
                raise RuntimeError(f"{len(missing)} items of {self.catalog.name!r} are not indexed; re-index it")
            self._matrix = vectors[[order[i] for i in self.catalog.ids]]
            self._row = {item_id: n for n, item_id in enumerate(self.catalog.ids)}
        return self._matrix

    @property
    def row_of(self) -> dict[str, int]:
        """Item id -> row of `matrix`."""
        _ = self.matrix
        return self._row

    def encode_query(self, text: str) -> np.ndarray | None:
        return self.embedder.encode_one(text) if text.strip() else None

    def candidates(self, prefs: Preferences, k: int = 100) -> list[Candidate]:
        """The top ``k`` allowed items, best first."""
        pool, query, recent = self._pool(prefs, k)
        if not pool:
            return []
        features = self.features(pool, prefs, query, recent)
        scores = self.fuse(features)
        order = np.argsort(-scores, kind="stable")[:k]
        return [
            Candidate(pool[i], self.catalog[pool[i]].title, float(scores[i]),
                      dict(zip(FEATURES, features[i].tolist(), strict=True)))
            for i in order
        ]

    def fuse(self, features: np.ndarray) -> np.ndarray:
        """Fused scores for a feature matrix: the learned scorer when fitted, else the linear weights."""
        if self.learned is not None:
            return self.learned.score(features)
        w = np.array([self.weights.get(name, 0.0) for name in FEATURES], dtype=np.float32)
        return features @ w

    def _pool(self, prefs: Preferences, k: int) -> tuple[list[str], np.ndarray | None, np.ndarray | None]:
        matrix = self.matrix
        blocked = set(prefs.exclude) | set(prefs.disliked) | set(prefs.liked)
        constraints = prefs.constraints
        where = constraints.chroma_where(self.list_fields)
        wide = k * 3 + len(blocked)
        pool: dict[str, None] = {}
        if prefs.text_vector is not None and len(prefs.text_vector) == matrix.shape[1]:
            query = np.asarray(prefs.text_vector, dtype=np.float32)
        else:
            query = self.encode_query(prefs.text)
        if prefs.preference is not None and len(prefs.preference) == matrix.shape[1]:
            # A nudge, not a replacement: the fusion was fitted on text queries, and a vector built from
            # item embeddings alone scores items on another scale (measured: it lost recall as the query).
            preference = np.asarray(prefs.preference, dtype=np.float32)
            query = preference if query is None else _unit(query + PREFERENCE_BLEND * preference)
        if prefs.recent_vector is not None and len(prefs.recent_vector) == matrix.shape[1]:
            recent = np.asarray(prefs.recent_vector, dtype=np.float32)
        else:
            recent = self.encode_query(prefs.recent) if prefs.recent.strip() else None
        for vector in (query, recent, self.project(query, recent)):
            if vector is not None:
                pool.update(dict.fromkeys(i for i, _ in self.store.query(self.catalog.name, vector, wide, where)))
        liked = [i for i in prefs.liked if i in self._row][-5:]
        if liked:
            # Embedding neighbours of the most recent liked items, from the in-memory matrix.
            sims = matrix @ matrix[[self._row[i] for i in liked]].T
            top = np.argsort(-sims.max(axis=1))[: k * 2]
            pool.update(dict.fromkeys(self.catalog.items[j].id for j in top))
        for source in (self.priors.cooc, self.priors.follow, self.priors.neighbours):
            for liked_id in prefs.liked:
                pool.update(dict.fromkeys(source.get(liked_id, {})))
        pool.update(dict.fromkeys(self._popular))
        if query is None and recent is None and not liked:
            # Nothing to go on but constraints: fall back to popular items, then catalog order.
            pool.update(dict.fromkeys(self.catalog.ids[: k * 3]))
        allowed = []
        for item_id in pool:
            item = self.catalog.get(item_id)
            if item is None or item_id in blocked:
                continue
            if constraints.is_empty() or constraints.allows(item):
                allowed.append(item_id)
        if len(allowed) < k and not constraints.is_empty():
            # Constraints can empty the pool: scan the catalog for allowed items.
            seen = set(allowed)
            allowed += [i.id for i in self.catalog if i.id not in seen and i.id not in blocked
                        and constraints.allows(i)][: k * 3]
        return allowed, query, recent

    def features(
        self, pool: Sequence[str], prefs: Preferences, query: np.ndarray | None, recent: np.ndarray | None
    ) -> np.ndarray:
        """The (len(pool), len(FEATURES)) signal matrix."""
        matrix = self.matrix
        rows = [self._row[i] for i in pool]
        vectors = matrix[rows]
        out = np.zeros((len(pool), len(FEATURES)), dtype=np.float32)
        col = {name: n for n, name in enumerate(FEATURES)}
        if query is not None:
            out[:, col["dense"]] = vectors @ query
        if recent is not None:
            out[:, col["dense_recent"]] = vectors @ recent
        elif query is not None:
            out[:, col["dense_recent"]] = out[:, col["dense"]]
        learned = self.project(query, recent)
        if learned is not None:
            out[:, col["dense_learned"]] = vectors @ learned
        liked = [i for i in prefs.liked if i in self._row]
        if liked:
            sims = vectors @ matrix[[self._row[i] for i in liked]].T
            out[:, col["item_sim_max"]] = sims.max(axis=1)
            out[:, col["item_sim_mean"]] = sims.mean(axis=1)
            out[:, col["item_sim_last"]] = sims[:, -1]
        disliked = [i for i in prefs.disliked if i in self._row]
        if disliked:
            out[:, col["disliked_sim"]] = (vectors @ matrix[[self._row[i] for i in disliked]].T).max(axis=1)
        priors = self.priors
        pops = priors.popularity
        max_pop, max_rec = priors.max_log_popularity(), priors.max_log_rec_popularity()
        index = {item_id: n for n, item_id in enumerate(pool)}
        for liked_id in liked:
            norm = 1.0 / (pops.get(liked_id, 0.0) + 1.0)
            for name, source in (("cooc", priors.cooc), ("follow", priors.follow)):
                for other, count in source.get(liked_id, {}).items():
                    n = index.get(other)
                    if n is not None:
                        out[n, col[name]] += count * norm
            for other, sim in priors.neighbours.get(liked_id, {}).items():
                n = index.get(other)
                if n is not None:
                    out[n, col["neighbours"]] += sim
        for n, item_id in enumerate(pool):
            out[n, col["popularity"]] = math.log1p(pops.get(item_id, 0.0)) / max_pop
            out[n, col["rec_popularity"]] = math.log1p(priors.rec_popularity.get(item_id, 0.0)) / max_rec
        named = {(name, v.lower()) for name, values in prefs.attributes.items() for v in values}
        if named:
            for n, item_id in enumerate(pool):
                out[n, col["attr_match"]] = len(named & self.item_values(item_id))
        return out

    def item_values(self, item_id: str) -> frozenset[tuple[str, str]]:
        """The item's (field, lower-cased value) pairs a user may name, cached: features read them per request."""
        values = self._item_values.get(item_id)
        if values is None:
            item = self.catalog[item_id]
            values = self._item_values[item_id] = frozenset((n, v.lower()) for n, v in item.attribute_values())
        return values
