"""Fine-tuning the LM with LoRA for candidate ranking and justification, on training conversations only.

Ranking examples come from replaying training dialogs exactly as the service and `recchat eval` do
(`eval.recommend.FullRecommender.inputs`): the LM context the ranker would see before a recommender turn,
the item that turn recommends (a new item) as the positive, and as negatives the candidates the retrieval
stage ranks highest for that context (the hard ones the LM must tell apart) plus a few random catalog
items. The loss is listwise: a softmax over the candidates' mean continuation log-probabilities, the very
score `chatbot.ranking.LMRanker` uses, computed in the same packed layout (prompt once, every candidate
after it, seeing the prompt and its own tokens only). Justification examples pair a recommender turn's
context and the item's catalog record with the human explanation (E-ReDial), trained with the
justifier's own prompt.

A stable hash of each dialog id puts a slice of the training conversations aside for model selection
and for fitting the fusion weight; the item co-occurrence priors used while fitting are recounted
without that slice, so the retrieval scores on it are honest. Dialogs of a forbidden set (the ReDial
official test split) are refused outright.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chatbot.lm import ADAPTER_META
from retrieval.dialogs import Dialog, Sample, iter_samples, read_dialogs

if TYPE_CHECKING:
    import torch

    from chatbot.dialogue import DialogueManager
    from chatbot.lm import LanguageModel
    from retrieval.catalog import Catalog
    from retrieval.index import Library

TRAINING_DIALOGS = "training_dialogs.txt"
DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class TrainingDataError(ValueError):
    """The training data is unusable: missing files, no examples, or a forbidden (test) dialog."""


class TrainingInterruptedError(RuntimeError):
    """The run was asked to stop (Ctrl-C); what was trained is in the checkpoint, and a re-run resumes."""


def _check(stop: threading.Event | None, where: str) -> None:
    if stop is not None and stop.is_set():
        raise TrainingInterruptedError(f"stopped {where}")


@dataclass
class DialogSource:
    """One set of conversations on one catalog, and what it is for.

    ``split``: ``train`` (all for training), ``heldout`` (all for model selection), or ``hash`` (a stable
    hash of the dialog id sends ``heldout_fraction`` of them to model selection, the rest to training).
    """

    name: str
    catalog: str
    paths: list[Path]
    split: str = "train"
    fmt: str = "auto"


@dataclass
class RankingExample:
    """A recommender turn: the LM context before it, the recommended item, and candidates it beat."""

    source: str
    dialog_id: str
    catalog: str
    context: str
    positive: str
    negatives: list[str]
    kind: str = "ranking"


@dataclass
class JustificationExample:
    """A human explanation of a recommendation, with what the justifier is given to write one."""

    source: str
    dialog_id: str
    catalog: str
    item: str
    user_text: str
    likes: list[str]
    reference: str
    kind: str = "justification"


@dataclass
class TrainConfig:
    """Everything that determines a training run (written next to the adapter)."""

    steps: int = 300
    batch: int = 4
    lr: float = 3e-4
    warmup: float = 0.05
    seed: int = 0
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES
    hard_negatives: int = 7
    random_negatives: int = 2
    pool: int = 20
    scale: float = 4.0
    justify_every: int = 6
    max_context_tokens: int = 256
    max_reference_tokens: int = 80
    heldout_fraction: float = 0.1
    save_every: int = 25


@dataclass
class Dataset:
    """Training and held-out dialogs per source, and the dialog ids that went into training."""

    train: dict[str, list[Dialog]] = field(default_factory=dict)
    heldout: dict[str, list[Dialog]] = field(default_factory=dict)
    catalogs: dict[str, str] = field(default_factory=dict)

    def training_ids(self) -> list[str]:
        """``source:dialog id`` of every training dialog, sorted."""
        return sorted(f"{name}:{d.id}" for name, dialogs in self.train.items() for d in dialogs)


def heldout(dialog_id: str, fraction: float) -> bool:
    """Whether a dialog belongs to the held-out slice (stable across runs and machines)."""
    digest = hashlib.sha1(f"recchat-heldout:{dialog_id}".encode()).hexdigest()
    return int(digest[:8], 16) / 2**32 < fraction


def forbidden_ids(paths: Iterable[Path]) -> set[str]:
    """Conversation ids of dialog files that must never be trained on (e.g. the ReDial test split).

    Reads ids without a catalog: ``conversationId``/``id`` of JSON-lines records.
    """
    ids: set[str] = set()
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                record = json.loads(line)
                if isinstance(record, dict):
                    for key in ("conversationId", "id", "dialog_id"):
                        if key in record:
                            ids.add(str(record[key]))
                            break
    return ids


def default_sources(datasets: Path) -> list[DialogSource]:
    """The training sets of ``../shared/datasets``: ReDial train-split files and INSPIRED train/valid."""
    redial = sorted((datasets / "redial" / "partial_train").glob("*.jsonl"))
    sources = [DialogSource("redial", "movies", redial, split="hash", fmt="redial")] if redial else []
    inspired = datasets / "inspired"
    if (inspired / "train_data_dbpedia.jsonl").is_file():
        sources.append(DialogSource("inspired", "inspired", [inspired / "train_data_dbpedia.jsonl"], fmt="inspired"))
    if (inspired / "valid_data_dbpedia.jsonl").is_file():
        sources.append(DialogSource("inspired-valid", "inspired", [inspired / "valid_data_dbpedia.jsonl"],
                                    split="heldout", fmt="inspired"))
    return sources


def load_dataset(library: Library, sources: Sequence[DialogSource], forbidden: set[str],
                 heldout_fraction: float) -> Dataset:
    """Read every source (de-duplicated by dialog id), split it, and refuse forbidden dialogs."""
    data = Dataset()
    for source in sources:
        catalog = library.catalog(source.catalog)
        linker = library.linker(catalog.name)
        seen: dict[str, Dialog] = {}
        for path in source.paths:
            if not path.is_file():
                raise TrainingDataError(f"dialog file not found: {path}")
            for dialog in read_dialogs(path, catalog, source.fmt, linker=linker).dialogs:
                seen.setdefault(dialog.id, dialog)  # the ReDial train files overlap: keep one copy
        leaked = sorted(set(seen) & forbidden)
        if leaked:
            raise TrainingDataError(f"{source.name}: {len(leaked)} dialogs belong to a forbidden (test) set, "
                                    f"e.g. {', '.join(leaked[:3])}")
        dialogs = sorted(seen.values(), key=lambda d: d.id)
        if source.split == "hash":
            train = [d for d in dialogs if not heldout(d.id, heldout_fraction)]
            held = [d for d in dialogs if heldout(d.id, heldout_fraction)]
        elif source.split == "heldout":
            train, held = [], dialogs
        else:
            train, held = dialogs, []
        data.catalogs[source.name] = catalog.name
        if train:
            data.train[source.name] = train
        if held:
            data.heldout[source.name] = held
    return data


def use_priors_without(library: Library, data: Dataset) -> None:
    """Recount each catalog's co-occurrence priors from its training dialogs only.

    Fitted weights, the query projection and external neighbours are kept; popularity and co-occurrence
    counts then carry nothing of the held-out slice, so retrieval behaves on it as on unseen dialogs.
    """
    from retrieval.candidates import CandidateGenerator

    by_catalog: dict[str, list[Dialog]] = {}
    for name, dialogs in data.train.items():
        by_catalog.setdefault(data.catalogs[name], []).extend(dialogs)
    for catalog_name, dialogs in by_catalog.items():
        base = library.priors(catalog_name)
        if base is None:
            continue
        fresh = base.recounted(dialogs, source="training dialogs only")
        catalog = library.catalog(catalog_name)
        library.set_generator(catalog_name, CandidateGenerator(catalog, library.store, library.embedder, fresh))


def new_item_turns(dialog: Dialog, catalog: Catalog) -> list[list[Sample]]:
    """The evaluation samples of each recommender turn that names new catalog items, turn by turn."""
    turns: dict[int, list[Sample]] = {}
    for sample in iter_samples([dialog]):
        if sample.is_new and sample.target in catalog:
            turns.setdefault(len(sample.context), []).append(sample)
    return list(turns.values())


def ranking_examples(dialogue: DialogueManager, source: str, catalog: str, dialogs: Iterable[Dialog],
                     config: TrainConfig, rng: random.Random) -> Iterator[RankingExample]:
    """One example per new item recommended in a dialog, with the retrieval stage's hard negatives."""
    from eval.recommend import FullRecommender

    replay = FullRecommender(dialogue, catalog, use_lm=False)
    tools = dialogue.tools(catalog)
    ids = tools.catalog.ids
    for dialog in dialogs:
        for samples in new_item_turns(dialog, tools.catalog):
            prefs, context = replay.inputs(samples[0].context)
            if not context.strip():
                continue  # the service ranks with the LM only when there is something to condition on
            positives = {s.target for s in samples}
            head = [c.item_id for c in dialogue.rank(prefs, "", catalog, config.pool)]
            pool = [i for i in head if i not in positives]
            for sample in samples:
                negatives = rng.sample(pool, min(config.hard_negatives, len(pool)))
                while len(negatives) < config.hard_negatives + config.random_negatives:
                    pick = ids[rng.randrange(len(ids))]
                    if pick not in positives and pick not in negatives:
                        negatives.append(pick)
                yield RankingExample(source, dialog.id, catalog, context, sample.target, negatives)


