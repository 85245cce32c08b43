"""Collaborative priors learned from conversations: popularity, co-occurrence and item-item neighbours."""

from __future__ import annotations

import gzip
import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from retrieval.dialogs import Dialog


@dataclass
class InteractionPriors:
    """Counts learned from training conversations, plus optional external item-item similarity.

    ``cooc[a][b]``: dialogs mentioning both a and b. ``follow[a][b]``: dialogs where a was mentioned before
    the assistant mentioned b (the "context item -> recommended item" transition). ``neighbours`` holds any
    external item-item similarity (e.g. collaborative filtering on ratings). ``weights`` are the linear fusion
    weights and ``scorer`` the learned (MLP) fusion, both fitted on training conversations.
    """

    dialogs: int = 0
    popularity: dict[str, float] = field(default_factory=dict)
    rec_popularity: dict[str, float] = field(default_factory=dict)
    cooc: dict[str, dict[str, float]] = field(default_factory=dict)
    follow: dict[str, dict[str, float]] = field(default_factory=dict)
    neighbours: dict[str, dict[str, float]] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    projection: list[list[float]] = field(default_factory=list)
    projection_bias: list[float] = field(default_factory=list)
    scorer: dict = field(default_factory=dict)  # a LearnedFusion, as a dict
    source: str = ""

    @classmethod
    def from_dialogs(cls, dialogs: Iterable[Dialog], source: str = "") -> InteractionPriors:
        """Count popularity and co-occurrence over conversations whose items are catalog ids."""
        popularity: Counter[str] = Counter()
        rec_popularity: Counter[str] = Counter()
        cooc: defaultdict[str, Counter[str]] = defaultdict(Counter)
        follow: defaultdict[str, Counter[str]] = defaultdict(Counter)
        n = 0
        for dialog in dialogs:
            n += 1
            mentioned: list[str] = []
            followed: set[tuple[str, str]] = set()
            for turn in dialog.turns:
                if turn.role == "assistant":
                    rec_popularity.update(set(turn.items) - set(mentioned))
                    for item in turn.items:
                        followed.update((before, item) for before in mentioned if before != item)
                mentioned += [i for i in turn.items if i not in mentioned]
            popularity.update(mentioned)
            for a in mentioned:
                for b in mentioned:
                    if a != b:
                        cooc[a][b] += 1
            for a, b in followed:
                follow[a][b] += 1
        return cls(
            dialogs=n,
            popularity=dict(popularity),
            rec_popularity=dict(rec_popularity),
            cooc={k: dict(v) for k, v in cooc.items()},
            follow={k: dict(v) for k, v in follow.items()},
            source=source,
        )

    def recounted(self, dialogs: Iterable[Dialog], source: str = "") -> InteractionPriors:
        """Popularity and co-occurrence counted again over ``dialogs``; external neighbours and everything
        fitted (weights, projection, scorers) kept. For measuring on dialogs the counts must not have seen."""
        fresh = InteractionPriors.from_dialogs(dialogs, source=source)
        fresh.neighbours, fresh.weights = self.neighbours, self.weights
        fresh.projection, fresh.projection_bias = self.projection, self.projection_bias
        fresh.scorer = self.scorer
        return fresh

    def save(self, path: Path) -> None:
        """Write as gzip JSON (atomic replace)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        data = json.dumps(self.__dict__, separators=(",", ":")).encode("utf-8")
        tmp.write_bytes(gzip.compress(data, mtime=0))  # reproducible bytes for the bundled file
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> InteractionPriors:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            data = json.load(fh)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def max_log_popularity(self) -> float:
        return math.log1p(max(self.popularity.values(), default=0.0)) or 1.0

    def max_log_rec_popularity(self) -> float:
        return math.log1p(max(self.rec_popularity.values(), default=0.0)) or 1.0
