"""Probe: does a scoring head on the LM's hidden states add information to retrieval? (stop 17 diagnosis)

Stage ``encode``: every distinct training context (ReDial + INSPIRED training dialogs on the movies catalog)
is rendered as a dialogue, run once through the LM, and its final hidden states kept (last token, mean);
MiniLM embeddings of the same text are kept for comparison. Stage ``fit``: a linear head maps a context
state into MiniLM item space (softmax over all items, mentioned items masked), trained on the training
slice; on the held-out slice (the one `recchat train` holds out, priors recounted without it) the head's
score is fused with the retrieval and full-without-lm scores: z(base) + w * z(head) over the base's top 200.
``RECCHAT_DATA_DIR=... python reports/lm_head/probe.py encode|fit``
"""

from __future__ import annotations

import pickle
import sys
import time
from pathlib import Path

import numpy as np

from chatbot.finetune import heldout
from retrieval.dialogs import iter_samples

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "reports"))
from heldout_slice import heldout_slice  # noqa: E402  (the reports folder is not a package)

OUT = Path("/tmp/rc/lm_head")


def render(context: list) -> str:  # noqa: ANN001
    lines = [f"{'User' if t.role == 'user' else 'Assistant'}: {t.text.strip()}" for t in context if t.text.strip()]
    return "\n".join(lines)[-1500:]


def encode() -> None:
    import torch

    from chatbot.lm import LanguageModel
    from chatbot.ranking import ranking_prompt

    data = heldout_slice()
    settings, library, dialogs = data.settings, data.library, data.dialogs
    samples = list(iter_samples(dialogs))
    keys: dict[tuple[str, int], str] = {}
    for s in samples:
        keys.setdefault((s.dialog_id, len(s.context)), render(s.context))
    texts = list(keys.values())
    print(len(texts), "contexts", flush=True)
    lm = LanguageModel(settings)
    tok, model = lm.tokenizer, lm.model
    ids = [tok.apply_chat_template(ranking_prompt(t), add_generation_prompt=True, tokenize=True,
                                   return_dict=False) for t in texts]
    ids = [list(x)[-384:] for x in ids]
    last = np.zeros((len(ids), model.config.hidden_size), np.float32)
    mean = np.zeros_like(last)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    start = time.time()
    batch = 8
    with torch.inference_mode():
        for b in range(0, len(order), batch):
            rows = order[b:b + batch]
            width = max(len(ids[i]) for i in rows)
            inp = torch.full((len(rows), width), tok.pad_token_id or 0)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, i in enumerate(rows):
                inp[r, :len(ids[i])] = torch.tensor(ids[i])
                mask[r, :len(ids[i])] = 1
            h = model.model(input_ids=inp, attention_mask=mask).last_hidden_state.float()
            for r, i in enumerate(rows):
                n = len(ids[i])
                last[i] = h[r, n - 1].numpy()
                mean[i] = h[r, :n].mean(0).numpy()
            if b % 400 == 0:
                print(b, f"{time.time() - start:.0f}s", flush=True)
    mini = library.embedder.encode(texts)
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez(OUT / "states.npz", last=last, mean=mean, mini=np.asarray(mini, np.float32),
             keys=np.array([f"{d}|{n}" for d, n in keys]))
    print("done", f"{time.time() - start:.0f}s", flush=True)


def zs(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() + 1e-9)


