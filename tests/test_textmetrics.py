"""Tests for eval.textmetrics: BLEU-2, ROUGE-L and distinct-n."""

from __future__ import annotations

import math

import pytest

from eval.textmetrics import bleu2, distinct_n, rouge_l

# --- BLEU-2 --------------------------------------------------------------------------------------


def test_bleu2_identical_is_one() -> None:
    hyps = ["the cat sat on the mat", "a great sci-fi movie with space battles"]
    refs = [[h] for h in hyps]
    assert bleu2(hyps, refs) == pytest.approx(1.0)


def test_bleu2_disjoint_is_zero() -> None:
    assert bleu2(["alpha beta gamma"], [["delta epsilon zeta"]]) == pytest.approx(0.0)


def test_bleu2_hand_computed_brevity_penalty() -> None:
    # hypothesis 3 tokens, reference 6: unigram precision 3/3, bigram precision 2/2,
    # brevity penalty exp(1 - 6/3) = exp(-1); BLEU-2 = exp(-1) * sqrt(1 * 1)
    assert bleu2(["the cat sat"], [["the cat sat on the mat"]]) == pytest.approx(math.exp(-1))


def test_bleu2_uses_only_up_to_bigrams() -> None:
    # 4-gram BLEU would be 0 here (no matching trigram), BLEU-2 is not:
    # unigrams 4/4 match, bigrams "a b", "c d" match out of 3 -> sqrt(1 * 2/3), same length, BP = 1
    assert bleu2(["a b c d"], [["a b x c d"]]) < 1.0
    assert bleu2(["a b c d"], [["c d a b"]]) == pytest.approx(math.sqrt(2 / 3))


def test_bleu2_multiple_references_uses_matching_one() -> None:
    hyps = ["the cat sat on the mat"]
    assert bleu2(hyps, [["something else entirely here ok", "the cat sat on the mat"]]) == pytest.approx(1.0)


def test_bleu2_variable_reference_counts() -> None:
    hyps = ["the cat sat on the mat", "a dog runs in the park"]
    refs = [["the cat sat on the mat"], ["unrelated text", "a dog runs in the park"]]
    assert bleu2(hyps, refs) == pytest.approx(1.0)


def test_bleu2_empty_and_misaligned() -> None:
    assert bleu2([], []) == 0.0
    with pytest.raises(ValueError):
        bleu2(["a"], [])


# --- ROUGE-L -------------------------------------------------------------------------------------


def test_rouge_l_identical_is_one() -> None:
    hyps = ["the cat sat on the mat", "great acting and a moving story"]
    assert rouge_l(hyps, [[h] for h in hyps]) == pytest.approx(1.0)


def test_rouge_l_disjoint_is_zero() -> None:
    assert rouge_l(["alpha beta gamma"], [["delta epsilon zeta"]]) == pytest.approx(0.0)


def test_rouge_l_hand_computed() -> None:
    # LCS = 3 tokens; precision 3/3, recall 3/6 -> F1 = 2 * 1 * 0.5 / 1.5 = 2/3
    assert rouge_l(["the cat sat"], [["the cat sat on the mat"]]) == pytest.approx(2 / 3)


def test_rouge_l_best_reference_and_mean() -> None:
    hyps = ["the cat sat", "alpha beta gamma"]
    refs = [["the cat sat on the mat", "the cat sat"], ["delta epsilon zeta"]]
    # first hypothesis: best of (2/3, 1.0) = 1.0; second: 0.0 -> mean 0.5
    assert rouge_l(hyps, refs) == pytest.approx(0.5)


def test_rouge_l_uses_stemmer() -> None:
    assert rouge_l(["the cats running"], [["the cat run"]]) == pytest.approx(1.0)


def test_rouge_l_empty_and_no_references() -> None:
    assert rouge_l([], []) == 0.0
    assert rouge_l(["some text"], [[]]) == 0.0
    with pytest.raises(ValueError):
        rouge_l(["a", "b"], [["a"]])


# --- distinct-n ----------------------------------------------------------------------------------


def test_distinct_2_hand_computed() -> None:
    # bigrams: (a,b) (b,a) (a,b) | (a,b) (b,c) -> 5 total, 3 distinct
    assert distinct_n(["a b a b", "A B c"], n=2) == pytest.approx(3 / 5)


def test_distinct_2_bigrams_do_not_span_texts() -> None:
    # no bigram across the boundary "b" | "c": total 2, distinct 2
    assert distinct_n(["a b", "c d"]) == pytest.approx(1.0)


def test_distinct_1_hand_computed() -> None:
    # tokens: the, cat, the, dog -> 3 distinct / 4
    assert distinct_n(["the cat", "The dog"], n=1) == pytest.approx(0.75)


def test_distinct_all_repeated() -> None:
    assert distinct_n(["same same same same"], n=2) == pytest.approx(1 / 3)


def test_distinct_empty_or_too_short() -> None:
    assert distinct_n([]) == 0.0
    assert distinct_n(["", "   "]) == 0.0
    assert distinct_n(["single"], n=2) == 0.0


def test_distinct_invalid_n() -> None:
    with pytest.raises(ValueError):
        distinct_n(["a b"], n=0)
