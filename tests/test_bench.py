"""`recchat bench turn`, `load` and `retrieval`: they run and report sane figures (no timing asserts)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from chatbot.cli import app
from eval.bench import GENERIC_CONVERSATIONS, load_conversations, p95_crossing, parse_counts
from retrieval.catalog import Catalog
from tests.conftest import wait_until_ready


def run_cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def ordered(summary: dict) -> bool:
    return 0 < summary["p50"] <= summary["p95"] <= summary["p99"] <= summary["max"]


def test_parse_counts_and_p95_crossing() -> None:
    assert parse_counts("1,2, 4") == [1, 2, 4] and parse_counts("7k,100k,1M") == [7000, 100_000, 1_000_000]
    with pytest.raises(ValueError):
        parse_counts("0")
    levels = [{"users": u, "turn_latency_ms": {"p95": p}} for u, p in ((1, 800.0), (2, 4900.0), (4, 5200.0))]
    assert p95_crossing(levels)["users"] == 4 and p95_crossing(levels)["last_below"] == 2
    assert p95_crossing(levels[:2]) == {"threshold_s": 5.0, "users": None, "last_below": 2,
                                        "note": "not reached up to 2 users"}


def test_conversations_fit_the_catalog() -> None:
    movies, source = load_conversations("movies")
    assert len(movies) >= 10 and "scripts" in source
    assert any("Heat (1995)" in turn for convo in movies for turn in convo)
    products, _ = load_conversations("products")
    assert products and all("Heat" not in turn for convo in products for turn in convo)
    assert load_conversations("any_other_catalog")[0] == list(GENERIC_CONVERSATIONS)


def test_bench_retrieval_synthetic_writes_a_report(tmp_path: Path) -> None:
    out = tmp_path / "retrieval.json"
    table = run_cli("bench", "retrieval", "--items", "2000", "--vectors", "synthetic", "--queries", "30",
                    "--no-progress", "--out", str(out))
    assert "2,000" in table and "embedded" in table
    report = json.loads(out.read_text())
    assert report["benchmark"] == "retrieval" and report["backend"] == "embedded"
    assert report["vectors"] == "synthetic" and report["dim"] == 384 and report["k"] == 100
    assert report["items"] == report["stored"] == 2000 and report["complete"] is True
    assert report["build_s"] > 0 and report["items_per_s"] > 0 and report["disk_bytes"] > 0
    for kind in ("query_ms", "raw_query_ms", "filtered_query_ms"):
        assert report[kind]["n"] == 30 and ordered(report[kind]), report[kind]
    # The filter admits ~3% of the items; every filtered answer is one of them.
    assert 0 < report["where_matching_items"] < 200 and report["filtered_results"] == report["where_matching_items"]
    assert 0.5 < report["recall_at_k"] <= 1.0
    assert len(report["load_avg_start"]) == 3 and len(report["load_avg_end"]) == 3


def test_bench_retrieval_uses_the_real_catalog_vectors(movies_small: Catalog, tmp_path: Path) -> None:
    out = tmp_path / "real.json"
    run_cli("bench", "retrieval", "--items", "30", "--catalog", "movies_small", "--queries", "10", "--no-progress",
            "--out", str(out))
    report = json.loads(out.read_text())
    assert report["vectors"] == "catalog" and report["catalog"] == "movies_small" and report["items"] == 30
    assert "$contains" in json.dumps(report["where"]) and 0 < report["where_matching_items"] <= 30
    assert report["filtered_results"] == report["where_matching_items"]
    assert report["recall_at_k"] == 1.0  # k > items: everything comes back


def test_bench_turn_reports_each_stage_and_the_first_justification(movies_small: Catalog, tmp_path: Path) -> None:
    out = tmp_path / "turn.json"
    run_cli("bench", "turn", "--catalog", "movies_small", "--turns", "5", "--no-lm", "--out", str(out))
    report = json.loads(out.read_text())
    assert report["turns"] == 5 and 0 < report["recommend_turns"] <= 5
    assert 0 < report["total_ms"]["p50"] <= report["total_ms"]["p95"]
    assert {"understand", "retrieval", "generation"} <= set(report["split_ms"])
    # The opening line streams first; the first item's justification follows its "1. title" line.
    first, justified = report["first_token_ms"], report["first_justification_ms"]
    assert first["n"] == 5 and first["p50"] > 0
    assert justified["n"] == report["recommend_turns"] and 0 < justified["p50"] <= report["recommend_total_ms"]["p95"]
    # Templates have no forced start: their first piece is already the written text.
    assert report["first_generated_ms"] == justified


@pytest.fixture
def nolm_server(movies_small: Catalog, tmp_path: Path) -> Iterator[str]:
    """``recchat serve --no-lm`` in its own process on the test's data directory (movies_small indexed there)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    env = {**os.environ, "RECCHAT_DEFAULT_CATALOG": "movies_small", "RECCHAT_RATE_LIMIT_PER_MINUTE": "0"}
    log = tmp_path / "serve.log"
    with log.open("w") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "chatbot", "serve", "--no-lm", "--port", str(port)],
                                   stdout=log_file, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, process, log)
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)


def test_bench_load_against_a_live_server(nolm_server: str, tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    table = run_cli("bench", "load", "--url", nolm_server, "--users", "1,2", "--duration", "2", "--out", str(out))
    assert "turns/s" in table and "p95 ms" in table
    report = json.loads(out.read_text())
    assert report["catalog"] == "movies_small"
    assert report["conversations_from"] == "built-in catalog-neutral conversations"
    assert [lv["users"] for lv in report["levels"]] == [1, 2]
    for level in report["levels"]:
        assert level["ok_turns"] > 0 and level["turns"] == level["ok_turns"]
        assert level["requests"] > level["turns"] and level["conversations"] > 0  # sessions created and deleted
        assert level["error_count"] == 0 and level["errors"] == {}
        assert level["elapsed_s"] >= 2 and level["throughput_turns_per_s"] > 0
        assert ordered(level["turn_latency_ms"]), level["turn_latency_ms"]
        assert len(level["load_avg_start"]) == 3
    assert report["p95_crossing"]["threshold_s"] == 5.0 and report["p95_crossing"]["note"]


def test_bench_load_fails_clearly_without_a_server() -> None:
    result = CliRunner().invoke(app, ["bench", "load", "--url", "http://127.0.0.1:9", "--users", "1",
                                      "--duration", "1", "--wait-ready", "0"])
    assert result.exit_code == 1 and "cannot reach http://127.0.0.1:9" in result.output
