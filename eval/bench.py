"""Benchmarks (figures for the closing notes, never timed tests)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eval.metrics import percentile

if TYPE_CHECKING:  # the service pulls in the retrieval stack; `recchat bench load` needs none of it
    from collections.abc import Callable

    from chatbot.service import Chatbot

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
    # Recommendation turns only: the first piece of the first item's justification (the reply's opening
    # line and the item's title line stream before it).
    first_justification_ms: dict[str, float] = field(default_factory=dict)
    # Recommendation turns only: the first words of the first justification that the LM wrote (the
    # justification's forced start, "... because", goes out before the model has written anything).
    first_generated_ms: dict[str, float] = field(default_factory=dict)
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
    first_justifications: list[float] = []
    first_generated: list[float] = []
    stages: dict[str, list[float]] = {"understand": [], "retrieval": [], "ranking": [], "generation": []}
    session = None
    for n in range(turns):
        if n % len(script) == 0:
            if session is not None:
                bot.delete_session(session)
            session = bot.create_session(name).id
        first: list[float] = []
        justified: list[float] = []  # [time of the first justification piece], after the "1. " title line
        generated: list[float] = []  # [time of its first piece that is not the forced start]
        heads: list[str] = []
        start = time.perf_counter()

        def on_token(piece: str, start: float = start, first: list[float] = first, justified: list[float] = justified,
                     generated: list[float] = generated, heads: list[str] = heads) -> None:
            now = (time.perf_counter() - start) * 1000
            if not first and piece.strip():
                first.append(now)
            if heads and not generated and piece.strip():
                if justified or not piece.rstrip().endswith(" because"):
                    generated.append(now)
                if not justified:
                    justified.append(now)
            if piece.startswith("1. "):
                heads.append(piece)

        reply = bot.send(session, script[n % len(script)], on_token=on_token)
        totals.append((time.perf_counter() - start) * 1000)
        firsts.append(first[0] if first else totals[-1])
        if reply.act == "recommend":
            rec_totals.append(totals[-1])
            if justified:
                first_justifications.append(justified[0])
            if generated:
                first_generated.append(generated[0])
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
                     recommend_total_ms=summary(rec_totals),
                     first_justification_ms=summary(first_justifications) if first_justifications else {},
                     first_generated_ms=summary(first_generated) if first_generated else {},
                     device=device)


SEARCH_QUERIES = (
    "a funny heist movie with a great cast", "something scary for halloween", "a romantic comedy for date night",
    "an animated movie for kids", "a mind-bending sci-fi thriller", "a sturdy phone under 300 dollars",
    "noise cancelling headphones for the train", "a classic western", "a documentary about nature",
    "a feel-good sports movie", "a war movie based on a true story", "a light laptop for students",
)


def bench_search(library, catalog: str | None, queries: int = 200, k: int = 100) -> dict[str, Any]:  # noqa: ANN001
    """Latency of a free-text search as `recchat search` runs it: linking the items and attribute values
    named in the text, encoding it, and `CandidateGenerator.candidates`."""
    generator = library.generator(catalog)
    linker = library.linker(generator.catalog.name)
    from retrieval.candidates import Preferences
    from retrieval.fusion import named_attributes

    generator.candidates(Preferences(text="warm up"), k)
    times: list[float] = []
    for n in range(queries):
        text = SEARCH_QUERIES[n % len(SEARCH_QUERIES)] + ("" if n < len(SEARCH_QUERIES) else f" #{n}")
        start = time.perf_counter()
        liked = [m.item_id for m in linker.link_items(text)]
        prefs = Preferences(text=text, recent=text, liked=liked, attributes=named_attributes(linker, [text]))
        generator.candidates(prefs, k)
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


# -- load: concurrent simulated users against a running server --------------------------------------------

DIALOGUES_DIR = Path(__file__).parent / "dialogues"

# Catalog-neutral conversations: they name no item, field or value, so they fit any catalog.
GENERIC_CONVERSATIONS: tuple[tuple[str, ...], ...] = (
    ("Something popular please", "More like the first one", "Not that one", "What is the second one about?"),
    ("Can you recommend something?", "Something popular", "Show me something different", "Thanks!"),
    ("Hi there!", "What do most people like?", "I've seen the first one already", "More please"),
    ("Something popular", "Not that one", "More like the second one", "What were they again?"),
)
P95_THRESHOLD_S = 5.0


def load_conversations(catalog: str, folder: Path | None = None) -> tuple[list[tuple[str, ...]], str]:
    """User turns of the scripted dialogues written for ``catalog``; else the catalog-neutral ones.

    Returns the conversations and where they came from. Expectations are ignored: only the user turns are
    replayed, so a script fits whenever its catalog has the same name as the server's.
    """
    import yaml

    folder = folder or DIALOGUES_DIR
    found: list[tuple[str, ...]] = []
    for path in sorted(folder.glob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            continue
        if not isinstance(data, dict) or data.get("catalog") != catalog:
            continue
        turns = tuple(t["user"] for t in data.get("turns") or []
                      if isinstance(t, dict) and isinstance(t.get("user"), str))
        if turns:
            found.append(turns)
    if found:
        return found, f"{len(found)} scripts from {folder.name}/ for catalog {catalog!r}"
    return list(GENERIC_CONVERSATIONS), "built-in catalog-neutral conversations"


def parse_counts(text: str) -> list[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]``; ``"7k"`` -> ``[7000]``, ``"1M"`` -> ``[1000000]``.

    >>> parse_counts("1, 2,4"), parse_counts("7k,100k,1M")
    ([1, 2, 4], [7000, 100000, 1000000])
    """
    out: list[int] = []
    for part in (p.strip().lower() for p in text.split(",")):
        if not part:
            continue
        scale = {"k": 1_000, "m": 1_000_000}.get(part[-1], 1)
        number = float(part[:-1] if scale != 1 else part)
        if number <= 0 or number * scale != int(number * scale):
            raise ValueError(f"not a positive whole number: {part!r}")
        out.append(int(number * scale))
    if not out:
        raise ValueError("no numbers given")
    return out