def justification_examples(dialogue: DialogueManager, path: Path, catalog: str, forbidden: set[str],
                           heldout_fraction: float, split: str = "train") -> list[JustificationExample]:
    """E-ReDial explanations (``split`` train or heldout by the dialog-id hash), as the justifier sees them."""
    from eval.justification import case_likes, read_e_redial

    cases, _ = read_e_redial(path)
    tools = dialogue.tools(catalog)
    linker = dialogue.library.linker(tools.catalog.name)
    out: list[JustificationExample] = []
    for case in cases:
        if case.dialog_id in forbidden:
            raise TrainingDataError(f"E-ReDial dialog {case.dialog_id} belongs to a forbidden (test) set")
        if heldout(case.dialog_id, heldout_fraction) != (split == "heldout"):
            continue
        item_id = linker.resolve_title(case.item_title)
        if item_id is None:
            continue
        out.append(JustificationExample("e_redial", case.dialog_id, catalog, item_id, " ".join(case.user_turns),
                                        case_likes(dialogue, tools, case), case.reference))
    return out


def build_examples(dialogue: DialogueManager, data: Dataset, justifications: list[JustificationExample],
                   config: TrainConfig, progress: bool = True, stop: threading.Event | None = None,
                   ) -> list[RankingExample | JustificationExample]:
    """``steps x batch`` examples: ranking ones from every source in turn, a justification every few."""
    rng = random.Random(config.seed)
    needed = config.steps * config.batch
    n_justify = needed // config.justify_every if justifications else 0
    streams: list[Iterator[RankingExample]] = []
    for name, dialogs in sorted(data.train.items()):
        order = list(dialogs)
        rng.shuffle(order)
        streams.append(ranking_examples(dialogue, name, data.catalogs[name], order, config,
                                        random.Random(f"{config.seed}:{name}")))
    # Sources take turns in proportion to their size, so a small set is not over-sampled.
    sizes = [len(data.train[name]) for name in sorted(data.train)]
    ranking: list[RankingExample] = []
    bar = _progress(needed - n_justify, "building ranking examples", progress)
    while len(ranking) < needed - n_justify and streams:
        k = rng.choices(range(len(streams)), weights=sizes)[0]
        example = next(streams[k], None)
        if example is None:
            del streams[k], sizes[k]
            continue
        ranking.append(example)
        bar.update(1)
        _check(stop, "while building the examples")
    bar.close()
    if not ranking:
        raise TrainingDataError("no ranking examples: no training dialog recommends a catalog item")
    examples: list[RankingExample | JustificationExample] = []
    shuffled = list(justifications)
    rng.shuffle(shuffled)
    j = r = 0
    while len(examples) < needed:
        if shuffled and n_justify and len(examples) % config.justify_every == config.justify_every - 1:
            examples.append(shuffled[j % len(shuffled)])
            j += 1
        else:
            examples.append(ranking[r % len(ranking)])  # a small data set is repeated (epochs)
            r += 1
    return examples


