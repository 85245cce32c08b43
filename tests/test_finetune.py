"""Fine-tuning: the packed training score, the data rules, `recchat train` end to end, the shipped adapter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DATA, SHARED, shared_or_skip


def test_packed_training_score_equals_the_ranker_score(settings, converted_lm, movies_small) -> None:
    """The loss is computed on exactly the score the service ranks by (same layout, same numbers)."""
    import torch

    from chatbot.finetune import packed_scores
    from chatbot.lm import LanguageModel
    from chatbot.ranking import LMRanker

    lm = LanguageModel(settings.model_copy(update={"lm_model": str(converted_lm), "adapter": "none",
                                                   "lm_dtype": "float32"}))  # compared to 1e-3
    ranker = LMRanker(lm)
    items = [movies_small[i] for i in movies_small.ids[:8]]
    context = "I like Heat. Something tense with a heist, not too violent"
    expected = ranker.score(context, items)
    with torch.no_grad():
        got = packed_scores(lm.model, ranker.prompt_ids(context), [ranker.item_ids(i) for i in items], lm.device)
    assert got.tolist() == pytest.approx(expected, abs=1e-3)
    assert len(set(round(v, 3) for v in expected)) > 1  # the items are told apart


def test_fusion_weight_follows_what_the_lm_knows() -> None:
    from chatbot.finetune import HeldoutTurn, fit_lm_weight, heldout_metrics

    retrieval = [float(20 - i) for i in range(20)]
    # The target sits at position 15 of the retrieval order; an informative LM scores it highest.
    informative = [HeldoutTurn(retrieval, [0.0] * 15 + [5.0] + [0.0] * 4, [15], 0) for _ in range(5)]
    weight, table = fit_lm_weight(informative)
    assert weight > 0
    assert heldout_metrics(informative, weight)["recall@10"] == 1.0
    assert heldout_metrics(informative, 0.0)["recall@10"] == 0.0
    # A misleading LM (it prefers everything but the target, which retrieval ranks first) gets no weight.
    misleading = [HeldoutTurn(retrieval, [0.0] + [float(i) for i in range(1, 20)], [0], 1) for _ in range(5)]
    weight, _ = fit_lm_weight(misleading)
    assert weight == 0.0
    assert heldout_metrics(misleading, 0.0) == {"recall@1": 0.5, "recall@10": 0.5, "samples": 10}
    assert set(table["grid"]) >= {"0.0", "1.0"}


def test_held_out_slice_is_stable_and_near_its_fraction() -> None:
    from chatbot.finetune import heldout

    ids = [str(i) for i in range(5000)]
    share = sum(heldout(i, 0.1) for i in ids) / len(ids)
    assert 0.08 < share < 0.12
    assert [heldout(i, 0.1) for i in ids[:50]] == [heldout(i, 0.1) for i in ids[:50]]


def test_test_split_dialogs_are_refused(library, movies_small, tmp_path: Path) -> None:
    """A training file that contains ReDial test-split conversations stops the run before any training."""
    from chatbot.finetune import DialogSource, TrainingDataError, forbidden_ids, load_dataset

    test_split = shared_or_skip("redial/official/test_data.jsonl")
    sneaky = tmp_path / "train_with_test.jsonl"
    with open(test_split, encoding="utf-8") as fh:
        sneaky.write_text("".join(next(fh) for _ in range(3)))
    source = DialogSource("redial", movies_small.name, [sneaky], fmt="redial")
    with pytest.raises(TrainingDataError, match="forbidden"):
        load_dataset(library, [source], forbidden_ids([test_split]), 0.1)


def test_no_test_split_conversation_reaches_the_training_data() -> None:
    """The default training sources hold no conversation of the ReDial official test split."""
    from chatbot.finetune import default_sources, forbidden_ids

    test_ids = forbidden_ids([shared_or_skip("redial/official/test_data.jsonl")])
    assert len(test_ids) == 1342
    sources = default_sources(SHARED)
    training_files = [p for s in sources if s.split != "heldout" for p in s.paths if s.fmt == "redial"]
    assert len(training_files) == 4 and all("official" not in str(p) for p in training_files)
    training_ids = forbidden_ids(training_files)
    assert len(training_ids) == 2270  # the de-duplicated union of the train-split files
    assert not training_ids & test_ids


def _recchat(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "chatbot", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=Path(__file__).resolve().parents[1])


def test_ctrl_c_stops_recchat_train_after_a_step_with_its_checkpoint(products, converted_lm, tmp_path: Path) -> None:
    """Training runs on the model thread; Ctrl-C (SIGINT) ends it after the step under way, saved."""
    import signal
    import time

    import torch

    lines = (DATA / "shop_dialogs.jsonl").read_text().splitlines()
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(lines[:3]) + "\n")
    out = tmp_path / "adapter"
    env = {**os.environ, "RECCHAT_LM_MODEL": str(converted_lm), "OMP_NUM_THREADS": "2"}
    run = subprocess.Popen(
        [sys.executable, "-m", "chatbot", "train", "--steps", "500", "--batch", "1", "--out", str(out), "--dialogs",
         str(train), "--catalog", "products", "--heldout-turns", "0", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=Path(__file__).resolve().parents[1],
        # A suite started in the background (nohup, `cmd &`) ignores SIGINT, and the child would inherit that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    log = out / "train_log.jsonl"
    try:
        deadline = time.monotonic() + 300
        while run.poll() is None and time.monotonic() < deadline:
            if log.is_file() and len(log.read_text().splitlines()) >= 2:
                break
            time.sleep(0.2)
        assert run.poll() is None, run.communicate()[1][-3000:]
        run.send_signal(signal.SIGINT)
        _, stderr = run.communicate(timeout=120)
    finally:
        if run.poll() is None:  # never leave a training process behind a failed test
            run.kill()
            run.communicate()
    assert run.returncode == 130, stderr[-3000:]
    steps = len(log.read_text().splitlines())
    assert 2 <= steps < 500
    assert f"stopped after step {steps}" in stderr
    state = torch.load(out / "checkpoint" / "trainer_state.pt", weights_only=False)
    assert state["step"] == steps  # the same command resumes from the last finished step


def test_recchat_train_runs_resumes_and_writes_a_usable_adapter(products, converted_lm, tmp_path: Path) -> None:
    """`recchat train --steps 20` on a tiny slice: the real code path, small; a re-run resumes; the adapter
    it writes loads through the settings, changes the LM's scores, and brings its fitted fusion weight."""
    lines = (DATA / "shop_dialogs.jsonl").read_text().splitlines()
    train, held = tmp_path / "train.jsonl", tmp_path / "held.jsonl"
    train.write_text("\n".join(lines[:3]) + "\n")
    held.write_text("\n".join(lines[3:]) + "\n")
    out = tmp_path / "adapter"
    env = {**os.environ, "RECCHAT_LM_MODEL": str(converted_lm), "OMP_NUM_THREADS": "2"}
    args = ["train", "--steps", "20", "--batch", "1", "--out", str(out), "--dialogs", str(train),
            "--heldout-dialogs", str(held), "--catalog", "products", "--heldout-turns", "2", "--no-compare-base",
            "--no-progress"]
    done = _recchat(*args, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["training"]["steps"] == 20
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 21))
    assert all(r["loss"] >= 0 for r in log)
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    meta = json.loads((out / "recchat.json").read_text())
    assert meta["config"]["steps"] == 20 and meta["config"]["seed"] == 0
    assert 0.0 <= meta["lm_weight"] <= 4.0
    assert meta["heldout"]["turns"]["heldout"] >= 1
    assert all(line.startswith("train:s") for line in (out / "training_dialogs.txt").read_text().split())

    # The same command again resumes from the finished checkpoint instead of starting over.
    again = _recchat(*args, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from step 20" in again.stderr
    assert len((out / "train_log.jsonl").read_text().splitlines()) == 20

    # The service picks the adapter and its fitted fusion weight up through settings.
    from chatbot.lm import lm_fusion_weight
    from retrieval.settings import Settings

    assert lm_fusion_weight(Settings(adapter=str(out))) == meta["lm_weight"]
    assert lm_fusion_weight(Settings(adapter="none")) == 0.0  # the base model's fitted weight
    assert lm_fusion_weight(Settings(adapter=str(out), lm_weight=0.75)) == 0.75  # the setting wins
    from chatbot.lm import LanguageModel
    from chatbot.ranking import LMRanker
    from retrieval.catalog import load_catalog

    items = load_catalog(DATA / "products.csv", "products").items[:6]
    base_settings = Settings(lm_model=str(converted_lm), adapter="none")
    tuned = LanguageModel(base_settings.model_copy(update={"adapter": str(out)}))
    tuned_scores = LMRanker(tuned).score("a tough phone for the building site", items)
    base_scores = LMRanker(LanguageModel(base_settings)).score("a tough phone for the building site", items)
    assert tuned.adapter_path == str(out)
    assert max(abs(a - b) for a, b in zip(tuned_scores, base_scores, strict=True)) > 1e-4