def _latency_summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "mean": None, "max": None, "n": 0}
    return {"p50": round(percentile(values, 50), 1), "p95": round(percentile(values, 95), 1),
            "p99": round(percentile(values, 99), 1), "mean": round(sum(values) / len(values), 1),
            "max": round(max(values), 1), "n": len(values)}


def _load_average() -> list[float] | None:
    """1/5/15-minute load averages (what `uptime` shows): the machine is shared, so timings need them."""
    import os

    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


@dataclass
class _LevelStats:
    """What the simulated users of one concurrency level recorded."""

    turn_ms: list[float] = field(default_factory=list)
    session_ms: list[float] = field(default_factory=list)
    turns: int = 0
    requests: int = 0
    conversations: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, key: str) -> None:
        self.errors[key] = self.errors.get(key, 0) + 1


def _error_key(response: Any) -> str:  # noqa: ANN401 - an httpx.Response
    """``"429 rate_limited"``: the status and the API's stable error code (``{"error": {"code": ...}}``)."""
    code = ""
    try:
        body = response.json()
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            code = str(body["error"].get("code") or "")
    except ValueError:
        pass
    return f"{response.status_code} {code}".strip()


async def _run_level(base_url: str, users: int, duration_s: float, conversations: list[tuple[str, ...]],
                     catalog: str, headers: dict[str, str], timeout_s: float) -> dict[str, Any]:
    """``users`` coroutines, each replaying conversations back to back until ``duration_s`` is up.

    A turn started before the deadline is waited for (latency is not cut short); throughput divides by the
    whole elapsed time, the drain included.
    """
    import asyncio

    import httpx

    stats = _LevelStats()
    limits = httpx.Limits(max_connections=users + 4, max_keepalive_connections=users + 4)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout_s, limits=limits) as client:

        async def request(method: str, path: str, **kwargs: Any) -> httpx.Response | None:  # noqa: ANN401
            stats.requests += 1
            try:
                response = await client.request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                stats.error(type(exc).__name__)
                return None
            if response.status_code >= 400:
                stats.error(_error_key(response))
            return response

        async def user(index: int, deadline: float) -> None:
            n = index  # users start at different conversations so that they do not move in lockstep
            while time.monotonic() < deadline:
                turns = conversations[n % len(conversations)]
                n += 1
                start = time.perf_counter()
                created = await request("POST", "/v1/sessions", json={"catalog": catalog})
                if created is None or created.status_code != 201:
                    await asyncio.sleep(0.5)  # do not spin on a failing server
                    continue
                stats.session_ms.append((time.perf_counter() - start) * 1000)
                stats.conversations += 1
                session = created.json()["id"]
                for text in turns:
                    if time.monotonic() >= deadline:
                        break
                    start = time.perf_counter()
                    reply = await request("POST", f"/v1/sessions/{session}/messages", json={"text": text})
                    stats.turns += 1
                    if reply is not None and reply.status_code == 200:
                        stats.turn_ms.append((time.perf_counter() - start) * 1000)
                    elif reply is not None and reply.status_code == 429:
                        await asyncio.sleep(min(float(reply.headers.get("Retry-After", 1)), 5.0))
                await request("DELETE", f"/v1/sessions/{session}")  # keep the server's session store small

        load_start = _load_average()
        started = time.perf_counter()
        deadline = time.monotonic() + duration_s
        await asyncio.gather(*(user(i, deadline) for i in range(users)))
        elapsed = time.perf_counter() - started
    ok = len(stats.turn_ms)
    return {
        "users": users, "duration_s": duration_s, "elapsed_s": round(elapsed, 2),
        "drain_s": round(max(0.0, elapsed - duration_s), 2),
        "conversations": stats.conversations, "turns": stats.turns, "ok_turns": ok, "requests": stats.requests,
        "throughput_turns_per_s": round(ok / elapsed, 3) if elapsed > 0 else 0.0,
        "throughput_requests_per_s": round(stats.requests / elapsed, 3) if elapsed > 0 else 0.0,
        "turn_latency_ms": _latency_summary(stats.turn_ms),
        "session_create_ms": _latency_summary(stats.session_ms),
        "errors": dict(sorted(stats.errors.items())), "error_count": sum(stats.errors.values()),
        "load_avg_start": load_start, "load_avg_end": _load_average(),
    }


