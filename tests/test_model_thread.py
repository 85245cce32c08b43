"""The model thread: one thread runs all model work, in order, and nested use never deadlocks."""

from __future__ import annotations

import threading

import pytest

from retrieval import model_thread
from retrieval.embedding import Embedder


def test_call_runs_on_one_thread_and_raises_errors_in_the_caller() -> None:
    names = {model_thread.call(lambda: threading.current_thread().name) for _ in range(5)}
    assert len(names) == 1 and next(iter(names)).startswith("recchat-model")
    assert not model_thread.on_model_thread()
    assert model_thread.call(model_thread.on_model_thread)
    with pytest.raises(ZeroDivisionError):
        model_thread.call(lambda: 1 / 0)


def test_jobs_run_in_order_and_nested_use_does_not_deadlock() -> None:
    order: list[int] = []
    futures = [model_thread.submit(order.append, n) for n in range(20)]
    for future in futures:
        future.result(timeout=10)
    assert order == list(range(20))

    def nested() -> tuple[int, int]:
        inline = model_thread.call(lambda: 41) + 1  # runs at once on the same thread
        # A job submitted from the model thread and awaited there would never start if it were queued.
        awaited = model_thread.submit(lambda: 7).result(timeout=10)
        return inline, awaited

    assert model_thread.call(nested) == (42, 7)


def test_embeddings_are_computed_on_the_model_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    embedder = Embedder()
    seen: list[str] = []
    encode = embedder.model.encode

    def recording_encode(*args: object, **kwargs: object) -> object:
        seen.append(threading.current_thread().name)
        return encode(*args, **kwargs)

    monkeypatch.setattr(embedder.model, "encode", recording_encode)
    vectors = embedder.encode(["a tense crime film", "a rugged phone"])
    assert vectors.shape == (2, embedder.dimension)
    assert seen and all(name.startswith("recchat-model") for name in seen)
