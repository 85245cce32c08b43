"""Tests for eval.metrics: ranking metrics, tie handling, grouped accumulation, percentiles."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from eval.metrics import (
    MetricAccumulator,
    mrr_at_k,
    ndcg_at_k,
    percentile,
    rank_of,
    rank_with_ties,
    recall_at_k,
)

# --- rank_of -------------------------------------------------------------------------------------


def test_rank_of_is_one_based() -> None:
    ranking = ["a", "b", "c"]
    assert rank_of("a", ranking) == 1
    assert rank_of("c", ranking) == 3


def test_rank_of_absent_and_empty() -> None:
    assert rank_of("z", ["a", "b"]) is None
    assert rank_of("a", []) is None


def test_rank_of_duplicate_uses_first_position() -> None:
    assert rank_of("b", ["a", "b", "b"]) == 2


def test_rank_of_tenth_and_eleventh() -> None:
    ranking = [f"item{i}" for i in range(1, 61)]
    assert rank_of("item10", ranking) == 10
    assert rank_of("item11", ranking) == 11
    assert rank_of("item51", ranking) == 51


# --- recall --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rank", "k", "expected"),
    [
        (1, 1, 1.0),
        (2, 1, 0.0),
        (1, 10, 1.0),
        (10, 10, 1.0),
        (11, 10, 0.0),
        (50, 50, 1.0),
        (51, 50, 0.0),
        (None, 1, 0.0),
        (None, 50, 0.0),
    ],
)
def test_recall_at_k(rank: int | None, k: int, expected: float) -> None:
    assert recall_at_k(rank, k) == expected


def test_recall_k_larger_than_list() -> None:
    ranking = ["a", "b", "c"]
    assert recall_at_k(rank_of("c", ranking), 50) == 1.0
    assert recall_at_k(rank_of("z", ranking), 50) == 0.0


# --- MRR -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rank", "k", "expected"),
    [
        (1, 50, 1.0),
        (2, 50, 0.5),
        (4, 50, 0.25),
        (10, 10, 0.1),
        (11, 10, 0.0),
        (50, 50, 0.02),
        (51, 50, 0.0),
        (None, 50, 0.0),
    ],
)
def test_mrr_at_k(rank: int | None, k: int, expected: float) -> None:
    assert mrr_at_k(rank, k) == pytest.approx(expected)


# --- NDCG ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rank", "k", "expected"),
    [
        (1, 10, 1.0),  # 1 / log2(2)
        (3, 10, 0.5),  # 1 / log2(4)
        (7, 10, 1.0 / 3.0),  # 1 / log2(8)
        (2, 10, 1.0 / math.log2(3)),  # ~0.6309
        (10, 10, 1.0 / math.log2(11)),  # ~0.2891
        (11, 10, 0.0),
        (None, 10, 0.0),
    ],
)
def test_ndcg_at_k(rank: int | None, k: int, expected: float) -> None:
    assert ndcg_at_k(rank, k) == pytest.approx(expected)


def test_ndcg_rank_two_value() -> None:
    assert ndcg_at_k(2, 10) == pytest.approx(0.6309297535714575)


def test_metrics_accept_fractional_tie_rank() -> None:
    assert recall_at_k(1.5, 1) == 0.0
    assert recall_at_k(1.5, 2) == 1.0
    assert mrr_at_k(2.5, 10) == pytest.approx(0.4)
    assert ndcg_at_k(3.0, 10) == pytest.approx(0.5)


@pytest.mark.parametrize("fn", [recall_at_k, mrr_at_k, ndcg_at_k])
def test_invalid_rank_or_k_raises(fn: Callable[[float | None, int], float]) -> None:
    with pytest.raises(ValueError):
        fn(0, 10)
    with pytest.raises(ValueError):
        fn(1, 0)
    with pytest.raises(ValueError):
        fn(float("nan"), 10)


# --- ties ----------------------------------------------------------------------------------------


def test_rank_with_ties_no_ties() -> None:
    assert rank_with_ties(0.9, [0.1, 0.5, 0.3]) == 1.0
    assert rank_with_ties(0.4, [0.1, 0.5, 0.9]) == 3.0


def test_rank_with_ties_averages_optimistic_and_pessimistic() -> None:
    # one strictly greater, two equal: optimistic 2, pessimistic 4 -> 3
    assert rank_with_ties(0.5, [0.9, 0.5, 0.5, 0.1]) == pytest.approx(3.0)
    # one equal: optimistic 1, pessimistic 2 -> 1.5
    assert rank_with_ties(1.0, [1.0, 0.0]) == pytest.approx(1.5)


def test_rank_with_ties_all_scores_equal_is_not_rank_one() -> None:
    assert rank_with_ties(0.0, [0.0] * 10) == pytest.approx(6.0)
    assert recall_at_k(rank_with_ties(0.0, [0.0] * 10), 1) == 0.0


def test_rank_with_ties_no_others() -> None:
    assert rank_with_ties(0.3, []) == 1.0


def test_rank_with_ties_nan() -> None:
    with pytest.raises(ValueError):
        rank_with_ties(float("nan"), [0.1])
    # NaN competitors are never greater or equal
    assert rank_with_ties(0.5, [float("nan"), 0.7]) == 2.0


# --- accumulator ---------------------------------------------------------------------------------


def test_accumulator_single_sample_keys_and_values() -> None:
    acc = MetricAccumulator()
    acc.add(3, ["all"])
    summary = acc.summary()
    assert set(summary) == {"all"}
    assert summary["all"] == {
        "recall@1": 0.0,
        "recall@10": 1.0,
        "recall@50": 1.0,
        "mrr@50": pytest.approx(1.0 / 3.0),
        "ndcg@10": pytest.approx(0.5),
        "samples": 1,
    }


def test_accumulator_grouping_all_only_vs_both() -> None:
    acc = MetricAccumulator()
    acc.add(1, ("all", "new_items"))  # in both groups
    acc.add(11, ("all",))  # in "all" only
    acc.add(None, ["all"])  # absent ground truth, "all" only
    acc.add(51, ["all", "new_items"])

    summary = acc.summary()
    assert set(summary) == {"all", "new_items"}

    all_ = summary["all"]
    assert all_["samples"] == 4
    assert all_["recall@1"] == pytest.approx(1 / 4)
    assert all_["recall@10"] == pytest.approx(1 / 4)
    assert all_["recall@50"] == pytest.approx(2 / 4)
    assert all_["mrr@50"] == pytest.approx((1 + 1 / 11) / 4)
    assert all_["ndcg@10"] == pytest.approx(1 / 4)

    new = summary["new_items"]
    assert new["samples"] == 2
    assert new["recall@1"] == pytest.approx(0.5)
    assert new["recall@10"] == pytest.approx(0.5)
    assert new["recall@50"] == pytest.approx(0.5)
    assert new["mrr@50"] == pytest.approx(0.5)
    assert new["ndcg@10"] == pytest.approx(0.5)

    assert acc.count("all") == 4
    assert acc.count("new_items") == 2
    assert acc.count("missing") == 0


def test_accumulator_mean_over_samples() -> None:
    acc = MetricAccumulator()
    for rank in (1, 2, 3, 7):
        acc.add(rank, ["all"])
    row = acc.summary()["all"]
    assert row["samples"] == 4
    assert row["mrr@50"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 7) / 4)
    assert row["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3) + 0.5 + 1 / 3) / 4)
    assert row["recall@1"] == pytest.approx(0.25)
    assert row["recall@10"] == pytest.approx(1.0)


def test_accumulator_declared_group_with_zero_samples() -> None:
    acc = MetricAccumulator(groups=("all", "new_items"))
    acc.add(1, ["all"])
    summary = acc.summary()
    assert summary["new_items"] == {
        "recall@1": 0.0,
        "recall@10": 0.0,
        "recall@50": 0.0,
        "mrr@50": 0.0,
        "ndcg@10": 0.0,
        "samples": 0,
    }
    assert summary["all"]["recall@1"] == 1.0


def test_accumulator_empty_summary() -> None:
    assert MetricAccumulator().summary() == {}
    empty = MetricAccumulator(groups=("all",)).summary()
    assert empty["all"]["samples"] == 0
    assert all(v == 0.0 for v in empty["all"].values())


def test_accumulator_duplicate_group_key_counts_once() -> None:
    acc = MetricAccumulator()
    acc.add(1, ["all", "all"])
    assert acc.summary()["all"]["samples"] == 1


def test_accumulator_custom_ks() -> None:
    acc = MetricAccumulator(recall_ks=(5,), mrr_k=5, ndcg_k=5)
    acc.add(6, ["all"])
    assert acc.summary()["all"] == {"recall@5": 0.0, "mrr@5": 0.0, "ndcg@5": 0.0, "samples": 1}


def test_accumulator_invalid_rank_records_nothing() -> None:
    acc = MetricAccumulator()
    with pytest.raises(ValueError):
        acc.add(0, ["all"])
    assert acc.count("all") == 0


# --- percentile ----------------------------------------------------------------------------------


@pytest.mark.parametrize("q", [0, 10, 25, 33.3, 50, 75, 90, 95, 99, 100])
@pytest.mark.parametrize(
    "values",
    [
        [5.0],
        [1.0, 2.0],
        [3.0, 1.0, 2.0, 10.0],
        [0.12, 0.5, 0.33, 1.7, 0.01, 2.2, 0.9],
        list(range(101)),
    ],
)
def test_percentile_matches_numpy(values: list[float], q: float) -> None:
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_hand_computed() -> None:
    # sorted [1, 2, 3, 4]: position (4-1)*0.5 = 1.5 -> 2.5 ; position 3*0.9 = 2.7 -> 3.7
    assert percentile([4, 1, 3, 2], 50) == pytest.approx(2.5)
    assert percentile([4, 1, 3, 2], 90) == pytest.approx(3.7)


def test_percentile_empty_and_invalid_q() -> None:
    assert percentile([], 50) == 0.0
    with pytest.raises(ValueError):
        percentile([1.0], 101)
    with pytest.raises(ValueError):
        percentile([1.0], -1)