def p95_crossing(levels: list[dict[str, Any]], threshold_s: float = P95_THRESHOLD_S) -> dict[str, Any]:
    """The smallest tested concurrency whose turn p95 is above the threshold (None when never reached).

    >>> p95_crossing([{"users": 1, "turn_latency_ms": {"p95": 900.0}}, {"users": 4, "turn_latency_ms": {"p95": 6e3}}])
    {'threshold_s': 5.0, 'users': 4, 'last_below': 1, 'note': 'p95 crosses 5.0 s between 1 and 4 users'}
    """
    limit_ms = threshold_s * 1000
    below = None
    for level in sorted(levels, key=lambda lv: lv["users"]):
        p95 = level["turn_latency_ms"]["p95"]
        if p95 is not None and p95 > limit_ms:
            n = level["users"]
            where = f"between {below} and {n} users" if below else f"already at {n} user{'s' if n > 1 else ''}"
            return {"threshold_s": threshold_s, "users": level["users"], "last_below": below,
                    "note": f"p95 crosses {threshold_s} s {where}"}
        if p95 is not None:
            below = level["users"]
    top = max((lv["users"] for lv in levels), default=0)
    return {"threshold_s": threshold_s, "users": None, "last_below": below,
            "note": f"not reached up to {top} users"}


class BenchError(RuntimeError):
    """The benchmark cannot run (server unreachable, not ready, refused the session)."""


def _preflight(base_url: str, catalog: str | None, headers: dict[str, str], wait_ready_s: float,
               timeout_s: float) -> tuple[str, dict[str, Any] | None]:
    """Wait for ``/readyz``; return the catalog sessions use (the server's default when not named)."""
    import httpx

    deadline = time.monotonic() + wait_ready_s
    readiness: dict[str, Any] | None = None
    with httpx.Client(base_url=base_url, headers=headers, timeout=timeout_s) as client:
        while True:
            try:
                got = client.get("/readyz")
                readiness = got.json() if got.headers.get("content-type", "").startswith("application/json") else None
                if got.status_code == 200:
                    break
                why = f"/readyz answered {got.status_code}: {readiness}"
            except httpx.HTTPError as exc:
                why = f"cannot reach {base_url}: {type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                raise BenchError(why)
            time.sleep(1.0)
        created = client.post("/v1/sessions", json={"catalog": catalog} if catalog else {})
        if created.status_code != 201:
            raise BenchError(f"creating a session failed: {_error_key(created)} {created.text[:200]}")
        body = created.json()
        client.delete(f"/v1/sessions/{body['id']}")
        # One turn before timing anything: the first turn of a process loads lazily built parts.
        warm = client.post("/v1/sessions", json={"catalog": body["catalog"]})
        if warm.status_code == 201:
            client.post(f"/v1/sessions/{warm.json()['id']}/messages", json={"text": "Something popular please"})
            client.delete(f"/v1/sessions/{warm.json()['id']}")
    return str(body["catalog"]), readiness


