"""Scripted dialogues: YAML scripts of user turns with expectations, run through the real chatbot.

A script::

    name: likes a named movie
    catalog: movies                 # or catalog_file: products.csv (relative to the script), indexed first
    turns:
      - user: "I loved Heat (1995), something similar?"
        expect:
          act: recommend
          recommendations_at_least: 2
          recommends_none_of: ["Heat (1995)"]
          every_recommendation_has: {genre: crime}
          every_recommendation_within: {year: [1990, 2020]}
          no_repeat: true
          reply_mentions: "Heat"
          justifications_grounded: true
      - user: "who directed the second one?"
        expect:
          answers_from_record: {item: "@2", field: director}

Items are ids or titles; ``@N`` is the N-th recommendation of the previous reply.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import yaml

from chatbot.dialogue import Reply
from chatbot.service import Chatbot
from retrieval.catalog import Catalog, load_catalog


class ScriptError(ValueError):
    """A script is malformed."""


@dataclass
class Check:
    script: str
    turn: int
    name: str
    passed: bool
    detail: str = ""


@dataclass
class ScriptResult:
    name: str
    path: str
    checks: list[Check] = field(default_factory=list)
    error: str = ""
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.error and all(c.passed for c in self.checks)


def load_script(path: Path) -> dict[str, Any]:
    """Read and validate one YAML script."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ScriptError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("turns"), list) or not data["turns"]:
        raise ScriptError(f"{path}: a script needs a non-empty 'turns' list")
    for n, turn in enumerate(data["turns"], 1):
        if not isinstance(turn, dict) or not isinstance(turn.get("user"), str):
            raise ScriptError(f"{path}: turn {n} needs a 'user' message")
        unknown = set(turn.get("expect") or {}) - set(EXPECTATIONS)
        if unknown:
            raise ScriptError(f"{path}: turn {n}: unknown expectation(s) {sorted(unknown)}; "
                              f"known: {sorted(EXPECTATIONS)}")
    return data


@dataclass
class TurnView:
    """What a check can look at."""

    reply: Reply
    previous: Reply | None
    earlier_ids: set[str]
    catalog: Catalog
    bot: Chatbot
    resolve: Callable[[str], str | None]
    user_text: str


def _item_ids(view: TurnView, refs: list[str]) -> list[str]:
    out = []
    for ref in refs:
        item_id = _ref(view, str(ref))
        if item_id is None:
            raise ScriptError(f"unknown item {ref!r}")
        out.append(item_id)
    return out


def _ref(view: TurnView, ref: str) -> str | None:
    if ref.startswith("@"):
        source = view.previous if view.previous and view.previous.recommendations else view.reply
        index = int(ref[1:]) - 1
        return source.recommendations[index].id if 0 <= index < len(source.recommendations) else None
    return ref if ref in view.catalog else view.resolve(ref)


def _values(item: Any, name: str) -> list[str]:  # noqa: ANN401 - retrieval.catalog.Item
    if name in item.lists:
        return [v.lower() for v in item.lists[name]]
    if name in item.text:
        return [item.text[name].lower()]
    return []


def _check_act(view: TurnView, expected: str) -> tuple[bool, str]:
    return view.reply.act == expected, f"act was {view.reply.act!r}"


def _check_at_least(view: TurnView, n: int) -> tuple[bool, str]:
    return len(view.reply.recommendations) >= int(n), f"{len(view.reply.recommendations)} recommendations"


def _rec_ids(view: TurnView) -> list[str]:
    return [r.id for r in view.reply.recommendations]


def _check_any_of(view: TurnView, refs: list[str]) -> tuple[bool, str]:
    wanted = set(_item_ids(view, refs))
    return bool(wanted & set(_rec_ids(view))), f"recommended {_titles(view)}"


def _check_none_of(view: TurnView, refs: list[str]) -> tuple[bool, str]:
    unwanted = set(_item_ids(view, refs))
    return not (unwanted & set(_rec_ids(view))), f"recommended {_titles(view)}"


def _check_every_has(view: TurnView, spec: dict[str, str]) -> tuple[bool, str]:
    recs = view.reply.recommendations
    bad = [r.title for r in recs for name, value in spec.items()
           if str(value).lower() not in _values(view.catalog[r.id], name)]
    return bool(recs) and not bad, f"lacking: {bad}" if bad else ("no recommendations" if not recs else "")


def _check_none_has(view: TurnView, spec: dict[str, str]) -> tuple[bool, str]:
    bad = [r.title for r in view.reply.recommendations for name, value in spec.items()
           if str(value).lower() in _values(view.catalog[r.id], name)]
    return not bad, f"having it: {bad}"


def _check_within(view: TurnView, spec: dict[str, list[float]]) -> tuple[bool, str]:
    recs = view.reply.recommendations
    bad = []
    for r in recs:
        for name, (low, high) in spec.items():
            value = view.catalog[r.id].numbers.get(name)
            if value is None or (low is not None and value < low) or (high is not None and value > high):
                bad.append(f"{r.title} ({name}={value})")
    return bool(recs) and not bad, f"outside: {bad}" if bad else ("no recommendations" if not recs else "")


def _check_no_repeat(view: TurnView, wanted: bool) -> tuple[bool, str]:
    repeated = [r.title for r in view.reply.recommendations if r.id in view.earlier_ids]
    return (not repeated) == bool(wanted), f"repeated: {repeated}"