def _progress(total: int, desc: str, enabled: bool) -> Any:  # noqa: ANN401 - a tqdm bar
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="ex", file=sys.stderr, disable=not enabled)


def write_examples(path: Path, examples: Sequence[RankingExample | JustificationExample]) -> None:
    """Examples as JSON lines (written atomically)."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for example in examples:
            fh.write(json.dumps(asdict(example)) + "\n")
    os.replace(tmp, path)


def read_examples(path: Path) -> list[RankingExample | JustificationExample]:
    """Examples written by `write_examples`."""
    out: list[RankingExample | JustificationExample] = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            record = json.loads(line)
            kind = record.pop("kind")
            out.append(RankingExample(**record) if kind == "ranking" else JustificationExample(**record))
    return out


# -- losses -----------------------------------------------------------------------------------------
def packed_scores(model: torch.nn.Module, prompt: list[int], continuations: list[list[int]],
                  device: str) -> torch.Tensor:
    """Mean log-probability of each continuation after ``prompt``, all in one forward pass (differentiable).

    The same quantity `LMRanker.score` computes with a cached prompt: every continuation sees the whole
    prompt and its own earlier tokens only, and its positions restart after the prompt.
    """
    import torch

    p = len(prompt)
    tokens = prompt + [t for ids in continuations for t in ids]
    segment = torch.tensor([-1] * p + [k for k, ids in enumerate(continuations) for _ in ids], device=device)
    offset = torch.tensor(list(range(p)) + [p + i for ids in continuations for i in range(len(ids))],
                          device=device)
    n = len(tokens)
    idx = torch.arange(n, device=device)
    in_prompt = segment < 0
    causal = offset[:, None] >= offset[None, :]
    allowed = (in_prompt[None, :] & ((~in_prompt)[:, None] | (idx[:, None] >= idx[None, :]))) | (
        (segment[:, None] == segment[None, :]) & ~in_prompt[:, None] & causal)
    dtype = next(model.parameters()).dtype
    mask = torch.zeros((n, n), dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)
    # Each continuation's first token is predicted at the prompt's last position, the others at
    # the continuation's own previous token.
    predictors: list[int] = []
    targets: list[int] = []
    owner: list[int] = []
    start = p
    for k, ids in enumerate(continuations):
        predictors += [p - 1] + list(range(start, start + len(ids) - 1))
        targets += ids
        owner += [k] * len(ids)
        start += len(ids)
    keep = torch.tensor(sorted(set(predictors)), device=device)
    where = {int(v): i for i, v in enumerate(keep.tolist())}
    logits = model(input_ids=torch.tensor([tokens], device=device), position_ids=offset[None],
                   attention_mask=mask[None, None], logits_to_keep=keep, use_cache=False).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    rows = torch.tensor([where[i] for i in predictors], device=device)
    picked = logprobs[rows, torch.tensor(targets, device=device)]
    sums = torch.zeros(len(continuations), device=device).index_add(0, torch.tensor(owner, device=device), picked)
    lengths = torch.tensor([len(ids) for ids in continuations], device=device, dtype=sums.dtype)
    return sums / lengths


class ExampleEncoder:
    """Token ids of examples, built with the ranker's and justifier's own prompt code."""

    def __init__(self, lm: LanguageModel, library: Library, config: TrainConfig) -> None:
        from chatbot.ranking import LMRanker

        self.lm = lm
        self.library = library
        self.config = config
        self.ranker = LMRanker(lm, max_context_tokens=config.max_context_tokens)

    def ranking(self, example: RankingExample) -> tuple[list[int], list[list[int]]]:
        """(prompt ids, [positive ids, negative ids...])."""
        catalog = self.library.catalog(example.catalog)
        items = [example.positive, *example.negatives]
        return self.ranker.prompt_ids(example.context), [self.ranker.item_ids(catalog[i]) for i in items]

    def justification(self, example: JustificationExample) -> tuple[list[int], list[int]]:
        """(prompt ids, reference ids ending with the end-of-turn token)."""
        from chatbot.justify import JustificationRequest, justification_prompt

        tokenizer = self.lm.tokenizer
        request = JustificationRequest(item=self.library.catalog(example.catalog)[example.item],
                                       user_text=example.user_text, user_likes=example.likes)
        prompt = tokenizer.apply_chat_template(justification_prompt(request), add_generation_prompt=True,
                                               tokenize=True, return_dict=False)
        prompt = list(prompt)[-self.config.max_context_tokens * 2:]
        reference = tokenizer(" ".join(example.reference.split()), add_special_tokens=False)["input_ids"]
        return prompt, reference[: self.config.max_reference_tokens] + [tokenizer.eos_token_id]


def example_loss(model: torch.nn.Module, encoder: ExampleEncoder,
                 example: RankingExample | JustificationExample, device: str) -> torch.Tensor:
    """Listwise softmax loss (ranking) or mean token negative log-likelihood (justification)."""
    import torch

    if isinstance(example, RankingExample):
        prompt, continuations = encoder.ranking(example)
        scores = packed_scores(model, prompt, continuations, device)
        return torch.nn.functional.cross_entropy((encoder.config.scale * scores)[None],
                                                 torch.zeros(1, dtype=torch.long, device=device))
    prompt, reference = encoder.justification(example)
    return -packed_scores(model, prompt, [reference], device)[0]


# -- training ---------------------------------------------------------------------------------------
def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _save_checkpoint(folder: Path, model: Any, optimizer: Any, scheduler: Any, step: int) -> None:  # noqa: ANN401
    import shutil

    import torch

    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    torch.save({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state()}, tmp / "trainer_state.pt")
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)  # a killed process leaves either the old checkpoint or the new one


def train(
    lm: LanguageModel,
    library: Library,
    examples: Sequence[RankingExample | JustificationExample],
    out: Path,
    config: TrainConfig,
    progress: bool = True,
    log: Callable[[str], None] = lambda message: None,
    stop: threading.Event | None = None,
) -> dict[str, Any]:
    """Train a LoRA adapter on ``examples`` (``config.steps`` steps of ``config.batch``) into ``out``.

    Resumes from ``out/checkpoint`` when it exists; writes ``out/train_log.jsonl`` (one line per step).
    ``lm`` must be the base model (no adapter). Returns the run's summary. When ``stop`` is set, the step
    under way finishes, a checkpoint is saved and `TrainingInterruptedError` is raised.
    """
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    _seed_everything(config.seed)
    device = lm.device
    base = lm.model
    if isinstance(base, PeftModel):
        raise ValueError("train on the base model: load it with adapter='none'")
    checkpoint = out / "checkpoint"
    if (checkpoint / "adapter_config.json").is_file():
        model = PeftModel.from_pretrained(base, str(checkpoint), is_trainable=True)
    else:
        lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                          target_modules=list(config.target_modules), task_type="CAUSAL_LM")
        model = get_peft_model(base, lora)
    model.to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    warmup = max(1, int(config.steps * config.warmup))

    def schedule(step: int) -> float:  # linear warm-up, then cosine decay to a tenth
        if step < warmup:
            return (step + 1) / warmup
        progress_ = (step - warmup) / max(1, config.steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress_)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    start_step = 0
    if (checkpoint / "trainer_state.pt").is_file():
        state = torch.load(checkpoint / "trainer_state.pt", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        start_step = int(state["step"])
        log(f"resuming from step {start_step}")
    encoder = ExampleEncoder(lm, library, config)
    log_path = out / "train_log.jsonl"
    from tqdm import tqdm

    bar = tqdm(total=config.steps, initial=start_step, desc="train", unit="step", file=sys.stderr,
               disable=not progress)
    began = time.perf_counter()
    recent: list[float] = []
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda")
                else torch.autocast("cpu", enabled=False))
    for step in range(start_step, config.steps):
        batch = examples[step * config.batch: (step + 1) * config.batch]
        optimizer.zero_grad(set_to_none=True)
        losses: dict[str, list[float]] = {"ranking": [], "justification": []}
        for example in batch:
            with autocast:
                loss = example_loss(model, encoder, example, device) / len(batch)
            loss.backward()
            losses[example.kind].append(float(loss.detach()) * len(batch))
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        total = [v for values in losses.values() for v in values]
        recent = (recent + [sum(total) / len(total)])[-20:]
        record: dict[str, Any] = {"step": step + 1, "loss": round(sum(total) / len(total), 4)}
        for kind, values in losses.items():
            record[f"{kind}_loss"] = round(sum(values) / len(values), 4) if values else None
        record.update(lr=scheduler.get_last_lr()[0], seconds=round(time.perf_counter() - began, 1))
        with open(log_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        bar.set_postfix(loss=f"{sum(recent) / len(recent):.3f}")
        bar.update(1)
        stopping = stop is not None and stop.is_set()
        if (step + 1) % config.save_every == 0 or step + 1 == config.steps or stopping:
            _save_checkpoint(checkpoint, model, optimizer, scheduler, step + 1)
        if stopping:
            bar.close()
            raise TrainingInterruptedError(
                f"stopped after step {step + 1}; the checkpoint is saved, and the same command resumes from it")
    bar.close()
    model.eval()
    model.save_pretrained(out)
    seconds = time.perf_counter() - began
    return {"steps": config.steps, "resumed_from": start_step, "seconds": round(seconds, 1),
            "final_loss_20": round(sum(recent) / len(recent), 4) if recent else None}


# -- fusion weight ----------------------------------------------------------------------------------
@dataclass
class HeldoutTurn:
    """A held-out recommender turn: the re-ranked head's retrieval and LM scores, where the targets sit."""

    retrieval: list[float]
    lm: list[float]
    targets: list[int]  # positions of new target items in the head
    missing: int  # new target items outside the head (never reached by re-ranking)


