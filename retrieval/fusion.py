"""Fitting the candidate fusion weights on training conversations (never on a test split)."""

from __future__ import annotations

import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from retrieval.candidates import FEATURES, CandidateGenerator, LearnedFusion, Preferences
from retrieval.catalog import Catalog
from retrieval.dialogs import Dialog, context_text, iter_samples
from retrieval.embedding import Embedder
from retrieval.linking import EntityLinker
from retrieval.priors import InteractionPriors
from retrieval.store import VectorStore


def preferences_for(context: list, catalog: Catalog, linker: EntityLinker) -> Preferences:  # noqa: ANN001
    """The retrieval view of a dialog context (a list of `Turn`): its words, every item mentioned so far as
    liked, and the attribute values named in the user's turns."""
    text, recent = context_text(context)
    liked: list[str] = []
    for turn in context:
        liked += [i for i in turn.items if i in catalog and i not in liked]
    attributes = named_attributes(linker, [t.text for t in context if t.role == "user"])
    return Preferences(text=text, recent=recent, liked=liked, attributes=attributes)


def named_attributes(linker: EntityLinker, texts: Sequence[str]) -> dict[str, list[str]]:
    """Field -> attribute values named in ``texts`` (in order, without repeats): `Preferences.attributes`."""
    attributes: dict[str, list[str]] = {}
    for text in texts:
        if text.strip():
            for mention in linker.link_attributes(text):
                values = attributes.setdefault(mention.field, [])
                if mention.value not in values:
                    values.append(mention.value)
    return attributes


def encode_queries(prefs_list: Sequence[Preferences], embedder: Embedder, progress: bool = True) -> np.ndarray:
    """[text; latest request] embeddings, one row per preferences (n, 2d): the projection's input.

    A missing half is filled from the other, as `CandidateGenerator.project` does at request time.
    """
    texts = [p.text or " " for p in prefs_list] + [p.recent or " " for p in prefs_list]
    vectors = embedder.encode(texts, progress=progress)
    n = len(prefs_list)
    d = vectors.shape[1]
    queries = np.concatenate([vectors[:n], vectors[n:]], axis=1)
    for i, prefs in enumerate(prefs_list):
        if not prefs.text.strip():
            queries[i, :d] = vectors[n + i]
        if not prefs.recent.strip():
            queries[i, d:] = queries[i, :d]
    return queries


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
    """What `fit_retrieval` learns: fusion weights, the learned scorer and the query projection.

    ``report`` holds recall on held-out training dialogs for the linear and the learned fusion, so the
    choice between them is measured, not assumed.
    """

    weights: dict[str, float]
    projection: np.ndarray
    projection_bias: np.ndarray
    scorer: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)

    def store_in(self, priors: InteractionPriors) -> None:
        """Put the fitted fusion into ``priors`` (rounded, as saved with the catalog)."""
        priors.weights = self.weights
        priors.projection = self.projection.round(5).tolist()
        priors.projection_bias = self.projection_bias.round(5).tolist()
        priors.scorer = self.scorer


