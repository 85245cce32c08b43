"""A small OpenAI-compatible completions server over the in-process `LanguageModel` (``recchat lm-serve``).

It implements the part of the legacy completions API that `chatbot.remote_lm.RemoteLanguageModel` uses
against vLLM or TGI on GPU hosts, with the same wire format, so the client is tested for real:

* ``GET /v1/models`` lists the one served model (named by ``settings.lm_served_model``);
* ``POST /v1/completions`` with ``model``, ``prompt`` (a string or a list of strings), ``max_tokens``
  (0 with ``echo`` returns the prompt's log-probabilities only, as vLLM does), ``echo``, ``logprobs``,
  ``temperature`` (0 or absent: greedy; sampling is not implemented and is refused), ``stream``
  (server-sent events ending with ``data: [DONE]``) and ``stop``;
* errors as OpenAI writes them: ``{"error": {"message", "type", "param", "code"}}``.

Prompt log-probabilities of a list of prompts take one batched pass: when the prompts share a prefix
(the ranker's case: one prompt, many candidates), the prefix runs once and the prompts' remaining
tokens are packed after its key/value cache, as vLLM's prefix caching would do; otherwise the
prompts are right-padded into one batch. The model is not thread-safe: every use holds ``lm.lock``.
"""

from __future__ import annotations

import hmac
import json
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

from chatbot.lm import MIN_SHARED_PREFIX, shared_prefix_length
from retrieval import model_thread

if TYPE_CHECKING:
    import torch

    from chatbot.lm import LanguageModel

# JSON has no -inf; vLLM clamps impossible tokens' log-probabilities to this value too.
MIN_LOGPROB = -9999.0


@dataclass(frozen=True)
class ServerLimits:
    """Bounds on one request, so that no caller can make the server run out of memory or time."""

    max_body_bytes: int = 1 << 20
    max_prompts: int = 256
    max_prompt_tokens: int = 2048
    max_batch_tokens: int = 16384
    max_new_tokens: int = 512
    max_logprobs: int = 5
    max_stop: int = 4
    max_tokens_per_pass: int = 512  # rows of one forward pass / LM-head chunk (bounds the logits' memory)