def train_head(x: np.ndarray, targets: np.ndarray, masks: list[list[int]], items: np.ndarray,
               epochs: int, wd: float, seed: int = 0):  # noqa: ANN201
    import torch

    torch.manual_seed(seed)
    xt = torch.from_numpy(x)
    it = torch.from_numpy(items)
    t = torch.from_numpy(targets)
    layer = torch.nn.Linear(x.shape[1], items.shape[1])
    scale = torch.nn.Parameter(torch.tensor(10.0))
    opt = torch.optim.Adam([*layer.parameters(), scale], lr=1e-3, weight_decay=wd)
    for _ in range(epochs):
        order = torch.randperm(len(t))
        for s in range(0, len(t), 256):
            idx = order[s:s + 256]
            logits = scale * torch.nn.functional.normalize(layer(xt[idx]), dim=1) @ it.T
            m = torch.zeros_like(logits, dtype=torch.bool)
            for r, i in enumerate(idx.tolist()):
                m[r, masks[i]] = True
            m[torch.arange(len(idx)), t[idx]] = False
            loss = torch.nn.functional.cross_entropy(logits.masked_fill(m, -1e4), t[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return lambda q: (torch.nn.functional.normalize(layer(torch.from_numpy(q)), dim=1) @ it.T).detach().numpy()


def fit() -> None:
    from chatbot.dialogue import DialogueManager
    from chatbot.justify import TemplateJustifier
    from eval.recommend import FullRecommender
    from retrieval.fusion import preferences_for

    sliced = heldout_slice()
    library, catalog, dialogs = sliced.library, sliced.catalog, sliced.dialogs
    generator = library.generator("movies")  # priors recounted without the held-out slice
    data = np.load(OUT / "states.npz")
    index = {k: n for n, k in enumerate(data["keys"].tolist())}
    items = generator.matrix.astype(np.float32)
    row = generator.row_of
    samples = [s for s in iter_samples(dialogs) if s.is_new and s.target in row]
    feats = {
        "lm": np.concatenate([data["last"], data["mean"]], 1),
        "mini": data["mini"],
        "lm+mini": np.concatenate([data["last"], data["mean"], data["mini"]], 1),
    }
    train = [s for s in samples if not heldout(s.dialog_id, 0.1)]
    held = [s for s in samples if heldout(s.dialog_id, 0.1)]
    print(len(train), "train samples,", len(held), "held-out", flush=True)

    def rows_of(ss):  # noqa: ANN001, ANN202
        return [index[f"{s.dialog_id}|{len(s.context)}"] for s in ss]

    def mask_of(s):  # noqa: ANN001, ANN202
        return [row[i] for t in s.context for i in t.items if i in row]

    # Base rankings (top 200 with fused scores) for the held-out samples.
    dialogue = DialogueManager(library, None, lambda c, ch: TemplateJustifier())
    full = FullRecommender(dialogue, "movies", use_lm=False)
    bases: dict[str, list[tuple[list[str], np.ndarray]]] = {"retrieval": [], "full": []}
    linker = library.linker("movies")
    cache = OUT / "bases.pkl"
    if cache.exists():
        bases = pickle.loads(cache.read_bytes())
    for s in held if not cache.exists() else []:
        c = generator.candidates(preferences_for(s.context, catalog, linker), 200)
        bases["retrieval"].append(([x.item_id for x in c], np.array([x.score for x in c])))
        prefs, _ = full.inputs(s.context)
        c = generator.candidates(prefs, 200)
        bases["full"].append(([x.item_id for x in c], np.array([x.score for x in c])))
    cache.write_bytes(pickle.dumps(bases))
    for name, ranks in bases.items():
        r = [ids.index(s.target) if s.target in ids else 999 for s, (ids, _) in zip(held, ranks, strict=True)]
        print(name, "R@10", round(np.mean([x < 10 for x in r]), 4), "R@50", round(np.mean([x < 50 for x in r]), 4),
              flush=True)
    for fname, x in feats.items():
        mu, sd = x[rows_of(train)].mean(0), x[rows_of(train)].std(0) + 1e-6
        xs = ((x - mu) / sd).astype(np.float32)
        for epochs, wd in ((10, 1e-4), (30, 1e-4), (30, 1e-2)):
            head = train_head(xs[rows_of(train)], np.array([row[s.target] for s in train]),
                              [mask_of(s) for s in train], items, epochs, wd)
            scores = head(xs[rows_of(held)])
            alone = []
            for n, s in enumerate(held):
                sc = scores[n].copy()
                sc[mask_of(s)] = -9
                alone.append(int((sc > sc[row[s.target]]).sum()))
            line = f"{fname} ep{epochs} wd{wd}: head alone R@10 {np.mean([a < 10 for a in alone]):.4f} " \
                   f"R@50 {np.mean([a < 50 for a in alone]):.4f}"
            for bname, ranks in bases.items():
                for w in (0.25, 0.5, 1.0):
                    hits = []
                    for n, (s, (ids, base)) in enumerate(zip(held, ranks, strict=True)):
                        fused = zs(base) + w * zs(scores[n][[row[i] for i in ids]])
                        order = [ids[j] for j in np.argsort(-fused)]
                        hits.append(order.index(s.target) if s.target in order else 999)
                    r10, r50 = np.mean([h < 10 for h in hits]), np.mean([h < 50 for h in hits])
                    line += f" | {bname} w{w} {r10:.4f}/{r50:.4f}"
            print(line, flush=True)


if __name__ == "__main__":
    {"encode": encode, "fit": fit}[sys.argv[1]]()
