"""The language model behind an OpenAI-compatible completions server (vLLM, TGI, ``recchat lm-serve``).

Selected by ``settings.lm_url``: `chatbot.service.Chatbot` then ranks with `RemoteRanker` and justifies
with `RemoteJustifier` instead of loading the model in process. Both send the same prompts as their
in-process twins (`chatbot.ranking.LMRanker`, `chatbot.justify.LMJustifier`), so a server that serves the
same weights (base model plus our LoRA adapter) gives the same scores and the same text:

* ranking: one ``POST /v1/completions`` per ranking call, one prompt per candidate (the chat-formatted
  ranking prompt followed by the candidate's text), ``echo: true, max_tokens: 0`` so that the server
  returns the prompt's token log-probabilities without generating (vLLM documents max_tokens 0 with
  echo for this); the score is the mean log-probability of the candidate's first ``max_item_tokens``
  tokens, as in `LMRanker`. A server with automatic prefix caching (vLLM) computes the shared prompt once.
* justification: ``stream: true`` greedy generation read as server-sent events; `LMJustifier.stream`
  keeps its grounding check, sentence limit and template fallback unchanged.

The client needs the model's tokenizer (not its weights) to apply the chat template: see
`load_tokenizer`. Every connection error, timeout or error answer raises `LanguageModelUnavailable`,
which the HTTP API answers with 503 ``lm_unavailable``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from chatbot.justify import (
    _FINAL_END_RE,
    JustificationRequest,
    LMJustifier,
    TemplateJustifier,
    answer_start,
    justification_prompt,
    sentence_ends,
)
from chatbot.ranking import LMRanker, candidate_text, ranking_prompt
from retrieval.catalog import Item
from retrieval.errors import LanguageModelUnavailable
from retrieval.settings import Settings

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from chatbot.grounding import GroundingChecker

# The ranker's defaults are LMRanker's, so both score the same tokens.
_RANKER_DEFAULTS: dict[str, Any] = dict(LMRanker.__init__.__kwdefaults__ or {})
_CONNECT_TIMEOUT_S = 5.0  # a host that does not answer a connection in 5 s is down, whatever lm_timeout_s says


def load_tokenizer(settings: Settings) -> PreTrainedTokenizerBase:
    """The LM's tokenizer (with its chat template), without loading or converting the model's weights.

    ``settings.lm_model`` as a model folder: its tokenizer files. As a GGUF file (or empty, for the
    packaged SmolLM2): the converted model folder when `chatbot.lm.LanguageModel` has already written
    a current one, else the tokenizer read from the GGUF file itself. That takes ~13 s on 2 cores (it
    rebuilds the vocabulary) but no weights and no 540 MB conversion, so the result is saved once to
    ``<data_dir>/models/<stem>.tokenizer/`` (marked with the GGUF file's fingerprint) and later loads
    take well under a second.
    """
    from transformers import AutoTokenizer

    from chatbot.lm import LanguageModelError, _cache_is_current, _source_fingerprint, default_lm_path

    source = Path(settings.lm_model or default_lm_path()).expanduser()
    if source.is_dir():
        return AutoTokenizer.from_pretrained(str(source))
    if not (source.is_file() and source.suffix.lower() == ".gguf"):
        raise LanguageModelError(f"language model must be a model folder or a .gguf file: {source}")
    models = Path(settings.data_dir) / "models"
    fingerprint = _source_fingerprint(source)
    for folder in (models / source.stem, models / f"{source.stem}.tokenizer"):
        if _cache_is_current(folder, fingerprint):
            return AutoTokenizer.from_pretrained(str(folder))
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    cache = models / f"{source.stem}.tokenizer"
    models.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cache.name}.", suffix=".tmp", dir=models))
    try:  # written aside and renamed, so a killed process never leaves a half-written cache
        tokenizer.save_pretrained(tmp)
        (tmp / "recchat-source.json").write_text(json.dumps(fingerprint))
        tmp.chmod(0o755)
        shutil.rmtree(cache, ignore_errors=True)
        os.replace(tmp, cache)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # a read-only data dir: the tokenizer still works, uncached
    return tokenizer


def _public_url(url: str) -> str:
    """``scheme://host:port`` of ``url`` (never any credentials or path), for error messages and logs."""
    parsed = httpx.URL(url)
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.scheme}://{parsed.host}{port}"


def _error_detail(response: httpx.Response) -> str:
    """The server's error message (OpenAI shape, else the start of the body), kept short."""
    try:
        body = response.json()
        message = body["error"]["message"] if isinstance(body.get("error"), dict) else body.get("error", body)
    except (ValueError, KeyError, TypeError, AttributeError):
        message = response.text
    return " ".join(str(message).split())[:200]