def fit_retrieval(
    dialogs: Sequence[Dialog],
    catalog: Catalog,
    store: VectorStore,
    embedder: Embedder,
    neighbours: dict[str, dict[str, float]] | None = None,
    pool_k: int = 200,
    epochs: int = 300,
    mlp_epochs: int = 100,
    folds: int = 5,
    hidden: int = 16,
    seed: int = 0,
    progress: bool = True,
) -> FittedRetrieval:
    """Learn the query projection, the linear fusion weights and the learned scorer on training dialogs.

    Cross-fitting: for each of ``folds`` folds of dialogs, the projection and the co-occurrence counts come
    from the other folds, so every sample's signals behave as they would on an unseen conversation. Folds
    keep each `Dialog.group` (e.g. one recommender's dialogs) together, so "unseen" also means "by other
    people". The fusion is fitted on these out-of-fold samples; the last fold is first kept aside to
    measure the linear and the learned fusion (``report``), then both are refitted on every fold. The
    final projection is trained on all dialogs.
    """
    order = list(dialogs)
    fold_of = _assign_folds(order, folds, seed)
    folds = max(fold_of.values(), default=0) + 1
    samples = [s for s in iter_samples(order) if s.is_new and s.target in catalog]
    if not samples:
        raise ValueError("no training samples: no assistant turn mentions a catalog item")
    linker = EntityLinker(catalog)
    prefs_list = [preferences_for(s.context, catalog, linker) for s in samples]
    queries = encode_queries(prefs_list, embedder, progress)
    n = len(samples)
    d = queries.shape[1] // 2
    generator = CandidateGenerator(catalog, store, embedder)
    matrix = generator.matrix
    row = generator.row_of
    targets = [row[s.target] for s in samples]
    masks = np.zeros((n, len(catalog)), dtype=bool)
    for i, prefs in enumerate(prefs_list):
        masks[i, [row[x] for x in prefs.liked if x in row]] = True

    groups: list[tuple[np.ndarray, int, int]] = []  # (features of the pool, target position, fold)
    fold_iter: Any = range(folds)
    if progress:
        from tqdm import tqdm

        fold_iter = tqdm(fold_iter, desc="cross-fitting folds", unit="fold", file=sys.stderr)
    for fold in fold_iter:
        train_idx = [i for i, s in enumerate(samples) if fold_of[s.dialog_id] != fold]
        held_idx = [i for i, s in enumerate(samples) if fold_of[s.dialog_id] == fold]
        if not train_idx or not held_idx:
            continue
        weight, bias = fit_projection(queries[train_idx], [targets[i] for i in train_idx], masks[train_idx], matrix)
        priors = InteractionPriors.from_dialogs(x for x in order if fold_of[x.id] != fold)
        priors.neighbours = neighbours or {}
        priors.projection, priors.projection_bias = weight.tolist(), bias.tolist()
        generator = CandidateGenerator(catalog, store, embedder, priors)
        for i in held_idx:
            prefs = prefs_list[i]
            prefs.text_vector = queries[i, :d].tolist()
            prefs.recent_vector = queries[i, d:].tolist()
            pool, query, recent = generator._pool(prefs, pool_k)
            if samples[i].target in pool:
                groups.append((generator.features(pool, prefs, query, recent), pool.index(samples[i].target), fold))
    if not groups:
        raise ValueError("no training samples with the target in the candidate pool")
    report: dict[str, Any] = {"samples": n, "in_pool": len(groups), "folds": folds}
    last = folds - 1
    fit_part = [(f, t) for f, t, fold in groups if fold != last]
    check = [(f, t) for f, t, fold in groups if fold == last]
    if fit_part and check:
        held = sum(1 for s in samples if fold_of[s.dialog_id] == last)
        linear = _fit_linear(fit_part, epochs, seed)
        lin_scores = [f @ np.array([linear[k] for k in FEATURES], dtype=np.float32) for f, _ in check]
        learned = LearnedFusion(**_fit_mlp(fit_part, hidden, mlp_epochs, seed))
        report["heldout_samples"] = held
        report["linear"] = _recalls(lin_scores, check, held)
        report["learned"] = _recalls([learned.score(f) for f, _ in check], check, held)
    pairs = [(f, t) for f, t, _ in groups]
    weights = _fit_linear(pairs, epochs, seed)
    scorer = _fit_mlp(pairs, hidden, mlp_epochs, seed)
    final_weight, final_bias = fit_projection(queries, targets, masks, matrix)
    return FittedRetrieval(weights, final_weight, final_bias, scorer, report)


