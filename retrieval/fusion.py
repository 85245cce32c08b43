"""Fitting the candidate fusion weights on training conversations (never on a test split)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

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


def fit_projection(
    queries: np.ndarray, targets: Sequence[int], masks: np.ndarray, matrix: np.ndarray,
    epochs: int = 60, weight_decay: float = 1e-2, seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Learn W, b so that normalise(W q + b) ranks each sample's target first among all items (softmax).

    ``queries`` are [text; latest request] embeddings (n, 2d); ``masks`` mark items to ignore per sample
    (already mentioned). W starts as [I 0], i.e. the plain text query.
    """
    import torch

    torch.manual_seed(seed)
    d = matrix.shape[1]
    x = torch.from_numpy(queries.astype(np.float32))
    items = torch.from_numpy(matrix.astype(np.float32))
    t = torch.tensor(list(targets))
    m = torch.from_numpy(masks)
    layer = torch.nn.Linear(queries.shape[1], d)
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[:, :d] = torch.eye(d)
        layer.bias.zero_()
    scale = torch.nn.Parameter(torch.tensor(10.0))
    opt = torch.optim.Adam([*layer.parameters(), scale], lr=2e-3, weight_decay=weight_decay)
    batch = 512
    for _ in range(epochs):
        order = torch.randperm(len(t))
        for start in range(0, len(t), batch):
            idx = order[start : start + batch]
            opt.zero_grad()
            out = torch.nn.functional.normalize(layer(x[idx]), dim=1)
            logits = (scale * out @ items.T).masked_fill(m[idx], -1e4)
            torch.nn.functional.cross_entropy(logits, t[idx]).backward()
            opt.step()
    return layer.weight.detach().numpy(), layer.bias.detach().numpy()


@dataclass
class FittedRetrieval:
    """What `fit_retrieval` learns: fusion weights and the query projection."""

    weights: dict[str, float]
    projection: np.ndarray
    projection_bias: np.ndarray


def fit_retrieval(
    dialogs: Sequence[Dialog],
    catalog: Catalog,
    store: VectorStore,
    embedder: Embedder,
    neighbours: dict[str, dict[str, float]] | None = None,
    pool_k: int = 200,
    epochs: int = 300,
    seed: int = 0,
    progress: bool = True,
) -> FittedRetrieval:
    """Learn the query projection and the linear fusion weights on training conversations.

    One fifth of the dialogs is held out: the projection and the co-occurrence counts used for its samples
    come from the other four fifths, so the fusion weights see every signal as it behaves on unseen
    conversations. The final projection is then trained on all dialogs.
    """
    rng = random.Random(seed)
    order = list(dialogs)
    rng.shuffle(order)
    samples = [s for s in iter_samples(order) if s.is_new and s.target in catalog]
    prefs_list = [preferences_for(s.context, catalog) for s in samples]
    texts = [p.text or " " for p in prefs_list] + [p.recent or " " for p in prefs_list]
    vectors = embedder.encode(texts, progress=progress)
    n = len(samples)
    queries = np.concatenate([vectors[:n], vectors[n:]], axis=1)
    for i, prefs in enumerate(prefs_list):
        if not prefs.text.strip():
            queries[i, : vectors.shape[1]] = vectors[n + i]
        if not prefs.recent.strip():
            queries[i, vectors.shape[1]:] = queries[i, : vectors.shape[1]]
    generator = CandidateGenerator(catalog, store, embedder)
    matrix = generator.matrix
    row = generator.row_of
    targets = [row[s.target] for s in samples]
    masks = np.zeros((n, len(catalog)), dtype=bool)
    for i, prefs in enumerate(prefs_list):
        masks[i, [row[x] for x in prefs.liked if x in row]] = True

    held_ids = {d.id for d in order[0::5]}
    train_idx = [i for i, s in enumerate(samples) if s.dialog_id not in held_ids]
    held_idx = [i for i, s in enumerate(samples) if s.dialog_id in held_ids]
    weight, bias = fit_projection(queries[train_idx], [targets[i] for i in train_idx], masks[train_idx], matrix)
    priors = InteractionPriors.from_dialogs(d for d in order if d.id not in held_ids)
    priors.neighbours = neighbours or {}
    priors.projection, priors.projection_bias = weight.tolist(), bias.tolist()
    generator = CandidateGenerator(catalog, store, embedder, priors)
    groups: list[tuple[np.ndarray, int]] = []
    d = vectors.shape[1]
    for i in held_idx:
        prefs = prefs_list[i]
        prefs.vector = queries[i, :d].tolist()
        prefs.recent_vector = queries[i, d:].tolist()
        pool, query, recent = generator._pool(prefs, pool_k)
        if samples[i].target in pool:
            groups.append((generator.features(pool, prefs, query, recent), pool.index(samples[i].target)))
    if not groups:
        raise ValueError("no training samples with the target in the candidate pool")
    weights = _fit_linear(groups, epochs, seed)
    final_weight, final_bias = fit_projection(queries, targets, masks, matrix)
    return FittedRetrieval(weights, final_weight, final_bias)


def _fit_linear(groups: list[tuple[np.ndarray, int]], epochs: int, seed: int) -> dict[str, float]:
    """Listwise softmax over each sample's candidate pool."""
    import torch

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
