"""Stop 19: 3-row greedy generation timed on whichever threads run the model (see model_thread_stop19.txt).

Usage: python threads.py main|pool|new|main,pool  (one process per mode; 6 runs of each, medians printed)
"""

import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from chatbot.lm import LanguageModel
from retrieval.settings import get_settings

lm = LanguageModel(get_settings())
tok, model = lm.tokenizer, lm.model
ids = {k: v[:, :250] for k, v in tok(["hello world " * 110] * 3, return_tensors="pt").items()}


def generate() -> float:
    start = time.perf_counter()
    model.generate(**ids, max_new_tokens=20, min_new_tokens=20, do_sample=False, pad_token_id=tok.pad_token_id)
    return round(time.perf_counter() - start, 3)


def on_new_thread() -> float:
    out: list[float] = []
    thread = threading.Thread(target=lambda: out.append(generate()))
    thread.start()
    thread.join()
    return out[0]


pool = ThreadPoolExecutor(1)
runners = {"main": generate, "pool": lambda: pool.submit(generate).result(), "new": on_new_thread}
modes = sys.argv[1].split(",")
times: dict[str, list[float]] = {mode: [] for mode in modes}
for _ in range(6):
    for mode in modes:
        times[mode].append(runners[mode]())
print(sys.argv[1], {mode: (statistics.median(values), values) for mode, values in times.items()})