def _check_mentions(view: TurnView, text: str) -> tuple[bool, str]:
    return str(text).lower() in view.reply.text.lower(), f"reply: {view.reply.text[:200]!r}"


def _check_not_mentions(view: TurnView, text: str) -> tuple[bool, str]:
    return str(text).lower() not in view.reply.text.lower(), f"reply: {view.reply.text[:200]!r}"


def _check_answers(view: TurnView, spec: dict[str, str]) -> tuple[bool, str]:
    item_id = _ref(view, str(spec["item"]))
    if item_id is None:
        return False, f"no item {spec['item']!r}"
    item = view.catalog[item_id]
    name = spec["field"]
    values = _values(item, name) or ([f"{item.numbers[name]:g}"] if name in item.numbers else [])
    if not values:
        return False, f"{item.title} has no {name!r} in its record"
    reply = view.reply.text.lower().replace(",", "")
    found = any(v.lower().replace(",", "") in reply for v in values)
    return found and item.title.lower() in view.reply.text.lower(), f"reply: {view.reply.text[:200]!r}"


def _check_grounded(view: TurnView, wanted: bool) -> tuple[bool, str]:
    checker = view.bot.dialogue.tools(view.catalog.name).checker
    claims = {r.title: checker.unsupported_claims(r.justification, view.catalog[r.id], view.user_text)
              for r in view.reply.recommendations}
    bad = {k: v for k, v in claims.items() if v}
    return (not bad) == bool(wanted), f"unsupported: {bad}"


EXPECTATIONS: dict[str, Callable[[TurnView, Any], tuple[bool, str]]] = {
    "act": _check_act,
    "recommendations_at_least": _check_at_least,
    "recommends_any_of": _check_any_of,
    "recommends_none_of": _check_none_of,
    "every_recommendation_has": _check_every_has,
    "every_recommendation_within": _check_within,
    "no_recommendation_has": _check_none_has,
    "no_repeat": _check_no_repeat,
    "reply_mentions": _check_mentions,
    "reply_does_not_mention": _check_not_mentions,
    "answers_from_record": _check_answers,
    "justifications_grounded": _check_grounded,
}


def _titles(view: TurnView) -> list[str]:
    return [r.title for r in view.reply.recommendations]


def run_script(bot: Chatbot, path: Path) -> ScriptResult:
    """Run one script in a fresh session and check every expectation."""
    start = time.perf_counter()
    result = ScriptResult(name=path.stem, path=str(path))
    try:
        script = load_script(path)
        result.name = str(script.get("name") or path.stem)
        catalog_name = script.get("catalog")
        if script.get("catalog_file"):
            loaded = load_catalog(path.parent / script["catalog_file"], catalog_name)
            bot.library.add(loaded, progress=False)
            catalog_name = loaded.name
        state = bot.create_session(catalog_name)
        catalog = bot.library.catalog(state.catalog)
        linker = bot.library.linker(catalog.name)
        previous: Reply | None = None
        earlier: set[str] = set()
        said: list[str] = []
        for n, turn in enumerate(script["turns"], 1):
            said.append(turn["user"])
            reply = bot.send(state.id, turn["user"])
            view = TurnView(reply, previous, set(earlier), catalog, bot, linker.resolve_title, " ".join(said))
            for name, arg in (turn.get("expect") or {}).items():
                try:
                    ok, detail = EXPECTATIONS[name](view, arg)
                except ScriptError as exc:
                    ok, detail = False, str(exc)
                result.checks.append(Check(result.name, n, name, ok, "" if ok else detail))
            earlier.update(r.id for r in reply.recommendations)
            if reply.recommendations:
                previous = reply
            elif previous is not None and reply.act not in ("question", "repeat", "feedback"):
                previous = reply
        bot.delete_session(state.id)
    except Exception as exc:  # a broken script or a crash is a failure of that script, not of the run
        result.error = f"{type(exc).__name__}: {exc}"
    result.seconds = time.perf_counter() - start
    return result


def collect_scripts(paths: list[Path]) -> list[Path]:
    """YAML files named directly or found in the given folders, sorted."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*.y*ml"))
        elif path.is_file():
            found.append(path)
        else:
            raise ScriptError(f"no such script or folder: {path}")
    return found


def junit_xml(results: list[ScriptResult]) -> str:
    """JUnit XML: one test suite, one test case per expectation (and per script error)."""
    cases = [(r, c) for r in results for c in r.checks]
    failures = sum(1 for _, c in cases if not c.passed)
    errors = sum(1 for r in results if r.error)
    suite = ET.Element("testsuite", name="recchat-scripted-dialogues", tests=str(len(cases) + errors),
                       failures=str(failures), errors=str(errors),
                       time=f"{sum(r.seconds for r in results):.3f}")
    for result in results:
        if result.error:
            case = ET.SubElement(suite, "testcase", classname=result.name, name="script",
                                 time=f"{result.seconds:.3f}")
            ET.SubElement(case, "error", message=result.error).text = result.error
        for check in result.checks:
            case = ET.SubElement(suite, "testcase", classname=result.name,
                                 name=f"turn {check.turn}: {check.name}")
            if not check.passed:
                ET.SubElement(case, "failure", message=check.detail[:500]).text = check.detail
    return ET.tostring(suite, encoding="unicode", xml_declaration=True)
