"""Justification evaluation on E-ReDial: the system explains a recommended item given the dialog so far,
scored against the human explanations (BLEU-2, ROUGE-L, Distinct-2), plus two checks of our own:
unsupported claims per 100 justifications, and the share that refer to something the user said they like.
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatbot.dialogue import CatalogTools, DialogueManager
from chatbot.justify import JustificationRequest, Justifier
from chatbot.state import SessionState
from eval.metrics import percentile
from eval.textmetrics import bleu2, distinct_n, rouge_l

_BRACKET_RE = re.compile(r"\[([^\]]+)\]")


@dataclass
class JustificationCase:
    """One rewritten recommender turn: the dialog before it, the item, the human explanation."""

    dialog_id: str
    user_turns: list[str]
    item_title: str
    reference: str


@dataclass
class JustificationReport:
    dataset: str
    justifier: str
    cases: int
    skipped: int
    metrics: dict[str, float]
    latency_ms: dict[str, float]
    examples: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def read_e_redial(path: Path) -> tuple[list[JustificationCase], int]:
    """Cases from E-ReDial's ``rewrite: 1`` turns; turns naming no movie are counted as skipped."""
    data = json.loads(path.read_text(encoding="utf-8"))
    cases: list[JustificationCase] = []
    skipped = 0
    for dialog in data:
        user_turns: list[str] = []
        for message in dialog["messages"]:
            text = _BRACKET_RE.sub(r"\1", message.get("text", ""))
            if message.get("role") == 0:
                user_turns.append(text)
                continue
            if message.get("rewrite") != 1:
                continue
            movies = [m.strip("[] ") for m in message.get("movies") or []]
            if not movies:
                skipped += 1
                continue
            explained = message.get("reason", "") + message.get("description", "")
            target = next((m for m in movies if m in explained), movies[-1])
            cases.append(JustificationCase(str(dialog.get("conversationId", len(cases))), list(user_turns),
                                           target, text))
    return cases, skipped


def case_likes(dialogue: DialogueManager, tools: CatalogTools, case: JustificationCase) -> list[str]:
    """What the user likes after the case's user turns, as the dialogue manager reads them."""
    state = SessionState(catalog=tools.catalog.name)
    for turn in case.user_turns:
        dialogue.apply(state, tools.interpreter.interpret(turn, False), tools)
    return dialogue.user_likes(state, tools.catalog)


def evaluate_justifier(
    justifier: Justifier, name: str, dialogue: DialogueManager, catalog: str, cases: list[JustificationCase],
    skipped: int, dataset: str, progress: bool = True,
) -> JustificationReport:
    """Write a justification per case and score the lot."""
    tools = dialogue.tools(catalog)
    linker = dialogue.library.linker(tools.catalog.name)
    hypotheses: list[str] = []
    references: list[list[str]] = []
    unsupported = personal = 0
    latencies: list[float] = []
    examples: list[dict[str, Any]] = []
    iterator: Any = cases
    if progress:
        from tqdm import tqdm

        iterator = tqdm(cases, desc=f"justify {name}", unit="case", file=sys.stderr)
    for case in iterator:
        item_id = linker.resolve_title(case.item_title)
        if item_id is None:
            skipped += 1
            continue
        item = tools.catalog[item_id]
        likes = case_likes(dialogue, tools, case)
        user_text = " ".join(case.user_turns)
        start = time.perf_counter()
        text = justifier.justify(JustificationRequest(item=item, user_text=user_text, user_likes=likes))
        latencies.append((time.perf_counter() - start) * 1000)
        # The user's likes count as their own words, as in the LM justifier's own check.
        claims = tools.checker.unsupported_claims(text, item, " ".join([user_text, *likes]))
        unsupported += len(claims)
        personal += tools.checker.refers_to_user(text, likes)
        hypotheses.append(text)
        references.append([case.reference])
        if len(examples) < 10 or claims:
            examples.append({"item": item.title, "likes": likes[:5], "justification": text,
                             "reference": case.reference, "unsupported": claims})
    n = len(hypotheses)
    metrics = {
        "bleu2": round(bleu2(hypotheses, references), 4),
        "rouge_l": round(rouge_l(hypotheses, references), 4),
        "distinct2": round(distinct_n(hypotheses, 2), 4),
        "unsupported_per_100": round(100.0 * unsupported / n, 2) if n else 0.0,
        "personal_share": round(personal / n, 4) if n else 0.0,
    }
    return JustificationReport(
        dataset=dataset, justifier=name, cases=n, skipped=skipped, metrics=metrics,
        latency_ms={"p50": round(percentile(latencies, 50), 1), "p95": round(percentile(latencies, 95), 1)},
        examples=examples[:30],
    )


def format_justification_report(report: JustificationReport) -> str:
    m = report.metrics
    return (
        f"dataset: {report.dataset}   justifier: {report.justifier}   cases: {report.cases}   "
        f"skipped: {report.skipped}\n"
        f"BLEU-2 {m['bleu2']:.4f}   ROUGE-L {m['rouge_l']:.4f}   Distinct-2 {m['distinct2']:.4f}   "
        f"unsupported claims per 100: {m['unsupported_per_100']:.2f}   personal: {m['personal_share']:.2%}\n"
        f"latency per justification: p50 {report.latency_ms['p50']:.0f} ms, p95 {report.latency_ms['p95']:.0f} ms"
    )
