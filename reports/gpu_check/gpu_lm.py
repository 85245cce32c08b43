"""The LM stage on a CUDA machine: the code path, its outputs against the CPU's, and its latency.

Run on a machine with a GPU (this repo's root as the working directory, ``HF_HUB_OFFLINE=1``):

    python3 reports/gpu_check/gpu_lm.py --out gpu_lm.json

It loads the default LM through `chatbot.lm.LanguageModel` with ``device=cuda`` (bfloat16), then, on the
bundled movies catalog:

- ranking: `LMRanker.score` of 20 candidates (the service's re-ranked head) for a few requests, timed, and
  compared with the same scores on the CPU in float32 (Spearman rank correlation);
- justification: `LMJustifier.stream_all` of three recommendations (one batched generation), timed to the
  first piece and to the end, with how many texts came from the LM and how many fell back to the template;
- training: a few LoRA steps of `chatbot.finetune.train` on synthetic ranking examples drawn from the
  catalog (autocast bfloat16 on CUDA), to show the loss falls and to time a step.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from chatbot.grounding import GroundingChecker  # noqa: E402
from chatbot.justify import JustificationRequest, LMJustifier  # noqa: E402
from chatbot.lm import LanguageModel  # noqa: E402
from chatbot.ranking import LMRanker, key_attributes  # noqa: E402
from retrieval.catalog import Catalog  # noqa: E402
from retrieval.settings import Settings  # noqa: E402

REQUESTS = [
    ("I want a tense crime thriller. I loved Heat (1995).", ["Heat (1995)", "crime", "thriller"]),
    ("Something funny for a family night, we liked Toy Story (1995).", ["Toy Story (1995)", "comedy", "family"]),
    ("A scary horror movie please, not too gory. I liked The Shining (1980).", ["The Shining (1980)", "horror"]),
    ("A romantic drama, something like Titanic (1997).", ["Titanic (1997)", "romance", "drama"]),
    ("Sci-fi with big ideas, like The Matrix (1999).", ["The Matrix (1999)", "science fiction"]),
]


def spearman(a: list[float], b: list[float]) -> float:
    """Rank correlation of two score lists (ties broken by position)."""
    def ranks(v: list[float]) -> list[int]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        out = [0] * len(v)
        for r, i in enumerate(order):
            out[i] = r
        return out
    ra, rb = ranks(a), ranks(b)
    n = len(a)
    return 1 - 6 * sum((x - y) ** 2 for x, y in zip(ra, rb, strict=True)) / (n * (n * n - 1))


def pct(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {"p50": round(statistics.median(values), 1),
            "p95": round(values[min(len(values) - 1, int(0.95 * len(values)))], 1), "n": len(values)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--train-steps", type=int, default=30)
    parser.add_argument("--device", default="cuda", help="cpu: a quick dry run of this script")
    args = parser.parse_args()
    import torch

    def sync() -> None:
        if args.device == "cuda":
            torch.cuda.synchronize()

    report: dict = {"torch": torch.__version__, "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        report["gpu"] = torch.cuda.get_device_name(0)
    data = Path(tempfile.mkdtemp(prefix="recchat-gpu-"))
    movies = Catalog.load_normalised(Path(__file__).resolve().parents[2] / "retrieval" / "data" / "movies.jsonl.gz",
                                     "movies")
    rng = random.Random(0)
    heads = [rng.sample(list(movies.ids), 20) for _ in REQUESTS]

    began = time.perf_counter()
    gpu = LanguageModel(Settings(data_dir=data, device=args.device))
    gpu.model  # noqa: B018 - converts the GGUF once, then loads
    report["load_s"] = round(time.perf_counter() - began, 1)
    report["dtype"] = str(next(gpu.model.parameters()).dtype)
    cpu = LanguageModel(Settings(data_dir=data, device="cpu", lm_dtype="float32"))

    ranker, cpu_ranker = LMRanker(gpu), LMRanker(cpu)
    correlations, rank_ms = [], []
    for (text, _), head in zip(REQUESTS, heads, strict=True):
        items = [movies[i] for i in head]
        on_gpu = ranker.score(text, items)
        correlations.append(round(spearman(on_gpu, cpu_ranker.score(text, items)), 3))
        for _ in range(args.repeats):
            sync()
            t = time.perf_counter()
            ranker.score(text, items)
            sync()
            rank_ms.append((time.perf_counter() - t) * 1000)
    report["ranking"] = {"candidates": 20, "ms": pct(rank_ms), "spearman_gpu_bf16_vs_cpu_fp32": correlations}

    args.out.write_text(json.dumps(report, indent=2) + "\n")  # what is done so far survives a later failure
    checker = GroundingChecker(movies)
    sentences = Settings().justification_sentences  # the service's default
    justifier = LMJustifier(gpu, checker, max_sentences=sentences)
    first_ms, total_ms, outcomes, examples = [], [], {"lm": 0, "fallback": 0}, []
    for k, (text, likes) in enumerate(REQUESTS):
        requests = [JustificationRequest(movies[i], text, likes) for i in heads[k][:3]]
        for r in range(max(2, args.repeats // 4)):
            t = time.perf_counter()
            streams = justifier.stream_all(requests)
            texts = []
            for j, stream in enumerate(streams):
                pieces = []
                for piece in stream:
                    if j == 0 and not pieces:
                        first_ms.append((time.perf_counter() - t) * 1000)
                    pieces.append(piece)
                texts.append("".join(pieces))
            total_ms.append((time.perf_counter() - t) * 1000)
            if r == 0:
                for request, written in zip(requests, texts, strict=True):
                    alone = justifier.justify(request)
                    outcomes["fallback" if justifier.last_outcome == "fallback" else "lm"] += 1
                    examples.append({"item": request.item.title, "together": written, "alone": alone})
    # The same three prompts through plain `generate` (no streamer, no stopping rule), 1 and 48 new tokens:
    # what a token costs the model itself, apart from this code's per-token work.
    _, ids = justifier._prompts([JustificationRequest(movies[i], REQUESTS[0][0], REQUESTS[0][1])
                                 for i in heads[0][:3]])
    ids = {k: v.to(gpu.device) for k, v in ids.items()}
    raw: dict[int, list[float]] = {1: [], 48: []}
    with torch.inference_mode():
        for _ in range(5):
            for n in raw:
                sync()
                t = time.perf_counter()
                gpu.model.generate(**ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                   pad_token_id=gpu.tokenizer.pad_token_id)
                sync()
                raw[n].append((time.perf_counter() - t) * 1000)
    per_token = (statistics.median(raw[48]) - statistics.median(raw[1])) / 47
    report["plain_generate_3_rows"] = {"prompt_tokens": int(ids["input_ids"].shape[1]),
                                       "1_token_ms": pct(raw[1]), "48_tokens_ms": pct(raw[48]),
                                       "ms_per_token": round(per_token, 1)}
    report["justification"] = {"recommendations": 3, "sentences": sentences,
                               "first_piece_ms": pct(first_ms), "all_three_ms": pct(total_ms),
                               "outcomes_alone": outcomes, "examples": examples[:6]}

    args.out.write_text(json.dumps(report, indent=2) + "\n")
    from chatbot.finetune import RankingExample, TrainConfig, train

    class OneCatalog:  # what the example encoder reads from a library: the catalog by name
        def catalog(self, name: str):  # noqa: ANN202
            return movies

    ids = list(movies.ids)
    # The request names the positive's attributes, not its title (a title would be copied: loss 0 at once).
    described = [i for i in ids if key_attributes(movies[i])][: args.train_steps * 4]
    examples_ = [RankingExample("synthetic", f"d{k}", "movies",
                                "I want something " + ", ".join(key_attributes(movies[i])[0][1]), i,
                                rng.sample(ids, 9)) for k, i in enumerate(described)]
    base = LanguageModel(Settings(data_dir=data, device=args.device, adapter="none"))
    config = TrainConfig(steps=args.train_steps, batch=4, save_every=1000)
    out = data / "adapter"
    out.mkdir()
    summary = train(base, OneCatalog(), examples_, out, config, progress=False)  # type: ignore[arg-type]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    report["training"] = {**summary, "first5_loss": [r["loss"] for r in log[:5]],
                          "last5_loss": [r["loss"] for r in log[-5:]],
                          "s_per_step": round(summary["seconds"] / max(1, summary["steps"]), 3)}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
