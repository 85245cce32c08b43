"""The one typed settings object of recchat; nothing else reads environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Service configuration, read from ``RECCHAT_*`` environment variables.

    Unknown ``RECCHAT_*`` variables are rejected, so a typo fails at start-up instead of being ignored.
    """

    # An empty variable means the default (as for the URL settings), also for number settings such as lm_weight.
    model_config = SettingsConfigDict(env_prefix="RECCHAT_", extra="forbid", frozen=True, hide_input_in_errors=True,
                                      env_ignore_empty=True)

    data_dir: Path = Field(default=Path(".recchat"), description="Where indexes, catalogs and sessions live.")
    chroma_url: str = Field(default="", description="Chroma server URL; empty means embedded PersistentClient.")
    sessions_url: str = Field(default="", description="redis://host:port/db for a shared Redis session store; "
                              "empty = SQLite under the data directory.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    default_catalog: str = "movies"
    embedding_model: str = Field(default="", description="Sentence-transformer folder; empty = all-MiniLM-L6-v2.")
    embed_batch_size: int = Field(default=64, ge=1, le=4096)
    candidates: int = Field(default=100, ge=1, le=5000, description="Candidates returned by default.")
    lm_model: str = Field(default="", description="Causal LM folder (or GGUF file); empty = SmolLM2-135M-Instruct.")
    adapter: str = Field(default="", description="LoRA adapter folder; empty = the shipped one; 'none' = base LM.")
    lm_url: str = Field(default="", description="Base URL of an OpenAI-compatible completions server (vLLM, TGI) "
                        "that serves the LM; empty = the LM runs in this process.")
    lm_api_key: SecretStr = Field(default=SecretStr(""), description="Bearer key for lm_url, if it needs one.")
    lm_served_model: str = Field(default="recchat", description="The model name sent to lm_url.")
    lm_timeout_s: float = Field(default=30.0, gt=0, le=600, description="Timeout of one call to lm_url.")
    lm_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto", description="Weights and activations of the in-process LM; auto = bfloat16, which halves "
        "the memory read per generated token (decoding three rows 2.3x faster on 2 CPU cores).")
    lm_weight: float | None = Field(
        default=None, ge=0, le=10, description="Weight of the LM score in the ranking fusion; empty = the weight "
        "fitted with the adapter, or 0 for a model without one (the base SmolLM2-135M lowers held-out recall).")
    justification_sentences: int = Field(
        default=1, ge=1, le=3, description="Sentences the LM writes per recommendation, at most (each is checked "
        "against the item's record); two take about 1.5x as long to write as one.")
    rank_candidates: int = Field(default=20, ge=0, le=200, description="Candidates the LM re-ranks (0 = off).")
    api_keys: SecretStr = Field(default=SecretStr(""), description="'key1:client,key2:admin'; empty = loopback only.")
    max_message_chars: int = Field(default=2000, ge=1, le=100_000)
    max_body_bytes: int = Field(default=65_536, ge=1024)
    max_upload_bytes: int = Field(default=50 * 1024 * 1024, ge=1024)
    rate_limit_per_minute: int = Field(default=60, ge=0, description="Requests per minute per API key (0 = off).")
    max_concurrency: int = Field(default=4, ge=1, le=64, description="Turns processed at once by the server.")

    @field_validator("chroma_url", "lm_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        value = value.strip()
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("the URL must start with http:// or https:// (or be empty)")
        return value.rstrip("/")

    @field_validator("sessions_url")
    @classmethod
    def _check_sessions_url(cls, value: str) -> str:
        value = value.strip()
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("sessions_url must start with redis://, rediss:// or unix:// (or be empty for SQLite)")
        return value

    def resolved_device(self) -> str:
        """``cuda`` when asked for or when ``auto`` finds a GPU, else ``cpu``."""
        if self.device != "auto":
            return self.device
        import torch  # heavy: only when a model is about to be loaded

        return "cuda" if torch.cuda.is_available() else "cpu"

    def resolved_lm_dtype(self) -> str:
        """``float32`` or ``bfloat16`` (what ``auto`` means: bfloat16 on every device)."""
        return "bfloat16" if self.lm_dtype == "auto" else self.lm_dtype


def _reject_unknown_env() -> None:
    import os

    known = {f"RECCHAT_{name.upper()}" for name in Settings.model_fields}
    unknown = sorted(k for k in os.environ if k.startswith("RECCHAT_") and k not in known)
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    _reject_unknown_env()
    return Settings()
