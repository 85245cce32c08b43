"""Recommendation evaluation on held-out conversations, following the standard protocol.

Merge consecutive same-speaker turns; one sample per item mentioned in an assistant turn; the recommender
sees only the earlier turns; the ground truth is ranked among all catalog items.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from chatbot.dialogue import DialogueManager
from chatbot.state import Message, SessionState
from eval.metrics import MetricAccumulator, percentile, rank_of
from retrieval.candidates import CandidateGenerator, Preferences
from retrieval.catalog import Catalog
from retrieval.dialogs import Dialog, Sample, Turn, iter_samples
from retrieval.fusion import preferences_for
from retrieval.linking import EntityLinker
from retrieval.priors import InteractionPriors

RECALL_KS = (1, 10, 50, 100)


class Recommender(Protocol):
    """Anything that ranks catalog item ids for a dialog context, best first."""

    name: str

    def rank(self, context: list[Turn], k: int) -> list[str]: ...


class PopularityRecommender:
    """Global popularity from training conversations; the same list whatever the context."""

    name = "popularity"

    def __init__(self, catalog: Catalog, priors: InteractionPriors | None) -> None:
        pops = priors.popularity if priors else {}
        # Ties (and items never mentioned) keep catalog order, so the ranking is deterministic.
        self._ranking = sorted(catalog.ids, key=lambda i: -pops.get(i, 0.0))

    def rank(self, context: list[Turn], k: int) -> list[str]:
        return self._ranking[:k]


class RetrievalRecommender:
    """The candidate generator alone: dense, item-to-item, co-occurrence, popularity and named attributes, fused.

    Items already mentioned in the dialog are excluded, as the service does.
    """

    name = "retrieval"

    def __init__(self, generator: CandidateGenerator, linker: EntityLinker) -> None:
        self.generator = generator
        self.linker = linker

    def rank(self, context: list[Turn], k: int) -> list[str]:
        prefs = preferences_for(context, self.generator.catalog, self.linker)
        return [c.item_id for c in self.generator.candidates(prefs, k)]


class FullRecommender:
    """The complete recommender: the dialogue manager's state from the user's turns, candidates, LM re-ranking.

    Each dialog is replayed once, turn by turn, as the service would see it; items the assistant mentioned
    count as shown and liked (ReDial seekers mostly engage with them), as in the retrieval baseline, so a
    filter that such an item breaks is lifted, as when a user likes an item outside a filter
    (`DialogueManager.lift_filters_broken_by`).
    """

    def __init__(self, dialogue: DialogueManager, catalog: str, use_lm: bool = True) -> None:
        self.dialogue = dialogue
        self.catalog = catalog
        self.use_lm = use_lm
        self.lift_filters = True  # False only to measure the rule's effect (reports/stale_filters)
        self.name = "full" if use_lm else "full-without-lm"
        self._dialog_key: tuple[int, ...] | None = None
        self._state: SessionState | None = None
        self._replayed = 0

    def inputs(self, context: list[Turn]) -> tuple[Preferences, str]:
        """The candidate generator's preferences and the LM ranker's context after replaying ``context``.

        Shared with fine-tuning (`chatbot.finetune`), so that the LM is trained on exactly the inputs
        it sees here and in the service.
        """
        tools = self.dialogue.tools(self.catalog)
        key = tuple(id(t) for t in context[: self._replayed])
        if self._state is None or key != self._dialog_key or len(context) < self._replayed:
            self._state = SessionState(catalog=tools.catalog.name)
            self._replayed = 0
        state = self._state
        for turn in context[self._replayed:]:
            if turn.role == "user" and turn.text.strip():
                understanding = tools.interpreter.interpret(turn.text, bool(state.last_recommendations))
                state.messages.append(Message(role="user", text=turn.text, items=list(turn.items)))
                self.dialogue.apply(state, understanding, tools)
            for item in turn.items:
                # An item the user said they disliked is not liked, as in the service.
                if item not in state.liked and item not in state.disliked and item in tools.catalog:
                    state.liked.append(item)
                    if self.lift_filters and turn.role == "assistant":
                        # The user's own items were read with their polarity by `apply`.
                        self.dialogue.lift_filters_broken_by(state, tools.catalog[item], tools.interpreter.year_field)
            if turn.role == "assistant":
                state.last_recommendations = [i for i in turn.items if i in tools.catalog]
        self._replayed = len(context)
        self._dialog_key = tuple(id(t) for t in context)
        prefs = self.dialogue.preferences(state)
        prefs.exclude = list(dict.fromkeys(prefs.exclude + state.liked))
        return prefs, self.dialogue.lm_context(state, tools.catalog)

    def rank(self, context: list[Turn], k: int) -> list[str]:
        prefs, lm_context = self.inputs(context)
        return [c.item_id for c in self.dialogue.rank(prefs, lm_context if self.use_lm else "", self.catalog, k)]


@dataclass
class EvalReport:
    """The machine-readable result of one evaluation run."""

    dataset: str
    recommender: str
    samples: int
    unresolved: int
    metrics: dict[str, dict[str, float]]
    latency_ms: dict[str, float]
    turns: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset, "recommender": self.recommender, "samples": self.samples,
            "unresolved": self.unresolved, "metrics": self.metrics, "latency_ms": self.latency_ms,
            "ranked_turns": self.turns,
        }


def evaluate_recommender(
    recommender: Recommender,
    dialogs: Sequence[Dialog],
    dataset: str,
    unresolved: int = 0,
    limit: int | None = None,
    progress: bool = True,
    on_sample: Callable[[Sample, int | None], None] | None = None,
) -> EvalReport:
    """Rank every sample's ground truth and aggregate Recall@1/10/50(/100), MRR@50 and NDCG@10."""
    samples = list(iter_samples(dialogs))
    if limit is not None:
        samples = samples[:limit]
    acc = MetricAccumulator(recall_ks=RECALL_KS, groups=("all", "new_items"))
    latencies: list[float] = []
    turn_latencies: list[float] = []
    turn_ms = 0.0
    depth = max(RECALL_KS)
    iterator: Any = samples
    if progress:
        from tqdm import tqdm

        iterator = tqdm(samples, desc=f"eval {recommender.name}", unit="sample", file=sys.stderr)
    cache_key: tuple[str, int] | None = None
    ranking: list[str] = []
    for sample in iterator:
        # Samples of one turn share their context: rank once per turn.
        key = (sample.dialog_id, len(sample.context))
        if key != cache_key:
            start = time.perf_counter()
            ranking = recommender.rank(sample.context, depth)
            turn_ms = (time.perf_counter() - start) * 1000
            turn_latencies.append(turn_ms)
            cache_key = key
        latencies.append(turn_ms)  # every sample of a turn waited for that turn's ranking
        rank = rank_of(sample.target, ranking)
        acc.add(rank, ("all", "new_items") if sample.is_new else ("all",))
        if on_sample is not None:
            on_sample(sample, rank)
    summary = acc.summary()
    return EvalReport(
        dataset=dataset,
        recommender=recommender.name,
        samples=len(samples),
        unresolved=unresolved,
        metrics=summary,
        latency_ms={"p50": round(percentile(latencies, 50), 2), "p95": round(percentile(latencies, 95), 2)},
        turns=len(turn_latencies),
    )


def format_report(report: EvalReport) -> str:
    """A human-readable table of a report."""
    names = [f"recall@{k}" for k in RECALL_KS] + ["mrr@50", "ndcg@10"]
    lines = [
        f"dataset: {report.dataset}   recommender: {report.recommender}   samples: {report.samples}   "
        f"unresolved items: {report.unresolved}",
        f"{'group':<10} {'n':>6} " + " ".join(f"{n:>10}" for n in names),
    ]
    for group, values in report.metrics.items():
        lines.append(f"{group:<10} {int(values.get('samples', 0)):>6} "
                     + " ".join(f"{values.get(n, 0.0):>10.4f}" for n in names))
    lines.append(f"latency per sample ({report.turns} contexts ranked): p50 {report.latency_ms['p50']:.1f} ms, "
                 f"p95 {report.latency_ms['p95']:.1f} ms")
    return "\n".join(lines)