def bench_load(base_url: str, users: list[int], duration_s: float = 30.0, catalog: str | None = None,
               api_key: str | None = None, timeout_s: float = 120.0, threshold_s: float = P95_THRESHOLD_S,
               wait_ready_s: float = 30.0, pause_s: float = 2.0,
               on_level: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Simulated users replaying scripted conversations against a running server, one level per user count.

    Each user creates a fresh session per conversation and sends its turns back to back (no think time).
    """
    import asyncio
    import os
    import platform
    from datetime import UTC, datetime

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    base_url = base_url.rstrip("/")
    used_catalog, readiness = _preflight(base_url, catalog, headers, wait_ready_s, timeout_s)
    conversations, source = load_conversations(used_catalog)
    report: dict[str, Any] = {
        "benchmark": "load", "url": base_url, "catalog": used_catalog, "conversations_from": source,
        "conversation_count": len(conversations), "users": users, "duration_s": duration_s,
        "request_timeout_s": timeout_s, "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "client": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "server_readiness": readiness, "load_avg_start": _load_average(), "levels": [],
    }
    for n, count in enumerate(users):
        if n:
            time.sleep(pause_s)  # let the previous level's connections close
        level = asyncio.run(_run_level(base_url, count, duration_s, conversations, used_catalog, headers, timeout_s))
        report["levels"].append(level)
        if on_level is not None:
            on_level(level)
    report["load_avg_end"] = _load_average()
    report["p95_crossing"] = p95_crossing(report["levels"], threshold_s)
    return report


def format_load_table(report: dict[str, Any]) -> str:
    """The levels of a load report as a plain-text table."""

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:,.0f}"

    lines = [f"{'users':>5} {'turns':>6} {'turns/s':>8} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
             f"{'errors':>6}  load avg"]
    for lv in report["levels"]:
        lat = lv["turn_latency_ms"]
        errors = ", ".join(f"{k}: {v}" for k, v in lv["errors"].items())
        lines.append(f"{lv['users']:>5} {lv['ok_turns']:>6} {lv['throughput_turns_per_s']:>8.2f} "
                     f"{lv['throughput_requests_per_s']:>7.2f} {ms(lat['p50']):>8} {ms(lat['p95']):>8} "
                     f"{ms(lat['p99']):>8} {lv['error_count']:>6}  {lv['load_avg_start']} -> {lv['load_avg_end']}"
                     + (f"  ({errors})" if errors else ""))
    if "p95_crossing" in report:
        lines.append(report["p95_crossing"]["note"])
    return "\n".join(lines)


# -- retrieval: Chroma index build and query latency at a catalog size -------------------------------------

SYNTHETIC_DIM = 384  # all-MiniLM-L6-v2
SYNTHETIC_CLUSTERS = 100
# Per-dimension noise around a cluster centre: cosine to the centre about 0.65, so neighbours are topical
# rather than uniformly random (uniform random unit vectors in 384 dims make HNSW look unrealistically bad).
SYNTHETIC_NOISE = 0.06
CATEGORIES = tuple(f"c{n:02d}" for n in range(20))
TAGS = tuple(f"t{n:02d}" for n in range(30))
# Same shape as `Constraints.chroma_where` builds: an include list plus a price range (about 3% of items).
SYNTHETIC_WHERE: dict[str, Any] = {"$and": [{"category": {"$in": ["c01", "c02"]}}, {"price": {"$lte": 300.0}}]}
RECALL_MAX_ITEMS = 200_000  # exact top-k needs every vector in memory; 1M x 384 floats is not worth it


class VectorSource:
    """Items to index: ids, unit vectors, Chroma metadata and documents, in chunks; plus query vectors."""

    items: int
    kind: str
    where: dict[str, Any]
    matching: int  # items the ``where`` filter admits

    def chunk(self, start: int, end: int) -> tuple[list[str], Any, list[dict[str, Any]], list[str]]:
        raise NotImplementedError

    def queries(self, count: int, seed: int) -> Any:  # noqa: ANN401 - np.ndarray
        raise NotImplementedError


def _unit(matrix: Any) -> Any:  # noqa: ANN401 - np.ndarray in, np.ndarray out
    import numpy as np

    return (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)


class SyntheticSource(VectorSource):
    """Random unit vectors around fixed cluster centres (seeded), with synthetic catalog metadata.

    Chunks are generated independently from ``(seed, start)``, so 1M items never sit in memory at once and
    the same seed always gives the same items.
    """

    kind = "synthetic"

    def __init__(self, items: int, seed: int = 0, dim: int = SYNTHETIC_DIM) -> None:
        import numpy as np

        self.items, self.seed, self.dim = items, seed, dim
        self.centres = _unit(np.random.default_rng([seed, 0]).standard_normal((SYNTHETIC_CLUSTERS, dim)))
        self.where = SYNTHETIC_WHERE
        self.matching = 0

    def chunk(self, start: int, end: int) -> tuple[list[str], Any, list[dict[str, Any]], list[str]]:
        import numpy as np

        from retrieval.store import HASH_KEY

        size = end - start
        rng = np.random.default_rng([self.seed, 1, start])
        cluster = rng.integers(0, SYNTHETIC_CLUSTERS, size)
        vectors = _unit(self.centres[cluster] + SYNTHETIC_NOISE * rng.standard_normal((size, self.dim)))
        category = rng.integers(0, len(CATEGORIES), size)
        price = np.round(rng.uniform(5.0, 1000.0, size), 2)
        year = rng.integers(1950, 2026, size)
        tags = rng.integers(0, len(TAGS), (size, 2))
        ids, metas, docs = [], [], []
        for row in range(size):
            number = start + row
            cat, item_tags = CATEGORIES[category[row]], sorted({TAGS[t] for t in tags[row]})
            ids.append(f"s{number}")
            metas.append({"category": cat, "price": float(price[row]), "year": int(year[row]), "tags": item_tags,
                          "title": f"Item {number}", HASH_KEY: f"{number:016x}"})
            docs.append(f"Item {number}. Category: {cat}. Tags: {', '.join(item_tags)}. Cluster {cluster[row]}.")
            self.matching += cat in ("c01", "c02") and price[row] <= 300.0
        return ids, vectors, metas, docs

    def queries(self, count: int, seed: int) -> Any:  # noqa: ANN401
        import numpy as np

        rng = np.random.default_rng([seed, 2])
        centres = self.centres[rng.integers(0, SYNTHETIC_CLUSTERS, count)]
        return _unit(centres + SYNTHETIC_NOISE * rng.standard_normal((count, self.dim)))


class CatalogSource(VectorSource):
    """The first ``items`` items of a real indexed catalog: its stored vectors, metadata and documents."""

    kind = "catalog"

    def __init__(self, library: Any, catalog: str | None, items: int) -> None:  # noqa: ANN401 - Library
        import numpy as np

        from retrieval.store import HASH_KEY

        cat = library.catalog(catalog)  # the bundled demo catalog is indexed on first use
        ids, vectors = library.store.vectors(cat.name)
        row = {item_id: n for n, item_id in enumerate(ids)}
        chosen = [item for item in cat.items if item.id in row][:items]
        self.name = cat.name
        self.items = len(chosen)
        self.ids = [item.id for item in chosen]
        self.vectors = _unit(np.asarray(vectors[[row[i] for i in self.ids]], dtype=np.float32))
        self.metas = [{**item.metadata(), HASH_KEY: item.content_hash()} for item in chosen]
        self.docs = [item.document() for item in chosen]
        self.where, self.matching = _catalog_where(self.metas)

    def chunk(self, start: int, end: int) -> tuple[list[str], Any, list[dict[str, Any]], list[str]]:
        return self.ids[start:end], self.vectors[start:end], self.metas[start:end], self.docs[start:end]

    def queries(self, count: int, seed: int) -> Any:  # noqa: ANN401
        """Blends of two random items, as a conversation mixing two liked items would ask."""
        import numpy as np

        rng = np.random.default_rng([seed, 2])
        pairs = rng.integers(0, self.items, (count, 2))
        return _unit(self.vectors[pairs[:, 0]] + self.vectors[pairs[:, 1]] + 1e-6)


def _catalog_where(metas: list[dict[str, Any]]) -> tuple[dict[str, Any], int]:
    """A realistic filter for a real catalog: its most common list value (``$contains``), as a user's
    "a comedy" becomes; plus ``>=`` the median of its most common number field when it has one."""
    from collections import Counter

    values = Counter((k, v) for m in metas for k, vs in m.items() if isinstance(vs, list) for v in vs)
    numbers = Counter(k for m in metas for k, v in m.items() if isinstance(v, int | float) and not isinstance(v, bool))
    clauses: list[dict[str, Any]] = []
    if values:
        (field_name, value), _ = values.most_common(1)[0]
        clauses.append({field_name: {"$contains": value}})
    if numbers:
        field_name = numbers.most_common(1)[0][0]
        ordered = sorted(m[field_name] for m in metas if field_name in m)
        clauses.append({field_name: {"$gte": ordered[len(ordered) // 2]}})
    if not clauses:
        return {}, len(metas)
    where = clauses[0] if len(clauses) == 1 else {"$and": clauses}

    def admits(meta: dict[str, Any]) -> bool:
        for clause in clauses:
            name, condition = next(iter(clause.items()))
            op, wanted = next(iter(condition.items()))
            got = meta.get(name)
            if op == "$contains" and not (isinstance(got, list) and wanted in got):
                return False
            if op == "$gte" and not (isinstance(got, int | float) and got >= wanted):
                return False
        return True

    return where, sum(admits(m) for m in metas)


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bench_retrieval(items: int, chroma_url: str | None = None, queries: int = 200, k: int = 100,
                    vectors: str = "auto", catalog: str | None = None, seed: int = 0,
                    time_limit_s: float | None = None, progress: bool = True,
                    library: Any = None) -> dict[str, Any]:  # noqa: ANN401 - retrieval.index.Library
    """Build a Chroma collection of ``items`` items through `VectorStore.upsert` and time k-NN queries.

    ``vectors``: ``catalog`` (the real catalog's stored vectors; ``items`` is capped at its size),
    ``synthetic``, or ``auto`` (the catalog when it has at least ``items`` items, else synthetic).
    Embedded Chroma (a PersistentClient in a temporary folder) unless ``chroma_url`` names a server.
    A build stopped by ``time_limit_s`` is reported as incomplete, with what was indexed by then.
    """
    import shutil
    import sys
    import tempfile
    import uuid
    from datetime import UTC, datetime

    import numpy as np

    from retrieval.settings import Settings, get_settings
    from retrieval.store import MAX_BATCH, VectorStore, make_chroma_client

    source: VectorSource
    if vectors in ("auto", "catalog"):
        if library is None:
            from retrieval.index import Library

            library = Library(get_settings())
        size = len(library.catalog(catalog))
        if vectors == "catalog" or size >= items:
            source = CatalogSource(library, catalog, items)
        else:
            source = SyntheticSource(items, seed)
    else:
        source = SyntheticSource(items, seed)
    n = source.items

    tmp = Path(tempfile.mkdtemp(prefix="recchat-bench-"))
    settings = Settings(data_dir=tmp, chroma_url=chroma_url or "")
    store = VectorStore(make_chroma_client(settings))
    name = f"bench_{n}_{uuid.uuid4().hex[:8]}"
    report: dict[str, Any] = {
        "benchmark": "retrieval", "backend": "server" if chroma_url else "embedded", "chroma_url": chroma_url,
        "vectors": source.kind, "catalog": getattr(source, "name", None), "items_requested": items,
        "dim": SYNTHETIC_DIM, "k": k, "queries": queries, "seed": seed, "batch_size": MAX_BATCH,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"), "load_avg_start": _load_average(),
    }
    keep = n <= RECALL_MAX_ITEMS
    kept: list[Any] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc=f"indexing {n:,} items", unit="item", file=sys.stderr, smoothing=0.05)
    try:
        build = 0.0
        indexed = 0
        wall_start = time.perf_counter()
        for start in range(0, n, MAX_BATCH):
            if time_limit_s is not None and time.perf_counter() - wall_start > time_limit_s:
                break
            ids, vecs, metas, docs = source.chunk(start, min(n, start + MAX_BATCH))
            began = time.perf_counter()
            store.upsert(name, ids, vecs, metas, docs)  # the indexing code path, batch by batch
            build += time.perf_counter() - began
            indexed += len(ids)
            if keep:
                kept.append(vecs)
            if bar is not None:
                bar.update(len(ids))
        if bar is not None:
            bar.close()
        stored = store.count(name)
        report.update({
            "items": indexed, "stored": stored, "complete": indexed == n,
            "build_s": round(build, 2), "build_wall_s": round(time.perf_counter() - wall_start, 2),
            "items_per_s": round(indexed / build, 1) if build else None,
        })

        qvecs = source.queries(queries + 1, seed)
        began = time.perf_counter()
        store.query(name, qvecs[0], k)  # the first query loads the index: reported on its own
        report["first_query_ms"] = round((time.perf_counter() - began) * 1000, 1)

        def timed(fn: Any) -> list[float]:  # noqa: ANN401
            out = []
            for vec in qvecs[1:]:
                began = time.perf_counter()
                fn(vec)
                out.append((time.perf_counter() - began) * 1000)
            return out

        col = store.collection(name)
        report["query_ms"] = _latency_summary(timed(lambda v: store.query(name, v, k)))
        report["raw_query_ms"] = _latency_summary(timed(
            lambda v: col.query(query_embeddings=[v], n_results=min(k, stored), include=["distances"])))
        report["filtered_query_ms"] = _latency_summary(timed(lambda v: store.query(name, v, k, source.where)))
        # `VectorStore.query` looks the collection up and counts it on every call: time those parts on their own.
        report["count_ms"] = _latency_summary(timed(lambda v: store.collection(name).count()))
        report["where"] = source.where
        report["where_matching_items"] = int(source.matching)
        got = store.query(name, qvecs[1], k, source.where)
        report["filtered_results"] = len(got)
        if keep and kept:
            # Recall@k of Chroma's HNSW against exact cosine top-k, on up to 50 queries.
            matrix = np.concatenate(kept)
            ids_all = [f"s{i}" for i in range(indexed)] if source.kind == "synthetic" else source.ids[:indexed]
            hits = []
            for vec in qvecs[1:51]:
                exact = {ids_all[j] for j in np.argsort(-(matrix @ vec))[:k]}
                found = {i for i, _ in store.query(name, vec, k)}
                hits.append(len(exact & found) / max(1, min(k, indexed)))
            report["recall_at_k"] = round(float(np.mean(hits)), 4)
        if not chroma_url:
            report["disk_bytes"] = _dir_bytes(tmp)
    finally:
        if bar is not None:
            bar.close()
        try:
            store.drop(name)
        except Exception:  # noqa: BLE001 - cleanup must not hide the benchmark's own error
            pass
        _release_embedded()
        shutil.rmtree(tmp, ignore_errors=True)
    report["load_avg_end"] = _load_average()
    return report


def _release_embedded() -> None:
    """Forget chromadb's cached embedded systems so that the benchmark's temporary folder can be removed."""
    try:
        from chromadb.api.shared_system_client import SharedSystemClient

        SharedSystemClient.clear_system_cache()
    except Exception:  # noqa: BLE001 - best effort across chromadb versions
        pass


def format_retrieval_table(reports: list[dict[str, Any]]) -> str:
    """Retrieval reports as a plain-text table."""

    def pair(summary: dict[str, Any]) -> str:
        return f"{summary['p50']:.1f} / {summary['p95']:.1f}" if summary.get("p50") is not None else "-"

    lines = [f"{'items':>9} {'backend':>8} {'vectors':>9} {'build s':>8} {'items/s':>8} {'query p50/p95 ms':>17} "
             f"{'raw p50/p95':>13} {'filtered p50/p95':>17} {'recall':>6}"]
    for r in reports:
        note = "" if r["complete"] else "  (build stopped by the time limit)"
        recall = f"{r['recall_at_k']:.3f}" if "recall_at_k" in r else "-"
        lines.append(f"{r['items']:>9,} {r['backend']:>8} {r['vectors']:>9} {r['build_s']:>8.1f} "
                     f"{r['items_per_s'] or 0:>8.0f} {pair(r['query_ms']):>17} {pair(r['raw_query_ms']):>13} "
                     f"{pair(r['filtered_query_ms']):>17} {recall:>6}{note}")
    return "\n".join(lines)
