"""Benchmarks (figures for the closing notes, never timed tests)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from chatbot.service import Chatbot
from eval.metrics import percentile

# Five-turn conversations, cycled: each turn asks for recommendations or about one.
MOVIE_SCRIPT = (
    "I loved Heat (1995), can you recommend something similar?",
    "Something less violent please",
    "Who directed the second one?",
    "I've seen the first one already",
    "Any comedies from the 90s?",
)
GENERIC_SCRIPT = (
    "What do you recommend for a beginner?",
    "Something cheaper please",
    "Tell me more about the second one",
    "I don't like the first one",
    "Show me something different",
)


@dataclass
class TurnBench:
    turns: int
    recommend_turns: int
    total_ms: dict[str, float]
    first_token_ms: dict[str, float]
    split_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    recommend_total_ms: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def bench_turns(
    bot: Chatbot, catalog: str | None, turns: int = 100, script: tuple[str, ...] | None = None
) -> TurnBench:
    """Run ``turns`` scripted user turns through the service; time each end to end and by stage."""
    name = catalog or bot.settings.default_catalog
    script = script or (MOVIE_SCRIPT if name == "movies" else GENERIC_SCRIPT)
    bot.warm_up(name)
    totals: list[float] = []
    firsts: list[float] = []
    rec_totals: list[float] = []
    stages: dict[str, list[float]] = {"understand": [], "retrieval": [], "ranking": [], "generation": []}
    session = None
    for n in range(turns):
        if n % len(script) == 0:
            if session is not None:
                bot.delete_session(session)
            session = bot.create_session(name).id
        first: list[float] = []
        start = time.perf_counter()

        def on_token(piece: str, start: float = start, first: list[float] = first) -> None:
            if not first and piece.strip():
                first.append((time.perf_counter() - start) * 1000)

        reply = bot.send(session, script[n % len(script)], on_token=on_token)
        totals.append((time.perf_counter() - start) * 1000)
        firsts.append(first[0] if first else totals[-1])
        if reply.act == "recommend":
            rec_totals.append(totals[-1])
        for stage in stages:
            if stage in reply.timings_ms:
                stages[stage].append(reply.timings_ms[stage])
    if session is not None:
        bot.delete_session(session)

    def summary(values: list[float]) -> dict[str, float]:
        return {"p50": round(percentile(values, 50), 1), "p95": round(percentile(values, 95), 1), "n": len(values)}

    device = bot.lm.device if bot.use_lm else "cpu"
    return TurnBench(turns=turns, recommend_turns=len(rec_totals), total_ms=summary(totals),
                     first_token_ms=summary(firsts), split_ms={k: summary(v) for k, v in stages.items() if v},
                     recommend_total_ms=summary(rec_totals), device=device)


SEARCH_QUERIES = (
    "a funny heist movie with a great cast", "something scary for halloween", "a romantic comedy for date night",
    "an animated movie for kids", "a mind-bending sci-fi thriller", "a sturdy phone under 300 dollars",
    "noise cancelling headphones for the train", "a classic western", "a documentary about nature",
    "a feel-good sports movie", "a war movie based on a true story", "a light laptop for students",
)


def bench_search(library, catalog: str | None, queries: int = 200, k: int = 100) -> dict[str, Any]:  # noqa: ANN001
    """Latency of `CandidateGenerator.candidates` for free-text requests (query encoding included)."""
    generator = library.generator(catalog)
    from retrieval.candidates import Preferences

    generator.candidates(Preferences(text="warm up"), k)
    times: list[float] = []
    for n in range(queries):
        text = SEARCH_QUERIES[n % len(SEARCH_QUERIES)] + ("" if n < len(SEARCH_QUERIES) else f" #{n}")
        start = time.perf_counter()
        generator.candidates(Preferences(text=text, recent=text), k)
        times.append((time.perf_counter() - start) * 1000)
    return {"catalog": generator.catalog.name, "items": len(generator.catalog), "queries": queries, "k": k,
            "latency_ms": {"p50": round(percentile(times, 50), 1), "p95": round(percentile(times, 95), 1)}}


def bench_api(base_url: str, conversations: int = 20, turns: int = 5, catalog: str | None = None,
              api_key: str | None = None, script: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Sequential conversations against a running server: latency per message over real HTTP."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    script = script or (MOVIE_SCRIPT if (catalog or "movies") == "movies" else GENERIC_SCRIPT)
    times: list[float] = []
    errors = 0
    with httpx.Client(base_url=base_url, headers=headers, timeout=120) as client:
        for _ in range(conversations):
            created = client.post("/v1/sessions", json={"catalog": catalog} if catalog else {})
            created.raise_for_status()
            sid = created.json()["id"]
            for n in range(turns):
                start = time.perf_counter()
                reply = client.post(f"/v1/sessions/{sid}/messages", json={"text": script[n % len(script)]})
                times.append((time.perf_counter() - start) * 1000)
                errors += reply.status_code != 200
            client.delete(f"/v1/sessions/{sid}")
    return {"conversations": conversations, "turns": turns, "messages": len(times), "errors": errors,
            "latency_ms": {"p50": round(percentile(times, 50), 1), "p95": round(percentile(times, 95), 1),
                           "max": round(max(times), 1)}}
