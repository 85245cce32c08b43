"""One thread for all model computation in a process: embeddings, LM scoring, LM generation, training.

torch's CPU kernels run on OpenMP. libgomp gives every thread that starts a parallel region a pool of
worker threads of its own, kept for as long as that thread lives, and once the pooled threads outnumber
the cores it cuts its spin-wait to almost nothing. Each of the thousands of small parallel regions in a
decoding step then waits for a sleeping worker to wake up. On 2 cores, 20 greedy tokens for 3 rows of 250
took 1.44 s when one thread ran all model work and 2.4 s when two threads took turns
(``reports/model_thread_stop19.txt``). Request threads, the CLI and the streaming justifications therefore
hand their model work to this one thread.

>>> from retrieval import model_thread
>>> model_thread.call(sum, [1, 2, 3])
6
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()
_local = threading.local()


def _mark_model_thread() -> None:
    _local.is_model_thread = True


def _reset_after_fork() -> None:
    # A forked child inherits the executor object but not its thread: submitting to it would wait forever.
    global _executor, _executor_lock
    _executor = None
    _executor_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


def _get_executor() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recchat-model",
                                           initializer=_mark_model_thread)
        return _executor


def on_model_thread() -> bool:
    """Whether the calling thread is the model thread."""
    return bool(getattr(_local, "is_model_thread", False))


def call(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``fn`` on the model thread and return its result (its exception is raised here).

    Called from the model thread itself, ``fn`` runs at once, so model code may nest calls freely.
    """
    if on_model_thread():
        return fn(*args, **kwargs)
    return _get_executor().submit(fn, *args, **kwargs).result()


def submit(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
    """Start ``fn`` on the model thread without waiting for it (a streaming generation, say).

    Jobs run one at a time, in the order submitted. From the model thread itself a plain thread runs
    ``fn`` instead: queued behind its caller, the job could never start while the caller waits for it.
    """
    if not on_model_thread():
        return _get_executor().submit(fn, *args, **kwargs)
    future: Future[T] = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=run, name="recchat-model-nested", daemon=True).start()
    return future
