"""Justifications: one or two sentences on why a recommended item fits what the user said.

Two implementations of `Justifier`: `TemplateJustifier` builds the text from the item's record only
(deterministic, instant, never wrong), and `LMJustifier` lets the language model write it and keeps
only sentences that pass the `GroundingChecker`, falling back to the template when none passes.
"""

from __future__ import annotations

import logging
import re
import threading
import weakref
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, wait
from contextlib import closing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from chatbot.grounding import (
    COMMON_WORDS,
    GroundingChecker,
    normalise,
    sanitise_item,
    sanitise_text,
    stem,
    unsafe_value,
)
from chatbot.lm import MIN_SHARED_PREFIX, shared_prefix_length
from chatbot.ranking import SYSTEM_PROMPT as RANKING_SYSTEM_PROMPT
from retrieval import model_thread
from retrieval.catalog import MAX_SHORT_STRING, Item

if TYPE_CHECKING:
    from chatbot.lm import LanguageModel

log = logging.getLogger("recchat.justify")

_SKIP_FIELD_RE = re.compile(r"(^|_)(id|ids|url|urls|link|links|image|images|sku|asin|isbn)$|_title$",
                            re.IGNORECASE)
_NEGATION_RE = re.compile(r"\b(not|no|never|without|don'?t|avoid|hate|dislike)\b", re.IGNORECASE)
# A sentence ends at . ! ? (plus closing quotes/brackets) followed by whitespace; a digit before the
# dot is allowed ("released in 1995."), the whitespace requirement keeps "4.5" in one piece.
_SENTENCE_END_RE = re.compile(r"[.!?]+[\"')\]]*(?=\s)")
_FINAL_END_RE = re.compile(r"[.!?]+[\"')\]]*\s*$")
# A dot after these (or after a single initial, "Samuel L.") does not end a sentence.
_ABBREVIATION_RE = re.compile(r"(?:\b(?:Mr|Mrs|Ms|Dr|St|Jr|Sr|Mt|Prof|vs|etc|Inc|Ltd|Co|No|Vol)|\b[A-Z])\.$")


def sentence_ends(text: str) -> list[int]:
    """End offsets of the complete sentences in ``text`` (abbreviations and initials skipped)."""
    return [m.end() for m in _SENTENCE_END_RE.finditer(text)
            if not _ABBREVIATION_RE.search(text[: m.start() + 1])]


@dataclass
class JustificationRequest:
    """What a justification is about: the item, what the user said, and what they like.

    ``user_likes`` holds liked titles and stated wishes or attribute values, e.g.
    ``["Heat (1995)", "action", "not too violent"]``.
    """

    item: Item
    user_text: str = ""
    user_likes: list[str] = field(default_factory=list)


class Justifier(Protocol):
    """Explains why an item fits the user; `stream` yields pieces that concatenate to the text."""

    def justify(self, request: JustificationRequest) -> str:
        """The whole justification."""
        ...

    def stream(self, request: JustificationRequest) -> Iterator[str]:
        """The justification in pieces, as soon as each is final."""
        ...

    def stream_all(self, requests: Sequence[JustificationRequest]) -> list[Iterator[str]]:
        """One `stream` per request, to be read in order; an LM may write them all at once."""
        ...


def _field_label(name: str) -> str:
    return name.replace("_", " ").strip()


def _format_number(value: float) -> str:
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _shorten(text: str, limit: int) -> str:
    """First sentence of ``text``, cut at a word boundary to at most ``limit`` characters."""
    text = " ".join(text.split())
    ends = sentence_ends(text + " ")
    first = text[: ends[0]] if ends else text
    if len(first) <= limit:
        return first
    cut = first[:limit].rsplit(" ", 1)[0].rstrip(",;:-")
    return cut + "..."


