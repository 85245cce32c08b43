"""Shared fixtures: real small parts loaded once per test session, a fresh data directory per test."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

for name, value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
                    "GRADIO_ANALYTICS_ENABLED": "False", "ANONYMIZED_TELEMETRY": "False"}.items():
    os.environ.setdefault(name, value)

DATA = Path(__file__).parent / "data"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test gets its own data directory, also for the CLI it spawns."""
    from retrieval.settings import get_settings

    path = tmp_path / "recchat-data"
    for key in list(os.environ):
        if key.startswith("RECCHAT_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("RECCHAT_DATA_DIR", str(path))
    get_settings.cache_clear()
    yield path
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def embedder():  # noqa: ANN201 - retrieval.embedding.Embedder
    """The real all-MiniLM-L6-v2, loaded once."""
    from retrieval.embedding import Embedder

    model = Embedder()
    model.encode(["warm up"])
    return model


@pytest.fixture
def settings(data_dir: Path):  # noqa: ANN201
    from retrieval.settings import Settings

    return Settings(data_dir=data_dir)


@pytest.fixture
def library(settings, embedder):  # noqa: ANN001, ANN201
    from retrieval.index import Library

    return Library(settings, embedder=embedder, log=lambda message: None)


@pytest.fixture
def movies_small(library):  # noqa: ANN001, ANN201
    """A 49-movie slice of the ReDial catalog, indexed in the test's own Chroma."""
    from retrieval.catalog import load_catalog

    catalog = load_catalog(DATA / "movies_small.jsonl", "movies_small")
    library.add(catalog, progress=False)
    return catalog


@pytest.fixture
def products(library):  # noqa: ANN001, ANN201
    from retrieval.catalog import load_catalog

    catalog = load_catalog(DATA / "products.csv", "products")
    library.add(catalog, progress=False)
    return catalog


def shared_or_skip(relative: str) -> Path:
    """A file under ../shared/datasets, or skip the test with a clear message."""
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"dataset not available: {path} (../shared/datasets is absent)")
    return path


@pytest.fixture(scope="session")
def converted_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default LM converted once from GGUF to a safetensors folder, shared by the tests that need it."""
    from chatbot.lm import LanguageModel
    from retrieval.settings import Settings

    lm = LanguageModel(Settings(data_dir=tmp_path_factory.mktemp("lm-cache")))
    return lm.model_folder()


@contextmanager
def live_server(app: Any, wait_ready: bool = True) -> Iterator[str]:  # noqa: ANN401 - an ASGI app
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yield its base URL.

    With ``wait_ready`` it also waits until ``/readyz`` no longer says the service is starting.
    """
    import httpx
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the test server did not start")
        if time.monotonic() > deadline:
            raise TimeoutError("the test server did not start within 60 s")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    try:
        if wait_ready:
            while httpx.get(f"{url}/readyz").json().get("status") in ("starting", "warming_up"):
                if time.monotonic() > deadline:
                    raise TimeoutError("the test server did not warm up within 60 s")
                time.sleep(0.05)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def wait_until_ready(url: str, process: Any, log_path: Path, timeout: float = 120) -> None:  # noqa: ANN401
    """Poll ``{url}/readyz`` until it answers 200; fail with the server's log if the process exits or times out."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, log_path.read_text()
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"serve did not become ready in {timeout:.0f} s"
        time.sleep(0.2)


def run_threads(count: int, target: Any, timeout: float = 120) -> None:  # noqa: ANN401 - Callable[[int], None]
    """Run ``target(i)`` in ``count`` threads; fail if one hangs or raises (errors re-raised here)."""
    errors: list[BaseException] = []

    def run(worker: int) -> None:
        try:
            target(worker)
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)
    assert not any(t.is_alive() for t in threads), "worker threads hung"
    assert not errors, errors
