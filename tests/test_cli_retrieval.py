"""`recchat index` and `recchat search` end to end: the real entry point, embedded Chroma and a Chroma server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import DATA

RECCHAT = [sys.executable, "-m", "chatbot"]


def run(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*RECCHAT, *args], capture_output=True, text=True, timeout=300,
                            env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"recchat {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def test_index_with_conversations_fits_the_fusions(data_dir: Path) -> None:
    from retrieval.candidates import FEATURES
    from retrieval.priors import InteractionPriors

    out = run("index", "--catalog", str(DATA / "products.csv"), "--name", "shop",
              "--dialogs", str(DATA / "shop_dialogs.jsonl"))
    assert "fitting fusion weights" in out.stderr and "learned" in out.stderr
    priors = InteractionPriors.load(data_dir / "catalogs" / "shop.priors.json.gz")
    assert priors.scorer["features"] == list(FEATURES) and set(priors.weights) == set(FEATURES)
    assert priors.dialogs == len((DATA / "shop_dialogs.jsonl").read_text().splitlines())


def test_index_then_search_json() -> None:
    out = run("index", "--catalog", str(DATA / "products.csv"), "--name", "shop")
    assert "catalog 'shop': 20 items; embedded 20" in out.stdout
    again = run("index", "--catalog", str(DATA / "products.csv"), "--name", "shop")
    assert "embedded 0, unchanged 20" in again.stdout

    found = run("search", "noise cancelling headphones for commuting", "--catalog", "shop", "-k", "3", "--json")
    results = json.loads(found.stdout)
    assert len(results) == 3
    assert {"id", "title", "score", "signals"} <= set(results[0])
    assert results[0]["id"] in {"p-008", "p-009", "p-010"}

    filtered = run("search", "phone", "--catalog", "shop", "-k", "10", "--json", "--range", "price=:300",
                   "--include", "category=phone")
    assert {r["id"] for r in json.loads(filtered.stdout)} == {"p-001", "p-002", "p-005", "p-007"}

    table = run("search", "a waterproof speaker", "--catalog", "shop", "-k", "2")
    assert "JBL Flip 6" in table.stdout


def test_cli_errors_are_clear() -> None:
    bad = run("index", "--catalog", str(DATA / "nope.csv"), check=False)
    assert bad.returncode == 1 and "catalog file not found" in bad.stderr and "Traceback" not in bad.stderr
    unknown = run("search", "x", "--catalog", "does_not_exist", check=False)
    assert unknown.returncode == 1 and "unknown catalog 'does_not_exist'" in unknown.stderr
    empty = run("search", "   ", check=False)
    assert empty.returncode == 2 and "empty" in empty.stderr
    badrange = run("search", "x", "--range", "price=cheap", check=False)
    assert badrange.returncode == 2 and "FIELD=MIN:MAX" in badrange.stderr
    typo = run("search", "x", env={"RECCHAT_DATADIR": "/tmp/x"}, check=False)
    assert typo.returncode != 0 and "RECCHAT_DATADIR" in typo.stderr


def test_index_reports_bad_rows_and_fails_on_empty(tmp_path: Path) -> None:
    partial = run("index", "--catalog", str(DATA / "products_bad.jsonl"), "--name", "partial")
    assert "skipped: " in partial.stderr and "products_bad.jsonl:2" in partial.stderr
    assert "2 items" in partial.stdout
    empty = tmp_path / "empty.csv"
    empty.write_text("name,price\n")
    failed = run("index", "--catalog", str(empty), check=False)
    assert failed.returncode == 1 and "no catalog rows" in failed.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def chroma_server(tmp_path: Path) -> Iterator[str]:
    """A real `chroma run` server on 127.0.0.1."""
    port = _free_port()
    chroma = Path(sys.executable).with_name("chroma")
    proc = subprocess.Popen([str(chroma), "run", "--path", str(tmp_path / "chroma-server"), "--host", "127.0.0.1",
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail("chroma server exited at start-up")
                time.sleep(0.3)
        else:
            pytest.fail("chroma server did not start within 60 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.mark.slow
def test_same_indexing_and_search_through_chroma_server(chroma_server: str, data_dir: Path) -> None:
    env = {"RECCHAT_CHROMA_URL": chroma_server}
    out = run("index", "--catalog", str(DATA / "products.csv"), "--name", "shop", env=env)
    assert "embedded 20" in out.stdout
    assert not (data_dir / "chroma").exists()  # nothing went to the embedded store
    found = json.loads(run("search", "rugged phone", "--catalog", "shop", "-k", "3", "--json", env=env).stdout)
    assert found[0]["id"] in {"p-001", "p-005"}
    again = run("index", "--catalog", str(DATA / "products.csv"), "--name", "shop", env=env)
    assert "embedded 0, unchanged 20" in again.stdout
