"""Re-ranking candidates with the language model: score every candidate in one batched forward pass.

`LMRanker` asks the LM, in its chat format, to recommend one item for what the user wants, and scores
each candidate by how likely the LM finds the candidate's short description as the answer. The shared
prompt is run once; its key/value cache is then repeated along the batch so that all continuations
are scored together in one pass (one pass per candidate is far too slow on a CPU).

The prompt and continuation texts are built by `ranking_prompt` and `candidate_text`, which a
fine-tuning script should reuse so that a LoRA adapter learns exactly the format it is used with.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from retrieval.catalog import MAX_SHORT_STRING, Item

if TYPE_CHECKING:
    import torch

    from chatbot.lm import LanguageModel

SYSTEM_PROMPT = "You are a recommender. You answer with the single catalog item that best fits the request."
# Identifier-like fields say nothing about whether an item fits; they only waste continuation tokens.
_YEAR_SUFFIX_RE = re.compile(r"\s*\((?:1[89]\d\d|20\d\d)\)\s*$")
_SKIP_FIELD_RE = re.compile(r"(^|_)(id|ids|url|urls|link|image|sku|asin)$|_title$|^title$", re.IGNORECASE)


class Ranker(Protocol):
    """Scores candidate items for what the user wants; higher is better."""

    def score(self, context: str, items: Sequence[Item]) -> list[float]:
        """One score per item, in the order given.

        ``context`` is a short text of what the user wants: their request plus liked items' titles.
        """
        ...


def ranking_prompt(context: str) -> list[dict[str, str]]:
    """The chat messages the ranker conditions on (the candidate is the assistant's answer)."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"The user says: {context.strip()}\nRecommend one item."},
    ]


def key_attributes(item: Item, max_fields: int = 2, max_values: int = 3) -> list[tuple[str, list[str]]]:
    """The first few descriptive attribute fields of an item (list fields first, then short strings).

    Schema-free: field names are whatever the catalog uses (``genre``, ``brand``, ``category`` ...).
    """
    out: list[tuple[str, list[str]]] = []
    for name, values in item.lists.items():
        if len(out) >= max_fields:
            return out
        if values and not _SKIP_FIELD_RE.search(name):
            out.append((name, values[:max_values]))
    for name, value in item.text.items():
        if len(out) >= max_fields:
            break
        if len(value) <= MAX_SHORT_STRING and not _SKIP_FIELD_RE.search(name) and value != item.title:
            out.append((name, [value]))
    return out


def candidate_text(item: Item, max_fields: int = 1, max_values: int = 2) -> str:
    """The answer text scored for a candidate: its title plus its first key attribute values.

    ``Heat: action, crime`` for "Heat (1995)" with genres action, crime, drama. Kept short on purpose:
    every token of every candidate is a token of the forward pass, which is compute-bound on a CPU;
    a year in parentheses alone costs six tokens (digits are single tokens), and field names add
    little for the LM, so both are left out (remakes of one title then tie, which callers break by
    their retrieval order).
    """
    title = _YEAR_SUFFIX_RE.sub("", item.title) or item.title
    values = [value for _, field_values in key_attributes(item, max_fields, max_values)
              for value in field_values]
    return f"{title}: {', '.join(values)}" if values else title


