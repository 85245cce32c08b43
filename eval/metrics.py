"""Ranking metrics for recommendation evaluation.

Every sample has exactly one ground-truth item. A sample is described by the 1-based rank of that item
in the model's ranking, or ``None`` when the item does not appear in the ranking at all (for example
because candidate retrieval missed it). An absent ground truth scores 0 on every metric.

Ranks are usually integers (a ranking is a list, so ties are already broken by the caller). For
score-based evaluation, :func:`rank_with_ties` returns the average of the optimistic and pessimistic
rank, which may be a half-integer; all metric functions accept such fractional ranks as well.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "MetricAccumulator",
    "mrr_at_k",
    "ndcg_at_k",
    "percentile",
    "rank_of",
    "rank_with_ties",
    "recall_at_k",
]


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def _check_rank(rank: float | None) -> None:
    if rank is not None and not rank >= 1:  # also rejects NaN
        raise ValueError(f"rank must be >= 1 or None, got {rank}")


def rank_of(target: str, ranking: Sequence[str]) -> int | None:
    """Return the 1-based position of ``target`` in ``ranking``, or ``None`` if it is absent.

    If ``target`` occurs more than once, the first (best) position counts.
    """
    for position, item in enumerate(ranking, start=1):
        if item == target:
            return position
    return None


def rank_with_ties(target_score: float, other_scores: Sequence[float]) -> float:
    """Rank of a target among scored candidates, averaging over ties.

    Returns ``1 + #(others strictly greater) + #(others equal) / 2``: the mean of the optimistic rank
    (target placed before every tied candidate) and the pessimistic rank (placed after all of them).
    Higher scores rank first. ``other_scores`` must not contain the target itself. This keeps a
    model that gives every candidate the same score from looking good: with ``n`` others all tied,
    the rank is ``1 + n / 2``, not 1.

    Raises:
        ValueError: if ``target_score`` is NaN. NaN entries in ``other_scores`` compare neither greater
            nor equal, so they are ranked below the target.
    """
    if math.isnan(target_score):
        raise ValueError("target_score is NaN")
    greater = 0
    equal = 0
    for score in other_scores:
        if score > target_score:
            greater += 1
        elif score == target_score:
            equal += 1
    return 1.0 + greater + equal / 2.0


def recall_at_k(rank: float | None, k: int) -> float:
    """Recall@k (hit rate) for one sample: 1.0 if the ground truth is ranked within the top ``k``, else 0.0.

    ``k`` may exceed the length of the ranking; an absent ground truth (``rank is None``) gives 0.0.
    """
    _check_k(k)
    _check_rank(rank)
    return 1.0 if rank is not None and rank <= k else 0.0


def mrr_at_k(rank: float | None, k: int) -> float:
    """Reciprocal rank truncated at ``k``: ``1 / rank`` if ``rank <= k``, else 0.0 (also 0.0 when absent)."""
    _check_k(k)
    _check_rank(rank)
    if rank is None or rank > k:
        return 0.0
    return 1.0 / rank


def ndcg_at_k(rank: float | None, k: int) -> float:
    """NDCG@k with a single relevant item: ``1 / log2(rank + 1)`` if ``rank <= k``, else 0.0.

    With one relevant item the ideal DCG is 1, so NDCG equals DCG. Absent ground truth gives 0.0.
    """
    _check_k(k)
    _check_rank(rank)
    if rank is None or rank > k:
        return 0.0
    return 1.0 / math.log2(rank + 1.0)


@dataclass
class MetricAccumulator:
    """Accumulates per-sample ranks into per-group metric means.

    Each call to :meth:`add` records one sample in one or more groups (e.g. ``("all", "new_items")``).
    :meth:`summary` reports, for every group, the mean over its samples of recall@k for each ``k`` in
    ``recall_ks``, mrr@``mrr_k`` and ndcg@``ndcg_k``, plus the sample count under ``"samples"``.

    Groups named in ``groups`` always appear in the summary, even with zero samples (all metrics 0.0,
    ``samples`` 0); other groups appear once they have received a sample.
    """

    recall_ks: tuple[int, ...] = (1, 10, 50)
    mrr_k: int = 50
    ndcg_k: int = 10
    groups: tuple[str, ...] = ()
    _sums: dict[str, dict[str, float]] = field(default_factory=dict, init=False, repr=False)
    _counts: dict[str, int] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        for k in (*self.recall_ks, self.mrr_k, self.ndcg_k):
            _check_k(k)
        for group in self.groups:
            self._ensure_group(group)

    @property
    def metric_names(self) -> list[str]:
        """Names of the reported metrics, in summary order (without ``"samples"``)."""
        names = [f"recall@{k}" for k in self.recall_ks]
        names.append(f"mrr@{self.mrr_k}")
        names.append(f"ndcg@{self.ndcg_k}")
        return names

    def _ensure_group(self, group: str) -> None:
        if group not in self._sums:
            self._sums[group] = dict.fromkeys(self.metric_names, 0.0)
            self._counts[group] = 0

    def _sample_metrics(self, rank: float | None) -> dict[str, float]:
        values = {f"recall@{k}": recall_at_k(rank, k) for k in self.recall_ks}
        values[f"mrr@{self.mrr_k}"] = mrr_at_k(rank, self.mrr_k)
        values[f"ndcg@{self.ndcg_k}"] = ndcg_at_k(rank, self.ndcg_k)
        return values

    def add(self, rank: float | None, group_keys: Iterable[str]) -> None:
        """Record one sample with ground-truth ``rank`` (1-based, or ``None`` if absent) in each group.

        A group listed more than once in ``group_keys`` still counts the sample once.
        """
        values = self._sample_metrics(rank)  # validates rank before anything is recorded
        for group in dict.fromkeys(group_keys):
            self._ensure_group(group)
            sums = self._sums[group]
            for name, value in values.items():
                sums[name] += value
            self._counts[group] += 1

    def count(self, group: str) -> int:
        """Number of samples recorded in ``group`` (0 for an unknown group)."""
        return self._counts.get(group, 0)

    def summary(self) -> dict[str, dict[str, float]]:
        """Mean of every metric per group, plus ``"samples"`` (the group's sample count).

        Example: ``{"all": {"recall@1": .., "recall@10": .., "recall@50": .., "mrr@50": .., "ndcg@10": ..,
        "samples": n}, "new_items": {...}}``. A group with zero samples reports 0.0 for every metric.
        """
        result: dict[str, dict[str, float]] = {}
        for group, sums in self._sums.items():
            n = self._counts[group]
            row: dict[str, float] = {name: (total / n if n else 0.0) for name, total in sums.items()}
            row["samples"] = n
            result[group] = row
        return result


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (``q`` in 0..100) with linear interpolation, as ``numpy.percentile``.

    Returns 0.0 for an empty sequence.

    Raises:
        ValueError: if ``q`` is outside [0, 100].
    """
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q must be in [0, 100], got {q}")
    ordered = sorted(float(v) for v in values)
    if not ordered:
        return 0.0
    position = (len(ordered) - 1) * (q / 100.0)
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    fraction = position - lower
    if fraction == 0.0 or lower == upper:
        return ordered[lower]
    return ordered[lower] + (ordered[upper] - ordered[lower]) * fraction