class OpenAIError(Exception):
    """An error answered as OpenAI does: an HTTP status and ``{"error": {...}}``."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": type_, "param": param, "code": code}}

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(self.body, status_code=self.status, headers=headers)


class CompletionRequest(BaseModel):
    """The accepted fields of ``POST /v1/completions``; any other field is refused by name."""

    model_config = ConfigDict(extra="forbid")

    model: StrictStr
    prompt: StrictStr | list[StrictStr]
    max_tokens: int | None = Field(default=16, ge=0)
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0)
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=1, description="Greedy decoding has one answer per prompt.")
    stream: bool = False
    stop: StrictStr | list[StrictStr] | None = None
    user: str | None = None
    seed: int | None = None  # accepted for compatibility; greedy decoding does not use it


@dataclass
class TokenScores:
    """Per-token log-probabilities of one sequence: entry 0 is None (nothing precedes the first token)."""

    logprobs: list[float | None]
    top: list[list[tuple[int, float]] | None]


@dataclass
class _Choice:
    index: int
    prompt: str
    prompt_ids: list[int]
    prompt_offsets: list[int]
    text: str = ""
    ids: list[int] = field(default_factory=list)
    finish_reason: str = "length"


# -- log-probabilities -----------------------------------------------------------------------------


def _clamp(value: float) -> float:
    return value if value > MIN_LOGPROB else MIN_LOGPROB  # also maps -inf and nan


def _score_rows(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, top: int,
                chunk: int) -> tuple[list[float], list[list[tuple[int, float]]]]:
    """Log-probabilities of ``targets`` from final hidden states, the LM head run ``chunk`` rows at a time.

    Applying the 49k-word head in chunks keeps the logits' memory bounded (a 2,000-token batch would
    need 400 MB of float32 logits at once).
    """
    import torch

    values: list[float] = []
    tops: list[list[tuple[int, float]]] = []
    for start in range(0, hidden.shape[0], chunk):
        logits = head(hidden[start:start + chunk]).float()
        norm = torch.logsumexp(logits, dim=-1)
        picked = logits.gather(-1, targets[start:start + chunk, None])[:, 0] - norm
        values += [_clamp(v) for v in picked.tolist()]
        if top:
            best, ids = logits.topk(top, dim=-1)
            best = best - norm[:, None]
            tops += [[(i, _clamp(v)) for i, v in zip(row_ids, row_values, strict=True)]
                     for row_ids, row_values in zip(ids.tolist(), best.tolist(), strict=True)]
        else:
            tops += [[] for _ in range(len(picked))]
    return values, tops


def sequence_logprobs(lm: LanguageModel, seqs: Sequence[Sequence[int]], top: int = 0,
                      max_tokens_per_pass: int = 512) -> list[TokenScores]:
    """Log p(token t | tokens < t) for every token of every sequence (and the ``top`` best alternatives).

    The caller holds ``lm.lock``. Results equal one forward pass per sequence up to float rounding.
    """
    import torch

    if not seqs:
        return []
    if any(len(s) == 0 for s in seqs):
        raise ValueError("empty sequence")
    model, device = lm.model, lm.device
    head = model.get_output_embeddings()
    shared = shared_prefix_length(seqs)
    with torch.inference_mode():
        if len(seqs) > 1 and shared >= MIN_SHARED_PREFIX:
            return _prefix_logprobs(model, head, device, seqs, shared, top, max_tokens_per_pass)
        return _padded_logprobs(model, head, device, seqs, top, max_tokens_per_pass)


def _padded_logprobs(model: Any, head: Any, device: str, seqs: Sequence[Sequence[int]], top: int,  # noqa: ANN401
                     per_pass: int) -> list[TokenScores]:
    """Right-padded batches (with an attention mask) of at most ``per_pass`` padded positions each."""
    import torch

    out: list[TokenScores] = []
    batch: list[Sequence[int]] = []

    def run(batch: list[Sequence[int]]) -> None:
        width = max(len(s) for s in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long, device=device)
        mask = torch.zeros((len(batch), width), dtype=torch.long, device=device)
        for row, seq in enumerate(batch):
            ids[row, :len(seq)] = torch.tensor(seq, device=device)
            mask[row, :len(seq)] = 1
        # Only the hidden states are used: `logits_to_keep=1` skips the head for the whole batch, which is
        # then applied in chunks to the real (unpadded) positions only.
        hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, logits_to_keep=1,
                       use_cache=False).hidden_states[-1]
        rows = torch.cat([hidden[row, :len(seq) - 1] for row, seq in enumerate(batch)])
        targets = torch.tensor([t for seq in batch for t in seq[1:]], dtype=torch.long, device=device)
        values, tops = _score_rows(head, rows, targets, top, per_pass) if len(targets) else ([], [])
        k = 0
        for seq in batch:
            n = len(seq) - 1
            out.append(TokenScores([None, *values[k:k + n]], [None, *tops[k:k + n]]))
            k += n

    for seq in seqs:
        if batch and (len(batch) + 1) * max(len(seq), *(len(s) for s in batch)) > per_pass:
            run(batch)
            batch = []
        batch.append(seq)
    run(batch)
    return out


def _prefix_logprobs(model: Any, head: Any, device: str, seqs: Sequence[Sequence[int]], shared: int,  # noqa: ANN401
                     top: int, per_pass: int) -> list[TokenScores]:
    """The shared prefix once (cached), then every sequence's own tokens packed into one sequence after it.

    The same packing as `chatbot.ranking.LMRanker`: each packed token sees the whole prefix and the earlier
    tokens of its own sequence only, at the positions it would have alone.
    """
    import torch
    from transformers import DynamicCache

    prefix = list(seqs[0][:shared])
    out = model(input_ids=torch.tensor([prefix], device=device), use_cache=True, output_hidden_states=True,
                logits_to_keep=1)
    hidden = out.hidden_states[-1][0]
    layers = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
    prefix_targets = torch.tensor(prefix[1:], dtype=torch.long, device=device)
    prefix_values, prefix_tops = (_score_rows(head, hidden[:-1], prefix_targets, top, per_pass)
                                  if shared > 1 else ([], []))
    # The last prefix position predicts each sequence's first own token: one head row serves them all.
    own_first = torch.tensor([s[shared] for s in seqs], dtype=torch.long, device=device)
    first_values, first_tops = _score_rows(head, hidden[-1:].expand(len(seqs), -1), own_first, top, per_pass)

    rests: list[list[float]] = [[] for _ in seqs]
    rest_tops: list[list[list[tuple[int, float]]]] = [[] for _ in seqs]
    chunk: list[int] = []

    def run(chunk: list[int]) -> None:
        inputs = [t for k in chunk for t in seqs[k][shared:-1]]
        if not inputs:
            return
        segment = torch.tensor([k for k in chunk for _ in seqs[k][shared:-1]], device=device)
        offset = torch.tensor([i for k in chunk for i in range(len(seqs[k]) - shared - 1)], device=device)
        own = (segment[:, None] == segment[None, :]) & (offset[:, None] >= offset[None, :])
        allowed = torch.cat([torch.ones((len(inputs), shared), dtype=torch.bool, device=device), own], 1)
        dtype = layers[0][0].dtype
        mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
        mask = mask.masked_fill(~allowed, torch.finfo(dtype).min)[None, None]
        cache = DynamicCache(layers, config=model.config)  # fresh each pass: the forward pass appends to it
        packed = model(input_ids=torch.tensor([inputs], device=device), position_ids=(offset + shared)[None],
                       attention_mask=mask, past_key_values=cache, use_cache=False, output_hidden_states=True,
                       logits_to_keep=1).hidden_states[-1][0]
        targets = torch.tensor([t for k in chunk for t in seqs[k][shared + 1:]], dtype=torch.long, device=device)
        values, tops = _score_rows(head, packed, targets, top, per_pass)
        for k, value, best in zip(segment.tolist(), values, tops, strict=True):
            rests[k].append(value)
            rest_tops[k].append(best)

    size = 0
    for k, seq in enumerate(seqs):
        own_inputs = len(seq) - shared - 1
        if chunk and size + own_inputs > per_pass:
            run(chunk)
            chunk, size = [], 0
        chunk.append(k)
        size += own_inputs
    run(chunk)
    return [TokenScores([None, *prefix_values, first_values[k], *rests[k]],
                        [None, *prefix_tops, first_tops[k], *rest_tops[k]]) for k in range(len(seqs))]


# -- generation ------------------------------------------------------------------------------------


class _TokenQueue:
    """A `generate` streamer that hands each new token id to the reading thread (the prompt is skipped)."""

    def __init__(self) -> None:
        self.queue: queue.Queue[list[int] | None] = queue.Queue()
        self._prompt_seen = False

    def put(self, value: Any) -> None:  # noqa: ANN401 - a tensor
        if not self._prompt_seen:
            self._prompt_seen = True  # `generate` puts the prompt first
            return
        self.queue.put([int(v) for v in value.reshape(-1).tolist()])

    def end(self) -> None:
        self.queue.put(None)


class _Cancelled:
    """Stopping criterion: stop at the next step once ``cancel`` is set (stop string seen, client gone)."""

    def __init__(self, cancel: threading.Event) -> None:
        self.cancel = cancel

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:  # noqa: ANN401
        import torch

        return torch.full((input_ids.shape[0],), self.cancel.is_set(), dtype=torch.bool, device=input_ids.device)


def generate_text(lm: LanguageModel, choice: _Choice, max_tokens: int, stops: Sequence[str],
                  cancel: threading.Event | None = None) -> Iterator[str]:
    """Greedy continuation of ``choice.prompt_ids`` as text deltas; fills ``choice.text/ids/finish_reason``.

    The generation runs on the model thread and holds the LM lock; closing this iterator (or setting ``cancel``)
    stops it at the next token. A delta never ends inside a multi-byte character, and text that might
    be the start of a stop string is held back until it is known not to be one.
    """
    from transformers import StoppingCriteriaList

    cancel = cancel or threading.Event()
    tokenizer = lm.tokenizer
    streamer = _TokenQueue()
    errors: list[BaseException] = []

    def run() -> None:
        import torch

        try:
            with lm.lock:
                model = lm.model
                ids = torch.tensor([choice.prompt_ids], device=lm.device)
                model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                               do_sample=False, streamer=streamer, pad_token_id=tokenizer.pad_token_id,
                               stopping_criteria=StoppingCriteriaList([_Cancelled(cancel)]))
        except BaseException as exc:  # re-raised in the reading thread
            errors.append(exc)
            streamer.end()

    job = model_thread.submit(run)  # like all model work of the process (see `retrieval.model_thread`)
    holdback = max((len(s) for s in stops), default=1) - 1
    sent = 0
    stopped = False
    try:
        while (item := streamer.queue.get()) is not None:
            if stopped:
                continue  # drain: the thread ends after the step in flight
            choice.ids.extend(item)
            text = tokenizer.decode(choice.ids, skip_special_tokens=True)
            cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
            if cut >= 0:
                text, stopped = text[:cut], True
                choice.finish_reason = "stop"
                cancel.set()
            choice.text = text
            safe = len(text) if stopped else len(text) - holdback
            while safe > sent and text[safe - 1] == "\ufffd":  # an incomplete UTF-8 sequence so far
                safe -= 1
            if safe > sent:
                yield text[sent:safe]
                sent = safe
        if errors:
            raise errors[0]
        if not stopped:
            eos = tokenizer.eos_token_id
            if choice.ids and choice.ids[-1] == eos:
                choice.finish_reason = "stop"
            if len(choice.text) > sent:
                yield choice.text[sent:]
    finally:
        cancel.set()  # a reader that stops early (client gone) stops the generation too
        wait([job])


# -- the app ---------------------------------------------------------------------------------------


class CompletionServer:
    """The request handling behind the app: tokenising, limits, generation and the OpenAI response shapes."""

    def __init__(self, lm: LanguageModel, served_model: str, limits: ServerLimits | None = None) -> None:
        self.lm = lm
        self.served_model = served_model
        self.limits = limits or ServerLimits()
        self.created = int(time.time())
        self._token_text: dict[int, str] = {}

    def models(self) -> dict[str, Any]:
        """The ``/v1/models`` body."""
        return {"object": "list", "data": [{"id": self.served_model, "object": "model", "created": self.created,
                                            "owned_by": "recchat", "root": self.lm.source or None,
                                            "max_model_len": self._context_length()}]}

    def _context_length(self) -> int:
        return int(getattr(self.lm.model.config, "max_position_embeddings", 2048) or 2048)

    def token_text(self, token_id: int) -> str:
        """The text of one token, as vLLM reports it (special tokens included)."""
        text = self._token_text.get(token_id)
        if text is None:
            text = self._token_text[token_id] = self.lm.tokenizer.decode([token_id])
        return text

    def validate(self, req: CompletionRequest) -> tuple[list[_Choice], int, list[str]]:
        """The request's prompts tokenised, its ``max_tokens`` and stop strings; `OpenAIError` when refused."""
        limits = self.limits
        if req.model != self.served_model:
            raise OpenAIError(404, f"The model `{req.model}` does not exist.", code="model_not_found", param="model")
        if req.temperature not in (None, 0) or req.top_p not in (None, 1):
            raise OpenAIError(400, "only greedy decoding is supported: send temperature 0 (and no top_p)",
                              param="temperature")
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        if not prompts:
            raise OpenAIError(400, "please provide at least one prompt", param="prompt")
        if len(prompts) > limits.max_prompts:
            raise OpenAIError(400, f"at most {limits.max_prompts} prompts per request", param="prompt")
        max_tokens = 16 if req.max_tokens is None else req.max_tokens
        if max_tokens > limits.max_new_tokens:
            raise OpenAIError(400, f"max_tokens must be at most {limits.max_new_tokens}", param="max_tokens")
        if req.logprobs is not None and req.logprobs > limits.max_logprobs:
            raise OpenAIError(400, f"logprobs must be at most {limits.max_logprobs}", param="logprobs")
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stops) > limits.max_stop or any(not s or len(s) > 256 for s in stops):
            raise OpenAIError(400, f"stop takes at most {limits.max_stop} non-empty strings", param="stop")
        if req.stream and (len(prompts) > 1 or req.logprobs is not None):
            raise OpenAIError(400, "stream supports one prompt and no logprobs on this server", param="stream")
        # Cheap character bound first, so a huge prompt is refused before it is tokenised.
        per_prompt = min(limits.max_prompt_tokens, self._context_length() - max_tokens)
        if any(len(p) > 16 * per_prompt for p in prompts) or sum(map(len, prompts)) > 16 * limits.max_batch_tokens:
            raise OpenAIError(400, "prompt too long", code="context_length_exceeded", param="prompt")
        choices: list[_Choice] = []
        total = 0
        for index, prompt in enumerate(prompts):
            ids, offsets = self._encode(prompt)
            if not ids:
                raise OpenAIError(400, "prompt must not be empty", param="prompt")
            if len(ids) > per_prompt:
                raise OpenAIError(400, f"prompt {index} has {len(ids)} tokens; at most {per_prompt} with max_tokens "
                                  f"{max_tokens}", code="context_length_exceeded", param="prompt")
            total += len(ids) + max_tokens
            choices.append(_Choice(index, prompt, ids, offsets))
        if total > limits.max_batch_tokens:
            raise OpenAIError(400, f"the request needs {total} tokens; at most {limits.max_batch_tokens}",
                              code="context_length_exceeded", param="prompt")
        return choices, max_tokens, stops

    def _encode(self, text: str) -> tuple[list[int], list[int]]:
        """Token ids (special tokens added as vLLM does by default) and each token's start in ``text``."""
        enc = self.lm.tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
        return list(enc["input_ids"]), [start for start, _ in enc["offset_mapping"]]

    def complete(self, req: CompletionRequest, choices: list[_Choice], max_tokens: int,
                 stops: list[str]) -> dict[str, Any]:
        """A whole (non-streamed) completion response. Runs the model: call it from a worker thread."""
        if max_tokens > 0:
            for choice in choices:
                for _ in generate_text(self.lm, choice, max_tokens, stops):
                    pass
        scores: list[TokenScores] = []
        if req.logprobs is not None:
            for choice in choices:
                choice.ids = self._kept_ids(choice)
            scores = model_thread.call(self._locked_logprobs, [c.prompt_ids + c.ids for c in choices],
                                       req.logprobs)
        out = []
        for k, choice in enumerate(choices):
            text = choice.prompt + choice.text if req.echo else choice.text
            finish = choice.finish_reason if max_tokens > 0 else "length"
            logprobs = self._logprobs(choice, scores[k], req.echo, req.logprobs or 0) if scores else None
            out.append({"index": choice.index, "text": text, "logprobs": logprobs, "finish_reason": finish})
        prompt_tokens = sum(len(c.prompt_ids) for c in choices)
        completion_tokens = sum(len(c.ids) for c in choices)
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": self.served_model, "choices": out,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    def _locked_logprobs(self, seqs: list[list[int]], top: int) -> list[TokenScores]:
        with self.lm.lock:
            return sequence_logprobs(self.lm, seqs, top, self.limits.max_tokens_per_pass)

    def _kept_ids(self, choice: _Choice) -> list[int]:
        """The generated ids that make up ``choice.text`` (a stop string may have cut the text short)."""
        if choice.finish_reason != "stop" or not choice.ids:
            return choice.ids
        decode = self.lm.tokenizer.decode
        for k in range(len(choice.ids) + 1):
            if len(decode(choice.ids[:k], skip_special_tokens=True)) >= len(choice.text):
                return choice.ids[:k] if k else []
        return choice.ids

    def _logprobs(self, choice: _Choice, scores: TokenScores, echo: bool, top: int) -> dict[str, Any]:
        """The OpenAI ``logprobs`` object; offsets index the choice's ``text``."""
        n_prompt = len(choice.prompt_ids)
        decode = self.lm.tokenizer.decode
        offsets = list(choice.prompt_offsets)
        base = len(choice.prompt)
        # A generated token's offset is the length of the text decoded before it.
        offsets += [base + len(decode(choice.ids[:k], skip_special_tokens=True)) for k in range(len(choice.ids))]
        ids = choice.prompt_ids + choice.ids
        first = 0 if echo else n_prompt
        shift = 0 if echo else base
        tops: list[dict[str, float] | None] = []
        for t in range(first, len(ids)):
            alternatives = scores.top[t]
            if alternatives is None:
                tops.append(None)
                continue
            best = {self.token_text(i): v for i, v in alternatives}
            # The chosen token is always listed, as vLLM does (with logprobs=0 it is the only entry).
            best.setdefault(self.token_text(ids[t]), scores.logprobs[t])  # type: ignore[arg-type]
            tops.append(best)
        return {"tokens": [self.token_text(i) for i in ids[first:]],
                "token_logprobs": scores.logprobs[first:],
                "text_offset": [o - shift for o in offsets[first:]],
                "top_logprobs": tops}

    async def stream(self, req: CompletionRequest, choice: _Choice, max_tokens: int,
                     stops: list[str]) -> AsyncIterator[bytes]:
        """Server-sent events: one chunk per text delta, a last chunk with the finish reason, ``[DONE]``."""
        import anyio

        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def event(text: str, finish: str | None) -> bytes:
            body = {"id": rid, "object": "text_completion", "created": created, "model": self.served_model,
                    "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}
            return f"data: {json.dumps(body)}\n\n".encode()

        if req.echo:
            yield event(choice.prompt, None)
        cancel = threading.Event()
        pieces = generate_text(self.lm, choice, max_tokens, stops, cancel) if max_tokens > 0 else _nothing()
        try:
            while (piece := await anyio.to_thread.run_sync(next, pieces, None)) is not None:
                yield event(piece, None)
            yield event("", choice.finish_reason if max_tokens > 0 else "length")
        except Exception:  # noqa: BLE001 - the headers are sent: report in-band, as vLLM does
            yield f"data: {json.dumps(OpenAIError(500, 'generation failed', 'server_error').body)}\n\n".encode()
        finally:
            cancel.set()  # the client is gone (or we are done): stop generating at the next token
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(pieces.close)
        yield b"data: [DONE]\n\n"


def _nothing() -> Iterator[str]:
    yield from ()


class _ClosingStreamingResponse(StreamingResponse):
    """Closes the body iterator however the response ends, so a client that goes away stops the generation."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:  # noqa: ANN401
        try:
            await super().__call__(scope, receive, send)
        finally:
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                await close()


async def _read_json(request: Request, limit: int) -> Any:  # noqa: ANN401
    """The request body parsed as JSON, refused with 413 beyond ``limit`` bytes (also when chunked)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise OpenAIError(413, f"request body larger than {limit} bytes", code="request_too_large")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise OpenAIError(413, f"request body larger than {limit} bytes", code="request_too_large")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OpenAIError(400, f"the body is not valid JSON: {exc}") from None


def create_lm_app(lm: LanguageModel, served_model: str = "recchat", api_key: str = "",
                  limits: ServerLimits | None = None) -> FastAPI:
    """The OpenAI-compatible app over ``lm``: ``/v1/models``, ``/v1/completions``, ``/health``.

    With ``api_key`` set, the ``/v1`` routes require ``Authorization: Bearer <api_key>``.
    """
    import anyio

    server = CompletionServer(lm, served_model, limits)
    app = FastAPI(title="recchat LM server", summary="OpenAI-compatible completions over the recchat LM",
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server

    def authorise(request: Request) -> None:
        if not api_key:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), api_key.encode()):
            raise OpenAIError(401, "invalid or missing API key", code="invalid_api_key")

    @app.exception_handler(OpenAIError)
    async def openai_error(request: Request, exc: OpenAIError) -> JSONResponse:
        return exc.response()

    @app.get("/health")
    async def health() -> dict[str, str]:
        """Liveness (no key needed)."""
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        """The one served model."""
        authorise(request)
        return await anyio.to_thread.run_sync(server.models)

    @app.post("/v1/completions", response_model=None)
    async def completions(request: Request) -> JSONResponse | StreamingResponse:
        """Legacy completions: echo and prompt log-probabilities, greedy generation, streaming."""
        authorise(request)
        raw = await _read_json(request, server.limits.max_body_bytes)
        try:
            req = CompletionRequest.model_validate(raw)
        except ValidationError as exc:
            problem = exc.errors()[0]
            where = ".".join(str(p) for p in problem["loc"]) or None
            raise OpenAIError(400, f"{where or 'body'}: {problem['msg']}", param=where) from None
        choices, max_tokens, stops = await anyio.to_thread.run_sync(server.validate, req)
        if req.stream:
            return _ClosingStreamingResponse(server.stream(req, choices[0], max_tokens, stops),
                                             media_type="text/event-stream",
                                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        body = await anyio.to_thread.run_sync(server.complete, req, choices, max_tokens, stops)
        return JSONResponse(body)

    return app