class LMRanker:
    """`Ranker` that scores candidates by the LM's mean token log-probability of their description.

    Score = mean over the continuation's tokens of log p(token | prompt, previous tokens). The mean,
    not the sum, is used so that long titles are not penalised merely for having more tokens; the
    continuation is truncated to ``max_item_tokens`` tokens to bound the cost. Candidates are scored
    in batches of ``batch_size`` (one forward pass each) after one pass over the shared prompt.
    Works unchanged with a LoRA adapter: it only calls ``lm.model``.
    """

    def __init__(self, lm: LanguageModel, *, max_item_tokens: int = 10, max_context_tokens: int = 384,
                 batch_size: int = 64) -> None:
        self.lm = lm
        self.max_item_tokens = max_item_tokens
        self.max_context_tokens = max_context_tokens
        self.batch_size = batch_size

    def prompt_ids(self, context: str) -> list[int]:
        """Token ids of the chat-formatted prompt; an over-long context keeps its most recent end."""
        tokenizer = self.lm.tokenizer
        words = context.split()
        while True:
            ids = tokenizer.apply_chat_template(ranking_prompt(" ".join(words)), add_generation_prompt=True,
                                                tokenize=True, return_dict=False)
            if len(ids) <= self.max_context_tokens or len(words) <= 1:
                return list(ids)
            # Drop the oldest words (the context lists the latest request last); re-tokenising keeps
            # the template's special tokens intact, unlike cutting the id list.
            words = words[max(1, len(words) // 8):]

    def item_ids(self, item: Item) -> list[int]:
        """Token ids of a candidate's continuation (at least one token)."""
        ids = self.lm.tokenizer(candidate_text(item), add_special_tokens=False)["input_ids"]
        ids = ids[: self.max_item_tokens]
        return ids or [self.lm.tokenizer.eos_token_id]

    def score(self, context: str, items: Sequence[Item]) -> list[float]:
        """Mean continuation log-probability per item (a float <= 0; higher is better)."""
        if not items:
            return []
        import torch

        prompt = self.prompt_ids(context)
        continuations = [self.item_ids(item) for item in items]
        model, device = self.lm.model, self.lm.device
        scores: list[float] = []
        with self.lm.lock, torch.inference_mode():
            prefix = torch.tensor([prompt], device=device)
            # Only the last position's logits are needed from the prompt: skipping the LM head elsewhere
            # saves a fifth of the prompt's cost (the 49k-word head is large for a 135M model).
            out = model(input_ids=prefix, use_cache=True, logits_to_keep=1)
            first_logprobs = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
            layers = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
            for start in range(0, len(continuations), self.batch_size):
                chunk = continuations[start:start + self.batch_size]
                scores.extend(self._score_chunk(model, layers, first_logprobs, chunk, len(prompt)))
        return scores

    def _score_chunk(self, model: torch.nn.Module, layers: list[tuple[torch.Tensor, torch.Tensor]],
                     first_logprobs: torch.Tensor, chunk: list[list[int]], prompt_len: int) -> list[float]:
        import torch
        from transformers import DynamicCache

        device = first_logprobs.device
        n, width = len(chunk), max(len(ids) for ids in chunk)
        pad = self.lm.tokenizer.pad_token_id or 0
        tokens = torch.full((n, width), pad, dtype=torch.long, device=device)
        mask = torch.zeros((n, width), dtype=torch.bool, device=device)
        for row, ids in enumerate(chunk):
            tokens[row, : len(ids)] = torch.tensor(ids, device=device)
            mask[row, : len(ids)] = True
        # A fresh cache per chunk: DynamicCache grows by concatenation, so the prompt's tensors are
        # only read (expand is a view), never modified, and can be reused for the next chunk.
        cache = DynamicCache(
            [(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in layers], config=model.config
        )
        # Padding sits at the right end, so causal attention already keeps real tokens from seeing it:
        # an all-ones mask gives each row exactly the values it would get alone.
        attention = torch.ones((n, prompt_len + width), dtype=torch.long, device=device)
        if width > 1:
            logits = model(input_ids=tokens[:, :-1], past_key_values=cache, attention_mask=attention[:, :-1],
                           use_cache=False).logits
            rest = torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens[:, 1:, None])[..., 0]
        else:
            rest = torch.zeros((n, 0), device=device)
        logprobs = torch.cat([first_logprobs[tokens[:, :1]], rest], dim=1)
        logprobs = logprobs.masked_fill(~mask, 0.0)
        means = logprobs.sum(dim=1) / mask.sum(dim=1)
        return [float(v) if math.isfinite(float(v)) else -1e9 for v in means.tolist()]