def score_heldout(dialogue: DialogueManager, catalog: str, dialogs: Iterable[Dialog], max_turns: int,
                  progress: bool = True, stop: threading.Event | None = None) -> list[HeldoutTurn]:
    """Retrieval head and LM scores of held-out recommender turns (at most ``max_turns``)."""
    from eval.recommend import FullRecommender

    if dialogue.ranker is None:
        raise ValueError("the dialogue manager has no LM ranker")
    replay = FullRecommender(dialogue, catalog, use_lm=False)
    tools = dialogue.tools(catalog)
    turns: list[HeldoutTurn] = []
    bar = _progress(max_turns, f"held-out turns ({catalog})", progress)
    for dialog in dialogs:
        for samples in new_item_turns(dialog, tools.catalog):
            if len(turns) >= max_turns:
                bar.close()
                return turns
            prefs, context = replay.inputs(samples[0].context)
            if not context.strip():
                continue
            head = dialogue.rank(prefs, "", catalog, dialogue.rerank)
            ids = [c.item_id for c in head]
            scores = dialogue.ranker.score(context, [tools.catalog[i] for i in ids])
            positions = [ids.index(s.target) for s in samples if s.target in ids]
            turns.append(HeldoutTurn([c.score for c in head], scores, positions, len(samples) - len(positions)))
            bar.update(1)
            _check(stop, "while scoring held-out turns (training is done; the same command resumes)")
    bar.close()
    return turns


