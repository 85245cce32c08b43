"""Fitting the candidate fusion weights on training conversations (never on a test split)."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

from retrieval.candidates import FEATURES, CandidateGenerator, Preferences
from retrieval.catalog import Catalog
from retrieval.dialogs import Dialog, context_text, iter_samples
from retrieval.embedding import Embedder
from retrieval.priors import InteractionPriors
from retrieval.store import VectorStore


def preferences_for(context: list, catalog: Catalog) -> Preferences:  # noqa: ANN001 - list[Turn]
    """The retrieval view of a dialog context: its words, and every item mentioned so far as liked."""
    text, recent = context_text(context)
    liked: list[str] = []
    for turn in context:
        liked += [i for i in turn.items if i in catalog and i not in liked]
    return Preferences(text=text, recent=recent, liked=liked)


def fit_weights(
    dialogs: Sequence[Dialog],
    catalog: Catalog,
    store: VectorStore,
    embedder: Embedder,
    neighbours: dict[str, dict[str, float]] | None = None,
    folds: int = 5,
    pool_k: int = 200,
    epochs: int = 300,
    seed: int = 0,
    max_samples: int = 6000,
    progress: bool = True,
) -> dict[str, float]:
    """Learn linear fusion weights with a listwise softmax loss over candidate pools.

    Co-occurrence counts for a sample come from the other folds only, so the weights see the signal
    as it behaves on unseen conversations.
    """
    import torch

    rng = random.Random(seed)
    order = list(dialogs)
    rng.shuffle(order)
    groups: list[tuple[np.ndarray, int]] = []
    for fold in range(folds):
        held = order[fold::folds]
        held_ids = {d.id for d in held}
        priors = InteractionPriors.from_dialogs(d for d in order if d.id not in held_ids)
        priors.neighbours = neighbours or {}
        generator = CandidateGenerator(catalog, store, embedder, priors)
        samples = [s for s in iter_samples(held) if s.is_new]
        rng.shuffle(samples)
        samples = samples[: max_samples // folds]
        prefs_list = [preferences_for(sample.context, catalog) for sample in samples]
        # Encode all queries of the fold in batches: far faster than one at a time.
        texts = [p.text or " " for p in prefs_list] + [p.recent or " " for p in prefs_list]
        vectors = embedder.encode(texts, progress=progress)
        for n, (sample, prefs) in enumerate(zip(samples, prefs_list, strict=True)):
            if prefs.text.strip():
                prefs.vector = vectors[n].tolist()
            if prefs.recent.strip():
                prefs.recent_vector = vectors[len(samples) + n].tolist()
            pool, query, recent = generator._pool(prefs, pool_k)
            if sample.target not in pool:
                continue
            feats = generator.features(pool, prefs, query, recent)
            groups.append((feats, pool.index(sample.target)))
    if not groups:
        raise ValueError("no training samples with the target in the candidate pool")
    torch.manual_seed(seed)
    width = max(len(f) for f, _ in groups)
    feats = torch.zeros(len(groups), width, len(FEATURES))
    mask = torch.full((len(groups), width), float("-inf"))
    for n, (f, _) in enumerate(groups):
        feats[n, : len(f)] = torch.from_numpy(f)
        mask[n, : len(f)] = 0.0
    targets = torch.tensor([t for _, t in groups])
    w = torch.zeros(len(FEATURES), requires_grad=True)
    opt = torch.optim.Adam([w], lr=0.05)
    for _ in range(epochs):
        opt.zero_grad()
        logits = feats @ w + mask
        loss = torch.nn.functional.cross_entropy(logits, targets) + 1e-3 * (w**2).sum()
        loss.backward()
        opt.step()
    return {name: round(float(v), 5) for name, v in zip(FEATURES, w.detach().tolist(), strict=True)}
