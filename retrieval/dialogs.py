"""Conversations in one neutral format, with readers for raw ReDial and INSPIRED.

Neutral format, one dialog per line::

    {"id": "...", "turns": [{"role": "user"|"assistant", "text": "...", "items": ["<item id>", ...]}]}

``items`` are catalog item ids (a title is accepted where the catalog has no id field).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from retrieval.catalog import Catalog

if TYPE_CHECKING:
    from retrieval.linking import EntityLinker

Role = Literal["user", "assistant"]
DialogFormat = Literal["auto", "neutral", "redial", "inspired"]
_MENTION_RE = re.compile(r"@(\d+)")


class DialogError(ValueError):
    """A conversation file cannot be read."""


class Turn(BaseModel):
    """One speaker turn; consecutive messages of the same speaker are merged into one turn."""

    role: Role
    text: str
    items: list[str] = Field(default_factory=list)


class Dialog(BaseModel):
    id: str
    turns: list[Turn]
    group: str = Field(default="", description=(
        "Who produced the dialog (e.g. the recommender's worker id), when known. Fitting keeps a group "
        "within one fold: people repeat their favourite items, and a split that shares them across folds "
        "overstates how well the collaborative signals carry to new people."))


@dataclass
class ReadResult:
    """Dialogs plus what could not be resolved in the catalog (counted, never dropped silently)."""

    dialogs: list[Dialog]
    format: str
    unresolved: int = 0
    unresolved_examples: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def note_unresolved(self, what: str) -> None:
        self.unresolved += 1
        if len(self.unresolved_examples) < 10:
            self.unresolved_examples.append(what)


def merge_turns(turns: Iterable[Turn]) -> list[Turn]:
    """Merge consecutive turns of the same role (the standard protocol's first step)."""
    merged: list[Turn] = []
    for turn in turns:
        if merged and merged[-1].role == turn.role:
            last = merged[-1]
            items = list(dict.fromkeys(last.items + turn.items))
            merged[-1] = Turn(role=last.role, text=f"{last.text} {turn.text}".strip(), items=items)
        else:
            merged.append(Turn(role=turn.role, text=turn.text, items=list(dict.fromkeys(turn.items))))
    return merged


def _json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if line.strip():
                try:
                    yield lineno, json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DialogError(f"{path}:{lineno}: unparseable JSON ({exc.msg})") from exc


def detect_format(path: Path) -> str:
    """Guess the format from the first record."""
    for _, record in _json_lines(path):
        if isinstance(record, dict) and "turns" in record:
            return "neutral"
        if isinstance(record, dict) and "messages" in record and "initiatorWorkerId" in record:
            return "redial"
        if isinstance(record, list) and record and isinstance(record[0], dict) and "role" in record[0]:
            return "inspired"
        break
    raise DialogError(f"{path}: unknown conversation format (expected neutral, ReDial or INSPIRED JSONL)")


def read_dialogs(
    path: str | Path,
    catalog: Catalog,
    fmt: DialogFormat = "auto",
    linker: EntityLinker | None = None,
) -> ReadResult:
    """Read a conversation file into merged neutral dialogs whose items are catalog ids."""
    path = Path(path)
    if not path.is_file():
        raise DialogError(f"conversation file not found: {path}")
    kind = detect_format(path) if fmt == "auto" else fmt
    if kind == "redial":
        return _read_redial(path, catalog)
    if kind == "inspired":
        if linker is None:
            from retrieval.linking import EntityLinker

            linker = EntityLinker(catalog)
        return _read_inspired(path, catalog, linker)
    return _read_neutral(path, catalog, linker)


def _resolve(ref: str, catalog: Catalog, linker: EntityLinker | None) -> str | None:
    if ref in catalog:
        return ref
    if linker is not None:
        return linker.resolve_title(ref)
    return None


def _read_neutral(path: Path, catalog: Catalog, linker: EntityLinker | None) -> ReadResult:
    result = ReadResult([], "neutral")
    titles = {item.title.lower(): item.id for item in catalog}
    for lineno, record in _json_lines(path):
        try:
            dialog = Dialog.model_validate(record)
        except ValueError as exc:
            result.problems.append(f"{path}:{lineno}: not a neutral dialog ({str(exc).splitlines()[0]})")
            continue
        turns = []
        for turn in dialog.turns:
            items = []
            for ref in turn.items:
                item_id = ref if ref in catalog else titles.get(ref.lower()) or _resolve(ref, catalog, linker)
                if item_id is None:
                    result.note_unresolved(f"{dialog.id}: {ref}")
                else:
                    items.append(item_id)
            turns.append(Turn(role=turn.role, text=turn.text, items=items))
        result.dialogs.append(Dialog(id=dialog.id, turns=merge_turns(turns), group=dialog.group))
    return result


def _read_redial(path: Path, catalog: Catalog) -> ReadResult:
    """Raw ReDial: ``@id`` mentions in text; the initiator (seeker) is the user."""
    result = ReadResult([], "redial")
    for _, record in _json_lines(path):
        mentions: dict[str, str] = record.get("movieMentions") or {}
        if isinstance(mentions, list):  # some releases store [] when empty
            mentions = {}
        user = record["initiatorWorkerId"]
        turns = []
        for message in record["messages"]:
            text = message["text"]
            items: list[str] = []

            def replace(match: re.Match[str], items: list[str] = items, mentions: dict[str, str] = mentions,
                        conversation: str = str(record["conversationId"])) -> str:
                ref = match.group(1)
                item = catalog.get(ref)
                if item is None:
                    result.note_unresolved(f"{conversation}: @{ref}")
                    name = mentions.get(ref)
                    return " ".join(name.split()) if name else match.group(0)
                items.append(ref)
                return item.title

            text = _MENTION_RE.sub(replace, text)
            role: Role = "user" if message["senderWorkerId"] == user else "assistant"
            turns.append(Turn(role=role, text=text, items=items))
        result.dialogs.append(Dialog(id=str(record["conversationId"]), turns=merge_turns(turns),
                                     group=str(record.get("respondentWorkerId", ""))))
    return result


def _read_inspired(path: Path, catalog: Catalog, linker: EntityLinker) -> ReadResult:
    """INSPIRED: SEEKER is the user; ``movie`` lists titles that are linked to the catalog."""
    result = ReadResult([], "inspired")
    for lineno, record in _json_lines(path):
        turns = []
        for utterance in record:
            role: Role = "user" if utterance.get("role") == "SEEKER" else "assistant"
            items = []
            for title in utterance.get("movie") or []:
                item_id = _resolve(title, catalog, linker)
                if item_id is None:
                    result.note_unresolved(f"line {lineno}: {title}")
                else:
                    items.append(item_id)
            turns.append(Turn(role=role, text=utterance.get("text", ""), items=items))
        result.dialogs.append(Dialog(id=f"{path.stem}:{lineno}", turns=merge_turns(turns)))
    return result


def write_dialogs(dialogs: Iterable[Dialog], path: Path) -> None:
    """Write dialogs in the neutral format."""
    with open(path, "w", encoding="utf-8") as fh:
        for dialog in dialogs:
            fh.write(dialog.model_dump_json() + "\n")


@dataclass
class Sample:
    """One evaluation sample of the standard protocol: the turns before a recommender turn and one item."""

    dialog_id: str
    context: list[Turn]
    target: str
    is_new: bool


def iter_samples(dialogs: Iterable[Dialog]) -> Iterator[Sample]:
    """Each item mentioned in an assistant turn is a sample whose context is every earlier turn."""
    for dialog in dialogs:
        mentioned: set[str] = set()
        for n, turn in enumerate(dialog.turns):
            if turn.role == "assistant":
                for item in turn.items:
                    yield Sample(dialog.id, dialog.turns[:n], item, item not in mentioned)
            mentioned.update(turn.items)


CONTEXT_CHARS = 1200  # the preference text's length: the embedding model reads little more


def context_text(context: list[Turn], max_chars: int = CONTEXT_CHARS) -> tuple[str, str]:
    """(preference text, latest request) from a dialog context, most recent user words first.

    The embedding model reads only the start of a long text, so recent words go first.
    """
    user = [t.text for t in context if t.role == "user" and t.text.strip()]
    recent = user[-1] if user else ""
    text = " ".join(reversed(user))[:max_chars]
    return text, recent