def main_text_field(item: Item) -> tuple[str, str] | None:
    """The item's main free-text field (the longest text value longer than a short attribute)."""
    texts = [(name, value) for name, value in item.text.items()
             if len(value) > MAX_SHORT_STRING and not _SKIP_FIELD_RE.search(name)]
    return max(texts, key=lambda pair: len(pair[1])) if texts else None


def _matches(like: str, value: str) -> bool:
    """Whether a stated like and a record value name the same thing (whole words, plurals folded)."""
    like_words = [stem(w) for w in normalise(like).split() if w not in COMMON_WORDS]
    value_words = [stem(w) for w in normalise(value).split()]
    if not like_words or not value_words:
        return False
    like_text, value_text = f" {' '.join(like_words)} ", f" {' '.join(value_words)} "
    return value_text in like_text or like_text in value_text


def overlap(item: Item, likes: Sequence[str]) -> list[tuple[str, str, str]]:
    """(like, field, record value) triples where something the user likes is in the item's record.

    Negative wishes ("not too violent") never count as something liked.
    """
    found: list[tuple[str, str, str]] = []
    for like in likes:
        if not like.strip() or _NEGATION_RE.search(like) or normalise(like) == normalise(item.title):
            continue
        for name, value in item.attribute_values():
            if not _SKIP_FIELD_RE.search(name) and _matches(like, value):
                found.append((like, name, value))
    return found


class TemplateJustifier:
    """Deterministic justification built only from the item's record.

    Sentence one names what the user likes that the record contains, then the item's key attributes
    (field names as the catalog has them); sentence two is the start of the main free-text field.
    Everything quoted comes from the record, so the grounding check always passes.

    >>> TemplateJustifier().justify(JustificationRequest(heat, "", ["action"]))  # doctest: +SKIP
    'Since you like action, Heat (1995) fits: genre: action, crime, drama; director: Michael Mann. ...'
    """

    def __init__(self, max_fields: int = 3, max_values: int = 3, max_numbers: int = 2,
                 max_text_chars: int = 160) -> None:
        self.max_fields = max_fields
        self.max_values = max_values
        self.max_numbers = max_numbers
        self.max_text_chars = max_text_chars

    def key_attributes(self, item: Item, matched: Sequence[tuple[str, str, str]]) -> list[tuple[str, list[str]]]:
        """(field label, values) of the record to quote: fields with something the user likes first."""
        fields: dict[str, list[str]] = {}
        for _, name, value in matched:  # overlapping fields first, matched values first
            fields.setdefault(name, [])
            if value not in fields[name]:
                fields[name].append(value)
        for name, values in item.lists.items():
            if len(fields) >= self.max_fields:
                break
            if values and not _SKIP_FIELD_RE.search(name) and name not in fields:
                fields[name] = []
        for name, value in item.text.items():
            if len(fields) >= self.max_fields:
                break
            if len(value) <= MAX_SHORT_STRING and not _SKIP_FIELD_RE.search(name) and name not in fields:
                fields[name] = [value]
        out = []
        for name, first in fields.items():
            rest = [v for v in item.lists.get(name, []) if v not in first]
            out.append((_field_label(name), (first + rest)[: max(self.max_values, len(first))]))
        numbers = [(_field_label(name), [_format_number(value)]) for name, value in item.numbers.items()
                   if not _SKIP_FIELD_RE.search(name) and _format_number(value) not in item.title]
        return out + numbers[: self.max_numbers]

    def reason(self, request: JustificationRequest) -> str:
        """An end for a sentence left at "... because", or "" if the record has no attributes to quote.

        The record's key attributes, then (as in `sentences`) the start of its main free-text field.

        >>> TemplateJustifier().reason(JustificationRequest(heat, "", ["action"]))  # doctest: +SKIP
        ' of its genre (action, crime, drama) and director (Michael Mann). Plot: A group of ...'
        """
        item = sanitise_item(request.item)
        attributes = self.key_attributes(item, overlap(item, request.user_likes))
        if not attributes:
            return ""
        quoted = [f"{label} ({', '.join(values)})" for label, values in attributes]
        main = self.main_text_sentence(item)
        return f" of its {_join(quoted)}." + (f" {main}" if main else "")

    def main_text_sentence(self, item: Item) -> str:
        """"Plot: <its first sentence>" for the item's main free-text field, or "" if it has none."""
        main = main_text_field(item)
        if main is None:
            return ""
        snippet = _shorten(main[1], self.max_text_chars).rstrip()
        if snippet and snippet[-1] not in ".!?":
            snippet += "."
        return f"{_field_label(main[0]).capitalize()}: {snippet}" if snippet else ""

    def sentences(self, request: JustificationRequest) -> list[str]:
        """The one or two sentences of the justification."""
        item = sanitise_item(request.item)  # what the record says, never what it orders
        matched = overlap(item, request.user_likes)
        parts = [f"{label}: {', '.join(values)}" for label, values in self.key_attributes(item, matched)]
        liked = list(dict.fromkeys(like.strip() for like, _, _ in matched))
        if liked:
            head = f"Since you like {_join(liked[:3])}, {item.title} fits"
        else:
            head = f"{item.title} could suit you"
        first_sentence = f"{head}: {'; '.join(parts)}." if parts else f"{head}."
        main = self.main_text_sentence(item)
        return [first_sentence, main] if main else [first_sentence]

    def justify(self, request: JustificationRequest) -> str:
        """The justification text (one or two sentences)."""
        return " ".join(self.sentences(request))

    def stream(self, request: JustificationRequest) -> Iterator[str]:
        """The sentences one by one (with the separating space), concatenating to `justify`."""
        for i, sentence in enumerate(self.sentences(request)):
            yield sentence if i == 0 else " " + sentence

    def stream_all(self, requests: Sequence[JustificationRequest]) -> list[Iterator[str]]:
        """One `stream` per request."""
        return [self.stream(request) for request in requests]


