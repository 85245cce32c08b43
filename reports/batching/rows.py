"""Greedy generation time against batch rows on this machine (stop 20): does batching users pay?

Generates exactly 25 new tokens for 3, 6, 9 and 12 prompts of about 250 tokens (distinct texts, shared
chat opening) on the model thread, bfloat16 as the service runs it; median of 5 runs per size.
``RECCHAT_DATA_DIR=... python reports/batching/rows.py``
"""

from __future__ import annotations

import statistics
import time

from chatbot.justify import _batch_inputs
from chatbot.lm import LanguageModel
from retrieval import model_thread
from retrieval.settings import get_settings


def main() -> None:
    lm = LanguageModel(get_settings())
    tok, model = lm.tokenizer, lm.model
    prompts = []
    for n in range(12):
        text = (f"User {n} likes films number {n * 7} and {n * 13}, and said: something tense with a twist, "
                "please. " * 6 + f"Item record {n}: a story of a detective in a city at night. " * 6)
        messages = [{"role": "system", "content": "You explain recommendations in one true sentence."},
                    {"role": "user", "content": text}]
        ids = tok(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
                  add_special_tokens=False)["input_ids"]
        prompts.append(ids[:250])

    def run(rows: int) -> float:
        start = time.perf_counter()
        with lm.lock:
            inputs = _batch_inputs(model, prompts[:rows], tok.pad_token_id, lm.device)
            model.generate(**inputs, max_new_tokens=25, min_new_tokens=25, do_sample=False,
                           pad_token_id=tok.pad_token_id)
        return time.perf_counter() - start

    model_thread.call(run, 3)  # warm up
    for rows in (3, 6, 9, 12):
        times = [model_thread.call(run, rows) for _ in range(5)]
        print(f"{rows} rows: median {statistics.median(times):.2f} s  ({', '.join(f'{t:.2f}' for t in times)})",
              flush=True)


if __name__ == "__main__":
    main()