def _assign_folds(dialogs: list[Dialog], folds: int, seed: int) -> dict[str, int]:
    """Dialog id -> fold, whole groups at a time (a dialog without a group is its own), balanced by size."""
    by_group: dict[str, list[str]] = {}
    for dialog in dialogs:
        by_group.setdefault(dialog.group or f"dialog:{dialog.id}", []).append(dialog.id)
    groups = list(by_group.values())
    random.Random(seed).shuffle(groups)
    groups.sort(key=len, reverse=True)  # stable: equal sizes keep the shuffled order
    folds = max(2, min(folds, len(groups)))
    sizes = [0] * folds
    fold_of: dict[str, int] = {}
    for members in groups:
        fold = min(range(folds), key=lambda f: (sizes[f], f))
        sizes[fold] += len(members)
        fold_of.update(dict.fromkeys(members, fold))
    return fold_of


def _recalls(scores: list[np.ndarray], groups: list[tuple[np.ndarray, int]], samples: int) -> dict[str, float]:
    """Recall@k over held-out samples (those whose target missed the pool count as misses)."""
    ranks = [int((s > s[t]).sum()) + 1 for s, (_, t) in zip(scores, groups, strict=True)]
    return {f"recall@{k}": round(sum(r <= k for r in ranks) / samples, 4) for k in (1, 10, 50, 100)}


def _padded(groups: list[tuple[np.ndarray, int]]) -> tuple[Any, Any, Any]:
    import torch

    width = max(len(f) for f, _ in groups)
    feats = torch.zeros(len(groups), width, len(FEATURES))
    mask = torch.full((len(groups), width), float("-inf"))
    for n, (f, _) in enumerate(groups):
        feats[n, : len(f)] = torch.from_numpy(f)
        mask[n, : len(f)] = 0.0
    return feats, mask, torch.tensor([t for _, t in groups])


def _fit_mlp(groups: list[tuple[np.ndarray, int]], hidden: int, epochs: int, seed: int) -> dict[str, Any]:
    """Fit a `LearnedFusion` (listwise softmax over each sample's pool); returns its dict form."""
    import torch

    torch.manual_seed(seed)
    prepared = [(LearnedFusion.prepare(f), t) for f, t in groups]
    stacked = np.concatenate([f for f, _ in prepared])
    mean = stacked.mean(axis=0)
    std = stacked.std(axis=0) + 1e-6
    model = torch.nn.Sequential(torch.nn.Linear(len(FEATURES), hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    # Batches of pools of similar size: padding every pool to the widest one made fitting ~3x slower.
    by_size = sorted(range(len(prepared)), key=lambda i: len(prepared[i][0]))
    batches = [_padded([((prepared[i][0] - mean) / std, prepared[i][1]) for i in by_size[start : start + 256]])
               for start in range(0, len(by_size), 256)]
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        for b in rng.permutation(len(batches)):
            feats, mask, targets = batches[b]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(feats).squeeze(-1) + mask, targets).backward()
            opt.step()
    first, second = model[0], model[2]

    def rounded(t: Any) -> Any:
        return np.round(t.detach().numpy().astype(np.float64), 6).tolist()

    return {"features": list(FEATURES), "mean": np.round(mean, 6).tolist(), "std": np.round(std, 6).tolist(),
            "w1": rounded(first.weight), "b1": rounded(first.bias), "w2": rounded(second.weight[0]),
            "b2": float(second.bias.item())}


def _fit_linear(groups: list[tuple[np.ndarray, int]], epochs: int, seed: int) -> dict[str, float]:
    """Listwise softmax over each sample's candidate pool."""
    import torch

    torch.manual_seed(seed)
    feats, mask, targets = _padded(groups)
    w = torch.zeros(len(FEATURES), requires_grad=True)
    opt = torch.optim.Adam([w], lr=0.05)
    for _ in range(epochs):
        opt.zero_grad()
        logits = feats @ w + mask
        loss = torch.nn.functional.cross_entropy(logits, targets) + 1e-3 * (w**2).sum()
        loss.backward()
        opt.step()
    return {name: round(float(v), 5) for name, v in zip(FEATURES, w.detach().tolist(), strict=True)}