def _join(words: Sequence[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


SYSTEM_PROMPT = ("You explain in one or two short sentences why an item fits what the user likes. "
                 "Use only the facts given about the item. Do not mention any other title, person or number.")


def _safe_likes(likes: Sequence[str]) -> list[str]:
    """Likes that are data: a like carrying chat tokens, a role header or an instruction is left out."""
    out = []
    for like in likes:
        clean = sanitise_text(like)
        if clean.strip() and not unsafe_value(like):
            out.append(clean)
    return out


def _quoted(text: str) -> str:
    """Free text shown to the LM as a quotation, so that it reads as data about the item."""
    return '"' + text.replace('"', "'") + '"'


def justification_prompt(request: JustificationRequest, max_text_chars: int = 300) -> list[dict[str, str]]:
    """Chat messages for the LM: the user's likes and words, then the item's own record (nothing else).

    What the user said comes first, so that the prompts of one reply's items share their opening and
    `LMJustifier` computes it once. Record and user text are untrusted: chat-template tokens, forged
    turns and sentences that give orders are removed first (`chatbot.grounding.scan`), so that they can
    neither close the system turn nor steer the model; free text is quoted.
    """
    item = sanitise_item(request.item)
    lines = [f"Item: {item.title}"]
    for name, values in item.lists.items():
        if values and not _SKIP_FIELD_RE.search(name):
            lines.append(f"{_field_label(name)}: {', '.join(values[:5])}")
    for name, number in item.numbers.items():
        if not _SKIP_FIELD_RE.search(name):
            lines.append(f"{_field_label(name)}: {_format_number(number)}")
    for name, value in item.text.items():
        if not _SKIP_FIELD_RE.search(name):
            shown = _shorten(value, max_text_chars)
            lines.append(f"{_field_label(name)}: {_quoted(shown) if len(shown) > MAX_SHORT_STRING else shown}")
    likes = ", ".join(_safe_likes(request.user_likes)) or "not stated"
    user = f"The user likes: {likes}\n"
    said = sanitise_text(request.user_text)
    if said:
        user += f"The user said: {_quoted(said[-300:])}\n"
    user += "\n" + "\n".join(lines)
    user += f"\n\nIn one or two sentences, tell the user why {item.title} fits what they like."
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def answer_start(request: JustificationRequest) -> str:
    """The words the LM's answer is made to start with.

    A 135M-parameter model tends to repeat the instruction instead of following it; starting its
    answer with the user's likes and the item's title keeps it on topic and makes it refer to the user.
    """
    item = sanitise_item(request.item)
    unique: dict[str, str] = {}
    for like in _safe_likes(request.user_likes):
        like = " ".join(like.split())
        if like and not _NEGATION_RE.search(like):
            unique.setdefault(normalise(like), like)
    likes = list(unique.values())
    matched = list(dict.fromkeys(like for like, _, _ in overlap(item, likes)))
    chosen = (matched or likes)[:2]
    if chosen:
        return f"Since you like {_join(chosen)}, you may enjoy {item.title} because"
    return f"You may enjoy {item.title} because"


class _SentenceLimit:
    """Stopping criterion per row: stop after ``limit`` complete sentences, or when the row's event is set."""

    def __init__(self, tokenizer: Any, prompt_len: int, limit: int, cancel: Sequence[threading.Event]) -> None:
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        self.limit = limit
        self.cancel = cancel

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        done = [event.is_set() or self._sentences(row) >= self.limit
                for event, row in zip(self.cancel, input_ids, strict=True)]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def _sentences(self, row: Any) -> int:
        text = self.tokenizer.decode(row[self.prompt_len:], skip_special_tokens=True)
        ends = len(sentence_ends(text.strip()))
        # A final "." with nothing after it yet ends a sentence too, unless it follows a digit
        # (it may be a decimal point).
        if _FINAL_END_RE.search(text) and not re.search(r"\d\.\s*$", text):
            ends += 1
        return ends


class _RowStreamer:
    """A `transformers` streamer for a batch (one row or more): each row's new text goes to that row's queue.

    Text is decoded from the row's whole output each step and only a settled suffix is sent, so a
    multi-token character is never split.
    """

    _END = object()

    def __init__(self, tokenizer: Any, rows: int) -> None:
        import queue

        self.tokenizer = tokenizer
        self.queues: list[queue.SimpleQueue[Any]] = [queue.SimpleQueue() for _ in range(rows)]
        self.tokens: list[list[int]] = [[] for _ in range(rows)]
        self.sent = [0] * rows
        self.closed = [threading.Event() for _ in range(rows)]
        self.prompt_seen = False
        self.error: BaseException | None = None

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # the first call carries the prompts
            self.prompt_seen = True
            return
        for row, token in enumerate(value.reshape(len(self.tokens), -1).tolist()):
            self.tokens[row] += token
            text = self.tokenizer.decode(self.tokens[row], skip_special_tokens=True)
            if text.endswith("\ufffd"):
                continue  # an unfinished multi-byte character
            if text[self.sent[row]:]:
                self.queues[row].put(text[self.sent[row]:])
                self.sent[row] = len(text)

    def end(self) -> None:
        for q in self.queues:
            q.put(self._END)

    def fail(self, exc: BaseException) -> None:
        self.error = exc
        self.end()

    def read(self, row: int, start: str, job: Future[None]) -> Iterator[str]:
        """Row ``row``'s pieces: the forced answer start, then its text as generated."""
        return _RowReader(self, row, start, job)


class _RowReader(Iterator[str]):
    """One row of a `_RowStreamer`; closing it (even before the first read) stops that row's generation."""

    def __init__(self, rows: _RowStreamer, row: int, start: str, job: Future[None]) -> None:
        self.rows = rows
        self.row = row
        self.start: str | None = start
        self.job = job
        self.done = False

    def __next__(self) -> str:
        if self.start is not None:
            start, self.start = self.start, None
            return start
        if self.done:
            raise StopIteration
        piece = self.rows.queues[self.row].get()
        if piece is _RowStreamer._END:
            self.close()
            if self.rows.error is not None:
                raise self.rows.error
            raise StopIteration
        return piece

    def close(self) -> None:
        self.done = True
        self.rows.closed[self.row].set()
        if all(event.is_set() for event in self.rows.closed):
            wait([self.job])


class _ClosingStream(Iterator[str]):
    """A grounded stream that also closes its generation when closed before being read."""

    def __init__(self, stream: Iterator[str], pieces: Iterator[str]) -> None:
        self.stream = stream
        self.pieces = pieces

    def __next__(self) -> str:
        return next(self.stream)

    def close(self) -> None:
        self.stream.close()  # type: ignore[attr-defined]
        self.pieces.close()  # type: ignore[attr-defined]


# A clause ends at , ; or : followed by whitespace ("1,000" and "4:3" stay whole).
_CLAUSE_END_RE = re.compile(r"[,;:](?=\s)")


def _boundaries(text: str, start: int) -> list[tuple[int, int, bool]]:
    """Clause and sentence ends in ``text`` after ``start``: (end of the clause's words, end of its
    delimiter, whether it ends a sentence). A sentence's end punctuation belongs to its words."""
    found = [(end, end, True) for end in sentence_ends(text) if end > start]
    found += [(m.start(), m.end(), False) for m in _CLAUSE_END_RE.finditer(text, start)
              if m.start() > start]
    return sorted(found)


def _batch_inputs(model: Any, prompts: list[list[int]], pad_id: int, device: str) -> dict[str, Any]:
    """``generate`` inputs for prompts written side by side; the caller holds the LM lock.

    The prompts share their opening (system prompt, the user's likes and words: see
    `justification_prompt`), so that part runs once and its key/value cache is copied to every row.
    Each row's own part follows, padded on its left: ``[shared][pad...][own]``, masked, with positions
    counted over unmasked tokens only, so each row computes what it would alone.
    """
    import torch

    shared = shared_prefix_length(prompts)
    if len(prompts) < 2 or shared < MIN_SHARED_PREFIX:
        shared = 0
    own = [ids[shared:] for ids in prompts]
    width = max(len(ids) for ids in own)
    prefix = prompts[0][:shared]
    input_ids = torch.tensor([prefix + [pad_id] * (width - len(ids)) + ids for ids in own], device=device)
    mask = torch.tensor([[1] * shared + [0] * (width - len(ids)) + [1] * len(ids) for ids in own], device=device)
    inputs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": mask}
    if shared:
        with torch.no_grad():  # not inference_mode: `generate` goes on appending to this cache
            cache = model(input_ids=input_ids[:1, :shared], use_cache=True).cache
        cache.batch_repeat_interleave(len(prompts))
        inputs["cache"] = cache
    return inputs


@dataclass
class _Order:
    """One caller's rows waiting for a batched generation (see `_GenerationQueue`)."""

    prompts: list[list[int]]
    rows: _RowStreamer
    max_new_tokens: int
    max_sentences: int
    done: Future[None] = field(default_factory=Future)


class _BatchStreamer:
    """Hands each order's rows of a merged batch to that order's `_RowStreamer`."""

    def __init__(self, orders: Sequence[_Order]) -> None:
        self.orders = orders

    def _slices(self, value: Any) -> Iterator[tuple[_Order, Any]]:
        start = 0
        for order in self.orders:
            n = len(order.prompts)
            yield order, value[start:start + n]
            start += n

    def put(self, value: Any) -> None:
        if value.dim() == 1:  # one new token per row
            value = value.unsqueeze(1)
        for order, part in self._slices(value):
            order.rows.put(part)

    def end(self) -> None:
        for order in self.orders:
            order.rows.end()


class _BatchStop:
    """Stopping criterion of a merged batch: each order's own sentence and token limits on its rows."""

    def __init__(self, tokenizer: Any, prompt_len: int, orders: Sequence[_Order]) -> None:
        self.prompt_len = prompt_len
        self.parts = [(len(o.prompts), o.max_new_tokens,
                       _SentenceLimit(tokenizer, prompt_len, o.max_sentences, o.rows.closed)) for o in orders]

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        done, start = [], 0
        for n, max_new, limit in self.parts:
            rows = input_ids[start:start + n]
            part = limit(rows, scores)
            if input_ids.shape[1] - self.prompt_len >= max_new:
                part = torch.ones_like(part)
            done.append(part)
            start += n
        return torch.cat(done)


class _GenerationQueue:
    """Generations waiting for the model thread, merged into one batch when they meet there.

    Concurrent users would otherwise take turns, each with a batch of a few rows; on a CPU a decoding
    step for twice the rows costs well under twice the time, so while one generation runs, the orders
    that arrive wait here and then run together. A generation already running is never joined.
    """

    MAX_ROWS = 12

    def __init__(self) -> None:
        self._pending: list[_Order] = []
        self._lock = threading.Lock()

    def submit(self, lm: LanguageModel, order: _Order) -> Future[None]:
        with self._lock:
            self._pending.append(order)
        model_thread.submit(self._drain, lm)
        return order.done

    def _take(self) -> list[_Order]:
        with self._lock:
            taken, rows = [], 0
            while self._pending and (not taken or rows + len(self._pending[0].prompts) <= self.MAX_ROWS):
                order = self._pending.pop(0)
                taken.append(order)
                rows += len(order.prompts)
            return taken

    def _drain(self, lm: LanguageModel) -> None:
        # One drain job per order was submitted; the first one to run takes every order then waiting.
        orders = self._take()
        live = []
        for order in orders:
            if all(event.is_set() for event in order.rows.closed):
                order.rows.end()  # closed while it waited: never started
                order.done.set_result(None)
            else:
                live.append(order)
        if not live:
            return
        from transformers import StoppingCriteriaList

        prompts = [ids for order in live for ids in order.prompts]
        log.debug("generation batch: %d request(s), %d row(s)", len(live), len(prompts))
        try:
            tokenizer, model = lm.tokenizer, lm.model
            with lm.lock:
                inputs = _batch_inputs(model, prompts, tokenizer.pad_token_id, lm.device)
                stop = _BatchStop(tokenizer, inputs["input_ids"].shape[1], live)
                model.generate(**inputs, max_new_tokens=max(o.max_new_tokens for o in live), do_sample=False,
                               streamer=_BatchStreamer(live), stopping_criteria=StoppingCriteriaList([stop]),
                               pad_token_id=tokenizer.pad_token_id)
        except BaseException as exc:
            for order in live:
                order.rows.fail(exc)
        for order in live:
            order.done.set_result(None)


# Weak keys: a queue holds no reference to its LM, so an LM no longer used is freed with its queue.
_queues: weakref.WeakKeyDictionary[LanguageModel, _GenerationQueue] = weakref.WeakKeyDictionary()
_queues_lock = threading.Lock()


def _queue_of(lm: LanguageModel) -> _GenerationQueue:
    """The generation queue shared by every justifier of one LM (one per catalog)."""
    with _queues_lock:
        queue = _queues.get(lm)
        if queue is None:
            queue = _queues[lm] = _GenerationQueue()
        return queue


class LMJustifier:
    """`Justifier` that lets the language model write, then keeps only grounded text.

    Greedy decoding of at most ``max_new_tokens`` tokens, stopped after ``max_sentences`` sentences,
    from a forced start ("Since you like X, you may enjoy Y because"). The text is checked clause by
    clause as it is generated (see `checked`): text goes out only once `GroundingChecker` finds no
    unsupported claim in its sentence so far (support: the item's record, the user's words and likes);
    a clause with an invented fact ends its sentence, and an unfinished last clause (cut by the token
    limit) is dropped. If nothing survives, the template's text is used. `justify` is the
    concatenation of `stream`, so both always agree.
    """

    def __init__(self, lm: LanguageModel, checker: GroundingChecker,
                 fallback: TemplateJustifier | None = None, *, max_new_tokens: int = 48,
                 max_sentences: int = 2) -> None:
        self.lm = lm
        self.checker = checker
        self.fallback = fallback or TemplateJustifier()
        self.max_new_tokens = max_new_tokens
        self.max_sentences = max_sentences
        self.last_outcome: str = ""  # "lm", "partial" or "fallback": for evaluation and logs

    def justify(self, request: JustificationRequest) -> str:
        """The whole justification (the joined `stream`)."""
        return "".join(self.stream(request))

    def stream(self, request: JustificationRequest) -> Iterator[str]:
        """Grounded sentences as soon as each is complete, else the template text (see `checked`)."""
        return self.checked(request, self.generate(request))

    def stream_all(self, requests: Sequence[JustificationRequest]) -> list[Iterator[str]]:
        """One grounded stream per request, all generated together in one batch.

        On a CPU a decoding step costs about the same for a few rows as for one (it is bound by reading
        the weights), so three justifications written side by side take little longer than one. The
        first stream is live; the later ones are usually complete by the time they are read.
        """
        return [_ClosingStream(self.checked(request, pieces), pieces)
                for request, pieces in zip(requests, self.generate_all(requests), strict=True)]

    def checked(self, request: JustificationRequest, pieces: Iterator[str]) -> Iterator[str]:
        """Grounded text of generated ``pieces``, clause by clause as each passes the check.

        The forced answer start (`answer_start`: the user's likes and the item's title) is sent at once
        when the template can finish it. After it, text is sent up to each clause end (``,`` ``;`` ``:``)
        or sentence end once the sentence so far has no claim that `GroundingChecker.unsupported_claims`
        finds unsupported and nothing `GroundingChecker.injected` objects to (chat tokens, a link, an
        instruction, words of an injected part of the record or user text, a system prompt). The
        delimiter goes out with the clause after it. A clause that fails ends its sentence where the
        last good clause ended (with "." or, if only the start was sent, with the template's
        `TemplateJustifier.reason`); a sentence that fails before anything of it was sent is dropped,
        and so is an unfinished last clause. If nothing is sent, the template text is. Facts count only
        from the cleaned record and the cleaned user text.
        """
        raw_support = " ".join([request.user_text, *request.user_likes])
        support = " ".join([sanitise_text(request.user_text), *_safe_likes(request.user_likes)])
        item = sanitise_item(request.item)

        def rejected(sentence: str) -> bool:
            return bool(self.checker.unsupported_claims(sentence, item, support)
                        or self.checker.injected(sentence, request.item, raw_support,
                                                 (SYSTEM_PROMPT, RANKING_SYSTEM_PROMPT)))

        start = answer_start(request)
        start_text = " ".join(start.split())
        reason = self.fallback.reason(request) if not rejected(start) else ""
        text = ""  # everything generated so far
        sentence_from = 0  # where the current sentence starts in ``text``
        done = 0  # ``text`` before this offset is decided (sent, or skipped)
        sent = ""  # what was sent of the current sentence (whitespace collapsed)
        skipping = False  # the current sentence failed: skip to its end
        emitted = dropped = 0  # complete sentences sent; clauses or sentences rejected
        only_template = True  # nothing the LM wrote was sent

        def send(upto: int) -> str:
            nonlocal sent, only_template
            candidate = " ".join(text[sentence_from:upto].split())
            piece = candidate[len(sent):]
            if sent != "" or candidate != start_text:
                only_template = False
            piece = piece if sent or emitted == 0 else " " + piece
            sent = candidate
            return piece

        def close() -> str:
            """The end of a sentence cut after its last good clause."""
            nonlocal sent, emitted
            ending = reason if sent == start_text else "."
            sent = ""
            emitted += 1
            return ending

        with closing(pieces) as pieces:
            for piece in pieces:
                text += piece
                if done == 0 and text.startswith(start):
                    done = len(start)  # no clause ends inside the forced start
                    if reason:
                        yield send(done)  # sent before the model has written a word
                for clause_end, boundary_end, ends_sentence in _boundaries(text, done):
                    done = boundary_end
                    if skipping:
                        if ends_sentence:
                            skipping, sentence_from = False, boundary_end
                        continue
                    if rejected(" ".join(text[sentence_from:clause_end].split())):
                        dropped += 1
                        skipping = not ends_sentence
                        if sent:
                            yield close()
                        sentence_from = boundary_end
                    else:
                        piece = send(clause_end)
                        if piece.strip():
                            yield piece
                        if ends_sentence:
                            emitted += 1
                            sent, sentence_from = "", boundary_end
                    if emitted >= self.max_sentences:
                        break
                if emitted >= self.max_sentences:
                    break  # closing() stops the generation
        tail = " ".join(text[sentence_from:].split())
        if emitted < self.max_sentences and not skipping and tail:
            if _FINAL_END_RE.search(tail) and not rejected(tail):
                piece = send(len(text))
                if piece.strip():
                    yield piece
                emitted += 1
            else:  # an unfinished last clause (the token limit), or a rejected last sentence
                dropped += 1
                if sent:
                    yield close()
        if emitted == 0:
            self.last_outcome = "fallback"
            yield from self.fallback.stream(request)
        elif only_template:
            self.last_outcome = "fallback"
        else:
            self.last_outcome = "partial" if dropped else "lm"

    def raw(self, request: JustificationRequest) -> str:
        """The LM's unchecked text (for evaluation and debugging)."""
        return "".join(self.generate(request)).strip()

    def generate(self, request: JustificationRequest) -> Iterator[str]:
        """Raw generated text pieces, streamed from a generation on the model thread (holding the LM lock).

        Closing the iterator early stops the generation; an error in it is raised here.
        """
        return self._generate_rows([request])[0]

    def generate_all(self, requests: Sequence[JustificationRequest]) -> list[Iterator[str]]:
        """Raw generated text pieces per request, from one batched generation (see `stream_all`).

        The generation starts as soon as the model thread is free, and holds the LM lock until every row
        has stopped: after ``max_sentences`` sentences, at the token limit, or when its reader closes it.
        """
        return self._generate_rows(requests) if requests else []

    def _generate_rows(self, requests: Sequence[JustificationRequest]) -> list[Iterator[str]]:
        starts, ids = self._prompts(requests)
        rows = _RowStreamer(self.lm.tokenizer, len(requests))
        job = self._start(ids, rows)  # errors are re-raised in every reader
        return [rows.read(row, start, job) for row, start in enumerate(starts)]

    def _prompts(self, requests: Sequence[JustificationRequest]) -> tuple[list[str], list[list[int]]]:
        """The forced answer starts, and each prompt's token ids (ending with its start)."""
        tokenizer = self.lm.tokenizer
        starts = [answer_start(request) for request in requests]
        prompts = [tokenizer.apply_chat_template(justification_prompt(request), add_generation_prompt=True,
                                                 tokenize=False) + start
                   for request, start in zip(requests, starts, strict=True)]
        return starts, [tokenizer(prompt, add_special_tokens=False)["input_ids"] for prompt in prompts]

    def _start(self, prompts: list[list[int]], rows: _RowStreamer) -> Future[None]:
        """Greedy generation on the model thread, holding the LM lock, stopped per row by `_SentenceLimit`.

        The model thread (`retrieval.model_thread`) runs one job at a time. Requests that wait for it
        together, from any user, are generated as one batch (`_GenerationQueue`); a generation whose
        readers were all closed while it waited does not start.
        """
        order = _Order(prompts, rows, self.max_new_tokens, self.max_sentences)
        return _queue_of(self.lm).submit(self.lm, order)