class RemoteLanguageModel:
    """Client of an OpenAI-compatible completions server that serves the recommender's LM.

    Configured by ``settings.lm_url`` (base URL, with or without ``/v1``), ``lm_served_model`` (the ``model`` sent,
    e.g. the LoRA adapter's name in vLLM's ``--lora-modules``), ``lm_api_key`` (sent as a bearer token,
    never logged) and ``lm_timeout_s`` (per call; connecting gives up after at most 5 s). Thread-safe:
    one instance serves every session.
    """

    def __init__(self, settings: Settings) -> None:
        if not settings.lm_url:
            raise ValueError("settings.lm_url is empty: the LM runs in process")
        self.settings = settings
        self.url = _public_url(settings.lm_url)
        self.served_model = settings.lm_served_model
        headers = {"User-Agent": "recchat"}
        key = settings.lm_api_key.get_secret_value()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        timeout = settings.lm_timeout_s
        # OpenAI clients are configured with the ".../v1" base; the routes below name /v1 themselves.
        base = settings.lm_url[: -len("/v1")] if settings.lm_url.endswith("/v1") else settings.lm_url
        self._client = httpx.Client(base_url=base, headers=headers,
                                    timeout=httpx.Timeout(timeout, connect=min(timeout, _CONNECT_TIMEOUT_S)))
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._load_lock = threading.Lock()
        # The Rust tokenizer may raise "Already borrowed" when two threads use it at once.
        self._tokenizer_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RemoteLanguageModel(url={self.url!r}, model={self.served_model!r})"

    # -- local: the tokenizer --------------------------------------------------------------------------
    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The LM's tokenizer, loaded on first use (see `load_tokenizer`)."""
        if self._tokenizer is None:
            with self._load_lock:
                if self._tokenizer is None:
                    self._tokenizer = load_tokenizer(self.settings)
        return self._tokenizer

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        """The chat-formatted prompt text, ending with the assistant turn's header."""
        tokenizer = self.tokenizer
        with self._tokenizer_lock:
            return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def count_tokens(self, text: str) -> int:
        """Number of tokens of ``text`` (no special tokens added)."""
        tokenizer = self.tokenizer
        with self._tokenizer_lock:
            return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    # -- remote: HTTP ----------------------------------------------------------------------------------
    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Turns every transport failure or malformed answer into `LanguageModelUnavailable`."""
        try:
            yield
        except LanguageModelUnavailable:
            raise
        except httpx.TimeoutException as exc:
            raise LanguageModelUnavailable(f"LM server {self.url}: {what} timed out") from exc
        except httpx.HTTPError as exc:
            raise LanguageModelUnavailable(f"LM server {self.url}: {what} failed ({type(exc).__name__})") from exc
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            raise LanguageModelUnavailable(f"LM server {self.url}: malformed answer to {what}") from exc

    def _check_status(self, response: httpx.Response, what: str) -> None:
        if response.status_code >= 400:
            # 4xx too: a refused request (bad key, unknown model, prompt too long) leaves the LM unusable
            # all the same; the message says which, for the operator.
            raise LanguageModelUnavailable(f"LM server {self.url} answered {response.status_code} to {what}: "
                                           f"{_error_detail(response)}")

    def check(self) -> None:
        """Raise `LanguageModelUnavailable` unless the server answers and lists ``lm_served_model``.

        Loads the tokenizer first (once), so that a warm-up leaves nothing for the first request to load.
        """
        _ = self.tokenizer
        with self._errors("model list"):
            response = self._client.get("/v1/models")
            self._check_status(response, "model list")
            served = [entry["id"] for entry in response.json()["data"]]
        if self.served_model not in served:
            raise LanguageModelUnavailable(f"LM server {self.url} does not serve model {self.served_model!r} "
                                           f"(it serves {', '.join(map(repr, served)) or 'nothing'})")

    def complete(self, body: dict[str, Any], what: str) -> dict[str, Any]:
        """One non-streamed ``POST /v1/completions`` (``model`` is added); the parsed answer."""
        with self._errors(what):
            response = self._client.post("/v1/completions", json={"model": self.served_model, **body})
            self._check_status(response, what)
            answer = response.json()
            if not isinstance(answer.get("choices"), list):
                raise ValueError("no choices")
            return answer

    def stream_text(self, prompt: str, max_tokens: int, what: str = "generation") -> Iterator[str]:
        """Greedy continuation of ``prompt``, streamed as text pieces (server-sent events).

        Closing the iterator early closes the HTTP response, so the server stops generating.
        """
        body = {"model": self.served_model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                "stream": True}
        with self._errors(what), self._client.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code >= 400:
                response.read()
                self._check_status(response, what)
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators, comments, other SSE fields
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                chunk = json.loads(data)
                if "error" in chunk:  # the server failed after the headers were sent
                    message = chunk["error"].get("message", "") if isinstance(chunk["error"], dict) else ""
                    raise LanguageModelUnavailable(f"LM server {self.url}: {what} failed: {str(message)[:200]}")
                choices = chunk.get("choices") or []
                text = choices[0].get("text") if choices else None
                if text:
                    yield text

    # -- the parts the service uses --------------------------------------------------------------------
    def ranker(self, **options: Any) -> RemoteRanker:  # noqa: ANN401
        """A `Ranker` scoring through the server (options as `LMRanker`'s: ``max_item_tokens`` ...)."""
        return RemoteRanker(self, **options)

    def justifier(self, checker: GroundingChecker, template: TemplateJustifier | None = None,
                  **options: Any) -> RemoteJustifier:  # noqa: ANN401
        """A `Justifier` generating through the server, grounded by ``checker``, falling back to ``template``."""
        return RemoteJustifier(self, checker, template, **options)  # type: ignore[arg-type]

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()


class RemoteRanker:
    """`Ranker` with `LMRanker`'s scores, computed by the server from prompt log-probabilities.

    Score = mean log-probability of the candidate text's first ``max_item_tokens`` tokens after the
    ranking prompt; -1e9 when the server gives none. All candidates go in one request.
    """

    def __init__(self, remote: RemoteLanguageModel, *, max_item_tokens: int = _RANKER_DEFAULTS["max_item_tokens"],
                 max_context_tokens: int = _RANKER_DEFAULTS["max_context_tokens"]) -> None:
        self.remote = remote
        self.max_item_tokens = max_item_tokens
        self.max_context_tokens = max_context_tokens

    def prompt_text(self, context: str) -> str:
        """The chat-formatted ranking prompt; an over-long context keeps its most recent end (as `LMRanker`)."""
        words = context.split()
        while True:
            text = self.remote.chat_prompt(ranking_prompt(" ".join(words)))
            if len(words) <= 1 or self.remote.count_tokens(text) <= self.max_context_tokens:
                return text
            words = words[max(1, len(words) // 8):]

    def score(self, context: str, items: Sequence[Item]) -> list[float]:
        """Mean continuation log-probability per item (a float <= 0; higher is better)."""
        if not items:
            return []
        prompt = self.prompt_text(context)
        texts = [candidate_text(item) for item in items]
        own_tokens = [self.remote.count_tokens(text) for text in texts]
        # logprobs 1, not 0: some vLLM versions test `if request.logprobs` and would drop them for 0.
        answer = self.remote.complete({"prompt": [prompt + text for text in texts], "max_tokens": 0, "echo": True,
                                       "logprobs": 1, "temperature": 0}, "ranking")
        with self.remote._errors("ranking"):
            return self.scores_from_answer(answer, len(prompt), own_tokens)

    def scores_from_answer(self, answer: dict[str, Any], prompt_chars: int, own_tokens: Sequence[int]) -> list[float]:
        """Scores from an echo answer: ``prompt_chars`` is the shared prompt's length, ``own_tokens`` the
        number of tokens of each candidate's text. Raises ValueError (or KeyError ...) on a malformed answer.
        """
        # Choices may come in any order: each names its prompt by `index`.
        by_index = {int(choice["index"]): choice["logprobs"] for choice in answer["choices"]}
        if sorted(by_index) != list(range(len(own_tokens))):
            raise ValueError("choices do not match the prompts")
        return [self._mean(by_index[k], prompt_chars, n) for k, n in enumerate(own_tokens)]

    def _mean(self, logprobs: dict[str, Any], prompt_chars: int, own_tokens: int) -> float:
        values: list[float | None] = list(logprobs["token_logprobs"])
        offsets: list[int] = list(logprobs["text_offset"])
        start = next((k for k, offset in enumerate(offsets) if offset >= prompt_chars), len(offsets))
        own = values[start:]
        if own_tokens and len(own) != own_tokens:
            # Offsets from per-token detokenisation drift on characters split across tokens (in the user's
            # words); the candidate's tokens are the prompt's last ones, as the tokenizer counts them.
            own = values[-own_tokens:]
        own = own[: self.max_item_tokens]
        if not own or any(v is None for v in own):
            return -1e9
        return float(sum(own)) / len(own)  # type: ignore[arg-type]


def _sentences_done(text: str) -> int:
    """Complete sentences in generated text, counted as `chatbot.justify`'s in-process stopping criterion does."""
    ends = len(sentence_ends(text.strip()))
    if _FINAL_END_RE.search(text) and not re.search(r"\d\.\s*$", text):
        ends += 1
    return ends


class RemoteJustifier(LMJustifier):
    """`LMJustifier` whose text comes from the server: same prompt, grounding check and fallback.

    Built with the `RemoteLanguageModel` in place of the in-process model (``self.lm``). Generation stops
    after ``max_sentences`` complete sentences, as in process; stopping early closes the HTTP stream.
    """

    @property
    def remote(self) -> RemoteLanguageModel:
        return self.lm  # type: ignore[return-value]

    def generate_all(self, requests: Sequence[JustificationRequest]) -> list[Iterator[str]]:
        """One request to the server per justification, each sent when its stream is first read."""
        return [self.generate(request) for request in requests]

    def generate(self, request: JustificationRequest) -> Iterator[str]:
        """Raw generated text pieces: the forced answer start, then the server's streamed text."""
        start = answer_start(request)
        prompt = self.remote.chat_prompt(justification_prompt(request)) + start
        yield start
        text = ""
        pieces = self.remote.stream_text(prompt, self.max_new_tokens, "justification")
        try:
            for piece in pieces:
                yield piece
                text += piece
                if _sentences_done(text) >= self.max_sentences:
                    break
        finally:
            pieces.close()  # type: ignore[attr-defined]  # closes the HTTP response: the server stops
