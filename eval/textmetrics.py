"""Text metrics for generated justifications: BLEU-2 (sacrebleu), ROUGE-L (rouge-score), distinct-n.

All functions return scores in 0..1 and 0.0 for empty input. ``hypotheses[i]`` is scored against
``references[i]``, a sequence of one or more reference strings for that hypothesis.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU

__all__ = ["bleu2", "distinct_n", "rouge_l"]


def _check_aligned(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(
            f"got {len(hypotheses)} hypotheses but {len(references)} reference lists; they must align"
        )
    for refs in references:
        if isinstance(refs, str):
            raise TypeError("each element of references must be a sequence of strings, not a string")


def bleu2(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU with maximum n-gram order 2, in 0..1.

    Uses ``sacrebleu.metrics.BLEU(max_ngram_order=2)`` with its defaults (13a tokenisation, case
    sensitive, exponential smoothing), divided by 100. Each hypothesis may have a different number
    of references; a hypothesis with no references is scored against a single empty reference.
    Returns 0.0 when there are no hypotheses.

    Raises:
        ValueError: if ``hypotheses`` and ``references`` differ in length.
    """
    _check_aligned(hypotheses, references)
    if not hypotheses:
        return 0.0
    per_hyp = [list(refs) if len(refs) else [""] for refs in references]
    n_streams = max(len(refs) for refs in per_hyp)
    # sacrebleu wants reference *streams*: streams[j][i] is the j-th reference of hypothesis i.
    # Missing references are padded with None, which sacrebleu ignores.
    streams: list[list[str | None]] = [
        [refs[j] if j < len(refs) else None for refs in per_hyp] for j in range(n_streams)
    ]
    score = BLEU(max_ngram_order=2).corpus_score(list(hypotheses), streams).score / 100.0
    return min(1.0, max(0.0, score))


@functools.cache
def _rouge_scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean ROUGE-L F1 over hypotheses, each taking its best score over its references, in 0..1.

    Uses ``rouge_score.rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)`` (which lowercases and
    drops non-alphanumeric characters). A hypothesis with no references scores 0. Returns 0.0 when
    there are no hypotheses.

    Raises:
        ValueError: if ``hypotheses`` and ``references`` differ in length.
    """
    _check_aligned(hypotheses, references)
    if not hypotheses:
        return 0.0
    scorer = _rouge_scorer()
    total = 0.0
    for hyp, refs in zip(hypotheses, references, strict=True):
        # RougeScorer.score takes (target, prediction).
        total += max((scorer.score(ref, hyp)["rougeL"].fmeasure for ref in refs), default=0.0)
    return total / len(hypotheses)


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct-n: number of distinct n-grams divided by the total number of n-grams, in 0..1.

    Texts are lowercased and split on whitespace; n-grams never span two texts. Returns 0.0 when
    there are no n-grams (empty input, or every text shorter than ``n`` tokens).

    Raises:
        ValueError: if ``n < 1``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    seen: set[tuple[str, ...]] = set()
    total = 0
    for text in texts:
        tokens = text.lower().split()
        for i in range(len(tokens) - n + 1):
            seen.add(tuple(tokens[i : i + n]))
            total += 1
    return len(seen) / total if total else 0.0