def heldout_metrics(turns: Sequence[HeldoutTurn], weight: float) -> dict[str, float]:
    """Recall@1/@10 of new targets when the head is re-ordered by z(retrieval) + weight * z(LM)."""
    from chatbot.dialogue import zscore

    hits1 = hits10 = total = 0
    for turn in turns:
        fused = zscore(turn.retrieval) + weight * zscore(turn.lm) if len(turn.lm) > 1 else list(turn.retrieval)
        order = sorted(range(len(fused)), key=lambda i: -fused[i])
        rank = {pos: r for r, pos in enumerate(order)}
        for pos in turn.targets:
            hits1 += rank[pos] < 1
            hits10 += rank[pos] < 10
        total += len(turn.targets) + turn.missing
    return {"recall@1": round(hits1 / total, 4) if total else 0.0,
            "recall@10": round(hits10 / total, 4) if total else 0.0, "samples": total}


def fit_lm_weight(turns: Sequence[HeldoutTurn], grid: Sequence[float] | None = None) -> tuple[float, dict[str, Any]]:
    """The fusion weight of the LM score that maximises held-out Recall@10 (Recall@1 breaks ties)."""
    grid = list(grid or [round(0.25 * i, 2) for i in range(0, 17)])
    table = {w: heldout_metrics(turns, w) for w in grid}
    best = max(grid, key=lambda w: (table[w]["recall@10"], table[w]["recall@1"], -w))
    return best, {"grid": {str(w): m for w, m in table.items()}, "chosen": best}


