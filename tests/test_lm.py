"""The language model wrapper (GGUF conversion cache, adapters) and the LM ranker, with the real model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from chatbot.lm import LanguageModel, LanguageModelError, default_lm_path
from chatbot.ranking import LMRanker, candidate_text, key_attributes
from retrieval.catalog import Item
from retrieval.settings import Settings

HORROR = Item(id="zombies", title="Night of the Living Zombies", lists={"genre": ["horror", "zombie"]})
KNIFE = Item(id="knife", title="Stainless Steel Chef's Knife", lists={"category": ["kitchen", "knives"]},
             numbers={"price": 39.0})
SHARK = Item(id="shark", title="Baby Shark Sing-Along", lists={"genre": ["children", "music"]})
MERMAID = Item(id="mermaid", title="The Little Mermaid", lists={"genre": ["animation", "family", "musical"]})
HORROR_COPY = HORROR.model_copy(update={"id": "zombies-2"})


def lm_settings(base: Path) -> Settings:
    """Settings whose data dir is shared by this session's LM tests, so GGUF conversion happens once.

    float32: these tests compare scores computed in different layouts (packed, alone, after an adapter
    swap) to 1e-5, which bfloat16's rounding does not allow; the service's bfloat16 runs end to end.
    """
    return Settings(data_dir=base / "recchat-lm", device="cpu", lm_dtype="float32")


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> LanguageModel:
    model = LanguageModel(lm_settings(tmp_path_factory.getbasetemp()))
    model.model  # noqa: B018 - load (and convert) once for the module
    return model


@pytest.fixture(scope="module")
def ranker(lm: LanguageModel) -> LMRanker:
    return LMRanker(lm)


def test_default_lm_path_is_the_packaged_gguf() -> None:
    path = Path(default_lm_path())
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.is_file() and path.stat().st_size > 50_000_000


def test_bad_model_or_adapter_setting_fails_before_loading(tmp_path: Path) -> None:
    with pytest.raises(LanguageModelError, match="adapter not found"):
        LanguageModel(Settings(data_dir=tmp_path, adapter=str(tmp_path / "missing"))).model  # noqa: B018
    with pytest.raises(LanguageModelError, match="language model not found"):
        LanguageModel(Settings(data_dir=tmp_path, lm_model=str(tmp_path / "nope.gguf"))).model  # noqa: B018


@pytest.mark.slow
def test_gguf_is_converted_once_and_the_cache_is_reused(lm: LanguageModel) -> None:
    cache = Path(lm.settings.data_dir) / "models" / Path(default_lm_path()).stem
    assert lm.source == str(cache)
    weights = cache / "model.safetensors"
    stamp = (weights.stat().st_ino, weights.stat().st_mtime_ns)
    assert lm.tokenizer.eos_token == "<|im_end|>" and lm.device == "cpu"

    again = LanguageModel(lm.settings)
    assert again.model_folder() == cache
    again.model  # noqa: B018
    assert again.source == str(cache)
    assert (weights.stat().st_ino, weights.stat().st_mtime_ns) == stamp  # read, not rewritten
    assert [p.name for p in cache.parent.iterdir()] == [cache.name]  # no half-written temp folder left
    assert next(again.model.parameters()).dtype == next(lm.model.parameters()).dtype
    # A Hugging Face model folder is used in place, not converted or copied.
    as_folder = LanguageModel(lm.settings.model_copy(update={"lm_model": str(cache)}))
    assert as_folder.model_folder() == cache


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_lora_adapter_is_loaded_and_used_by_the_ranker(lm: LanguageModel, tmp_path: Path, dtype: str) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    # A LoRA adapter with non-zero weights (peft's default init would be a no-op).
    base = LanguageModel(lm.settings.model_copy(update={"adapter": "none", "lm_dtype": "float32"}))
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base.model, config).save_pretrained(tmp_path / "adapter")

    tuned = LanguageModel(lm.settings.model_copy(update={"adapter": "none", "lm_dtype": dtype}))
    before = LMRanker(tuned).score("a scary zombie film", [HORROR, SHARK])
    assert next(tuned.model.parameters()).dtype == getattr(torch, dtype)
    tuned.load_adapter(tmp_path / "adapter")
    assert tuned.adapter_path == str(tmp_path / "adapter")
    after = LMRanker(tuned).score("a scary zombie film", [HORROR, SHARK])
    assert all(math.isfinite(v) for v in after)
    assert not torch.allclose(torch.tensor(before), torch.tensor(after))
    tuned.load_adapter(tmp_path / "adapter")  # replaces the adapter instead of stacking a second one
    assert LMRanker(tuned).score("a scary zombie film", [HORROR, SHARK]) == pytest.approx(after, abs=1e-5)
    with pytest.raises(LanguageModelError):
        tuned.load_adapter(tmp_path)


def test_lm_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from chatbot.lm import lm_fusion_weight

    assert Settings().resolved_lm_dtype() == "bfloat16"  # auto
    monkeypatch.setenv("RECCHAT_LM_WEIGHT", "")  # empty means the default: no adapter, so weight 0
    assert Settings().lm_weight is None and lm_fusion_weight(Settings(adapter="none")) == 0.0
    monkeypatch.setenv("RECCHAT_LM_WEIGHT", "0.3")
    assert lm_fusion_weight(Settings(adapter="none")) == 0.3
    for name, value in (("RECCHAT_LM_WEIGHT", "-1"), ("RECCHAT_LM_DTYPE", "float16"),
                        ("RECCHAT_JUSTIFICATION_SENTENCES", "0")):
        monkeypatch.setenv(name, value)
        with pytest.raises(ValidationError):
            Settings()
        monkeypatch.delenv(name)


def test_candidate_text_uses_title_and_key_attributes_of_any_schema() -> None:
    assert candidate_text(HORROR) == "Night of the Living Zombies: horror, zombie"
    assert candidate_text(Item(id="h", title="Heat (1995)", lists={"genre": ["action", "crime", "drama"]})) == (
        "Heat: action, crime")
    product = Item(id="p", title="Nokia G42", text={"brand": "Nokia", "imdb_id": "tt1", "description": "x" * 90},
                   lists={"tags": ["rugged", "budget", "5g", "cheap"]})
    assert key_attributes(product) == [("tags", ["rugged", "budget", "5g"]), ("brand", ["Nokia"])]
    assert candidate_text(Item(id="bare", title="Just A Title")) == "Just A Title"


@pytest.mark.slow
def test_ranker_scores_are_finite_deterministic_and_batch_independent(ranker: LMRanker) -> None:
    items = [HORROR, KNIFE, SHARK, MERMAID, HORROR_COPY]
    context = "I want a scary horror movie with zombies. I liked Dawn of the Dead."
    scores = ranker.score(context, items)
    assert len(scores) == len(items)
    assert all(math.isfinite(s) and s < 0 for s in scores)
    assert scores == ranker.score(context, items)  # deterministic
    assert scores[0] == pytest.approx(scores[4], abs=1e-5)  # identical items, identical scores
    singles = [ranker.score(context, [item])[0] for item in (HORROR, KNIFE)]
    assert singles == pytest.approx(scores[:2], abs=1e-4)  # batch of 1 == batch of N
    assert ranker.score(context, []) == []


@pytest.mark.slow
def test_ranker_prefers_the_clearly_matching_item(ranker: LMRanker) -> None:
    scores = ranker.score("I need a sharp knife for cooking in my kitchen.", [SHARK, KNIFE, MERMAID, HORROR])
    assert max(range(4), key=scores.__getitem__) == 1


@pytest.mark.slow
def test_long_context_is_cut_to_its_most_recent_words(ranker: LMRanker) -> None:
    context = "I like old westerns. " * 200 + "Now I want a zombie film."
    ids = ranker.prompt_ids(context)
    assert len(ids) <= ranker.max_context_tokens
    assert "zombie film" in ranker.lm.tokenizer.decode(ids)


def test_shared_prefix_length_leaves_every_sequence_a_token_of_its_own() -> None:
    from chatbot.lm import shared_prefix_length

    assert shared_prefix_length([[1, 2, 3], [1, 2, 4], [1, 2, 5, 6]]) == 2
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2  # identical: the last token stays each one's own
    assert shared_prefix_length([[1, 2], [1, 2, 3]]) == 1
    assert shared_prefix_length([[5], [6]]) == 0