# -- the whole run ----------------------------------------------------------------------------------
def _config_key(config: TrainConfig, sources: Sequence[DialogSource], justifications: Path | None) -> str:
    what = {"config": asdict(config), "justifications": str(justifications),
            "sources": [{**asdict(s), "paths": [str(p) for p in s.paths]} for s in sources]}
    return hashlib.sha1(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def run_training(
    library: Library,
    sources: Sequence[DialogSource],
    out: Path,
    config: TrainConfig,
    *,
    justifications: Path | None = None,
    justification_catalog: str = "movies",
    forbidden: set[str] | None = None,
    heldout_turns: int = 300,
    compare_base: bool = True,
    progress: bool = True,
    log: Callable[[str], None] = lambda message: None,
    stop: threading.Event | None = None,
) -> dict[str, Any]:
    """Build the data, train the adapter, fit the LM fusion weight on held-out dialogs, write ``out``.

    ``out`` receives the adapter (``adapter_config.json``, ``adapter_model.safetensors``), ``recchat.json``
    (fusion weight, configuration, data counts, held-out figures), ``training_dialogs.txt`` (the ids of the
    dialogs examples came from), ``examples.jsonl``, ``train_log.jsonl`` and a resumable ``checkpoint/``.
    Re-running with the same arguments resumes where a killed run stopped. Setting ``stop`` ends the run
    early with `TrainingInterruptedError` (after the training step under way, whose checkpoint is saved).
    """
    from chatbot.dialogue import DialogueManager
    from chatbot.justify import TemplateJustifier
    from chatbot.lm import LanguageModel
    from chatbot.ranking import LMRanker

    forbidden = forbidden or set()
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset(library, sources, forbidden, config.heldout_fraction)
    if not data.train:
        raise TrainingDataError("no training dialogs")
    use_priors_without(library, data)
    dialogue = DialogueManager(library, None, lambda catalog, checker: TemplateJustifier(), rerank=config.pool)
    key = _config_key(config, sources, justifications)
    examples_path, key_path = out / "examples.jsonl", out / "examples.key"
    if examples_path.is_file() and key_path.is_file() and key_path.read_text() == key:
        examples = read_examples(examples_path)
        log(f"reusing {len(examples)} examples from {examples_path}")
    else:
        if (out / "checkpoint").exists():
            raise TrainingDataError(f"{out} holds a checkpoint of a run with other settings; use another --out")
        just = (justification_examples(dialogue, justifications, justification_catalog, forbidden,
                                       config.heldout_fraction) if justifications else [])
        examples = build_examples(dialogue, data, just, config, progress, stop)
        write_examples(examples_path, examples)
        key_path.write_text(key)
    used = sorted({f"{e.source}:{e.dialog_id}" for e in examples})
    leaked = [u for u in used if u.split(":", 1)[1] in forbidden]
    if leaked:  # load_dataset refuses these already; checked again on what is actually trained on
        raise TrainingDataError(f"forbidden dialogs in the training examples: {leaked[:3]}")
    (out / TRAINING_DIALOGS).write_text("\n".join(used) + "\n")
    counts = {"ranking_examples": sum(e.kind == "ranking" for e in examples),
              "justification_examples": sum(e.kind == "justification" for e in examples),
              "distinct_ranking": len({(e.dialog_id, getattr(e, "positive", ""), e.context) for e in examples
                                       if e.kind == "ranking"}),
              "training_dialogs": {name: len(d) for name, d in data.train.items()},
              "heldout_dialogs": {name: len(d) for name, d in data.heldout.items()},
              "dialogs_used": len(used)}
    log(f"data: {json.dumps(counts)}")

    base_settings = library.settings.model_copy(update={"adapter": "none"})
    # Gradients of bfloat16 weights are too coarse for small LoRA updates on a CPU (no autocast there);
    # a GPU trains bfloat16 weights under autocast. Scoring below uses the service's own dtype.
    train_settings = (base_settings.model_copy(update={"lm_dtype": "float32"})
                      if base_settings.resolved_device() == "cpu" else base_settings)
    summary = train(LanguageModel(train_settings), library, examples, out, config, progress, log, stop)

    result: dict[str, Any] = {"base_model": LanguageModel(base_settings).model_folder().name,
                              "config": asdict(config), "data": counts, "training": summary,
                              "lm_weight": 0.5, "heldout": {}}
    if data.heldout and heldout_turns > 0:
        tuned = LanguageModel(library.settings.model_copy(update={"adapter": str(out)}))
        per_source = max(1, heldout_turns // len(data.heldout))
        scored: dict[str, list[HeldoutTurn]] = {}
        for name, dialogs in sorted(data.heldout.items()):
            manager = DialogueManager(library, LMRanker(tuned), lambda c, ch: TemplateJustifier(), rerank=config.pool)
            scored[name] = score_heldout(manager, data.catalogs[name], dialogs, per_source, progress, stop)
        pooled = [t for turns in scored.values() for t in turns]
        weight, table = fit_lm_weight(pooled)
        result["lm_weight"] = weight
        heldout_figures: dict[str, Any] = {"fit": table, "turns": {k: len(v) for k, v in scored.items()}}
        for name, turns in scored.items():
            heldout_figures[name] = {"retrieval": heldout_metrics(turns, 0.0),
                                     "fine_tuned": heldout_metrics(turns, weight)}
        if compare_base:
            base_lm = LanguageModel(base_settings)
            for name, dialogs in sorted(data.heldout.items()):
                manager = DialogueManager(library, LMRanker(base_lm), lambda c, ch: TemplateJustifier(),
                                          rerank=config.pool)
                turns = score_heldout(manager, data.catalogs[name], dialogs, per_source, progress, stop)
                base_weight, _ = fit_lm_weight(turns)
                heldout_figures[name]["base_lm_best_weight"] = {"weight": base_weight,
                                                                 **heldout_metrics(turns, base_weight)}
        result["heldout"] = heldout_figures
    (out / ADAPTER_META).write_text(json.dumps(result, indent=2) + "\n")
    (out / "README.md").write_text(model_card(result))  # replaces peft's empty template
    return result


def model_card(result: dict[str, Any]) -> str:
    """The adapter's model card: base model, data, settings, seed and the held-out figures of the run."""
    config, data = result["config"], result["data"]
    lines = [
        "# recchat LoRA adapter (ranking and justification)", "",
        f"Base model: `{result['base_model']}`. Written by `recchat train` (`chatbot/finetune.py`). Use it with "
        "`RECCHAT_ADAPTER=<this folder>`; a copy in `chatbot/adapter/` is the service's default, and "
        "`RECCHAT_ADAPTER=none` runs the base model.", "",
        "## Data", "",
        f"- Ranking examples: {data['ranking_examples']} ({data['distinct_ranking']} distinct), from "
        + ", ".join(f"{k}: {v} training dialogs" for k, v in data["training_dialogs"].items())
        + f"; {data['dialogs_used']} dialogs used (ids in `{TRAINING_DIALOGS}`).",
        f"- Justification examples: {data['justification_examples']} (E-ReDial, training slice of the dialog-id hash).",
        "- Held out for model selection and the fusion weight: "
        + ", ".join(f"{k}: {v} dialogs" for k, v in data["heldout_dialogs"].items()) + ".",
        "- Never trained on: the ReDial official test split (checked by dialog id).", "",
        "## Training", "",
        f"- LoRA r={config['rank']}, alpha={config['alpha']}, dropout={config['dropout']} on "
        f"{', '.join(config['target_modules'])}; {config['steps']} steps of {config['batch']} examples, "
        f"AdamW lr {config['lr']} (warm-up, cosine), seed {config['seed']}.",
        f"- Ranking loss: softmax over 1 positive + {config['hard_negatives']} hard (retrieval top "
        f"{config['pool']}) + {config['random_negatives']} random negatives of the mean continuation "
        f"log-probability x {config['scale']}; justification loss: token NLL of the human explanation.",
        f"- Time: {result['training']['seconds']} s; mean loss of the last 20 steps "
        f"{result['training']['final_loss_20']}.",
        "", "## Fusion weight (fitted on the held-out turns)", "",
        f"LM weight {result['lm_weight']} (final score = z(retrieval) + w * z(LM) over the re-ranked head).", "",
    ]
    figures = {k: v for k, v in result.get("heldout", {}).items() if isinstance(v, dict) and "retrieval" in v}
    if figures:
        lines += ["| held-out set | samples | retrieval R@1 | R@10 | fine-tuned R@1 | R@10 | base LM R@1 | R@10 |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, f in figures.items():
            base = f.get("base_lm_best_weight", {})
            lines.append(f"| {name} | {f['retrieval']['samples']} | {f['retrieval']['recall@1']} | "
                         f"{f['retrieval']['recall@10']} | {f['fine_tuned']['recall@1']} | "
                         f"{f['fine_tuned']['recall@10']} | "
                         f"{base.get('recall@1', '-')} | {base.get('recall@10', '-')} |")
        lines += ["", "(New items only, ranked within the retrieval head; the base LM with its own best weight.)"]
        grid = result["heldout"].get("fit", {}).get("grid", {})
        if grid:
            lines += ["", "Pooled held-out Recall@10 (R@1) of the fine-tuned LM by fusion weight: "
                      + ", ".join(f"{w}: {m['recall@10']} ({m['recall@1']})" for w, m in grid.items()
                                  if float(w) in (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)) + "."]
    return "\n".join(lines) + "\n"
