"""The dialogue manager: updates the session state from each user message and decides what to say.

Acts: ask a clarifying question when there is nothing to go on, recommend, answer a question about an item
from its catalog record, take feedback, or acknowledge chit-chat. Recommendations come from the
`CandidateGenerator`, are re-ranked by the LM `Ranker`, and are justified by a `Justifier` whose facts are
checked against the item's record.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from chatbot.grounding import sanitise_item, sanitise_text, unsafe_title, unsafe_value
from chatbot.state import Message, Recommendation, SessionState
from chatbot.understanding import MessageInterpreter, Understanding
from retrieval.candidates import Candidate, CandidateGenerator, Constraints, Preferences
from retrieval.catalog import Catalog, Item
from retrieval.dialogs import CONTEXT_CHARS, Turn, context_text
from retrieval.index import Library

if TYPE_CHECKING:
    from chatbot.grounding import GroundingChecker
    from chatbot.justify import Justifier
    from chatbot.ranking import Ranker

TokenSink = Callable[[str], None]

# Question words -> catalog field names that may answer them (the first one the item has wins).
_FIELD_HINTS: tuple[tuple[re.Pattern[str], tuple[str, ...]], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), fields)
    for pattern, fields in (
        (r"\bdirect(?:ed|or|s)?\b|\bfilmmaker\b", ("director", "directors", "creator")),
        (r"\bwr(?:ote|iter|itten)\b|\bauthor\b", ("writer", "writers", "author", "authors")),
        (r"\bstar(?:s|ring)?\b|\bactors?\b|\bactress\b|\bcast\b|\bwho(?:'s| is) in\b|\bplays?\b",
         ("star", "stars", "cast", "actors")),
        (r"\bgenres?\b|\bkind of\b|\btype of\b|\bwhat sort\b|\bcategory\b", ("genre", "genres", "category")),
        (r"\bprice\b|\bcost\b|\bhow much\b|\bexpensive\b|\bcheap\b", ("price", "cost")),
        (r"\bwhat year\b|\bwhen\b|\bhow old\b|\breleased?\b|\bcame out\b|\bcome out\b|\byear\b", ("year",)),
        (r"\brating\b|\brated\b|\breviews?\b|\bscore\b", ("rating", "score", "stars")),
        (r"\bbrand\b|\bwho makes\b|\bmanufacturer\b|\bmade by\b", ("brand", "manufacturer")),
        (r"\babout\b|\bplot\b|\bstory\b|\bsynopsis\b|\bsummary\b|\bdescribe\b|\bdescription\b|\bwhat happens\b|"
         r"\btell me more\b|\bmore about\b", ("plot", "description", "summary", "overview", "text")),
    )
)
# The answer to a message that was nothing but an injection: back to the task, nothing echoed.
_OFF_TASK_REPLY = ("I can only help you find something in this catalog, and each conversation stays private. "
                   "What are you in the mood for? Name one you liked, or describe what you're after.")
_GENERIC_REQUEST_RE = re.compile(
    r"^\s*(?:(?:can|could|would) you\s+)?(?:please\s+)?(?:recommend|suggest|give me|show me|find me|i want|i need|"
    r"i'?m looking for|looking for|any)?\s*(?:me\s+)?(?:a|an|some|something|anything|one|ideas?|recommendations?|"
    r"suggestions?)?\s*(?:good|nice|great|to (?:watch|read|buy|try))?\s*(?:please)?[\s.!?]*$",
    re.IGNORECASE,
)


class MessageError(ValueError):
    """The user message cannot be processed (empty or too long)."""


@dataclass
class ReplyItem:
    """A recommendation as shown to the user."""

    id: str
    title: str
    score: float
    justification: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class Reply:
    """The assistant's answer to one message."""

    session_id: str
    text: str
    act: str
    recommendations: list[ReplyItem] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "reply": self.text,
            "act": self.act,
            "recommendations": [
                {"id": r.id, "title": r.title, "score": round(r.score, 4), "justification": r.justification,
                 "fields": r.fields}
                for r in self.recommendations
            ],
        }


@dataclass
class CatalogTools:
    """The per-catalog parts the dialogue manager uses, built once."""

    catalog: Catalog
    generator: CandidateGenerator
    interpreter: MessageInterpreter
    checker: GroundingChecker
    justifier: Justifier


class DialogueManager:
    """Turns (state, user message) into (new state, reply). Stateless itself; safe to share."""

    def __init__(
        self,
        library: Library,
        ranker: Ranker | None,
        justifier_factory: Callable[[Catalog, GroundingChecker], Justifier],
        *,
        recommendations: int = 3,
        pool: int = 50,
        rerank: int = 20,
        lm_weight: float = 0.5,
        max_message_chars: int = 2000,
    ) -> None:
        self.library = library
        self.ranker = ranker
        self.justifier_factory = justifier_factory
        self.recommendations = recommendations
        self.pool = pool
        self.rerank = rerank
        self.lm_weight = lm_weight
        self.max_message_chars = max_message_chars
        self._tools: dict[str, CatalogTools] = {}

    # -- per-catalog parts -------------------------------------------------------------------------
    def tools(self, catalog_name: str) -> CatalogTools:
        """Generator, interpreter, fact checker and justifier of a catalog (built on first use)."""
        catalog = self.library.catalog(catalog_name)
        cached = self._tools.get(catalog.name)
        if cached is None or cached.catalog is not catalog:
            from chatbot.grounding import GroundingChecker

            checker = GroundingChecker(catalog)
            linker = self.library.linker(catalog.name)
            cached = CatalogTools(
                catalog=catalog,
                generator=self.library.generator(catalog.name),
                interpreter=MessageInterpreter(catalog, linker),
                checker=checker,
                justifier=self.justifier_factory(catalog, checker),
            )
            self._tools[catalog.name] = cached
        return cached

    # -- one turn ----------------------------------------------------------------------------------
    def respond(self, state: SessionState, text: str, on_token: TokenSink | None = None) -> Reply:
        """Handle one user message: update ``state`` in place and return the reply.

        ``on_token`` receives the reply text piece by piece as it is written (for streaming).
        """
        text = self.check_message(text)
        started = time.perf_counter()
        tools = self.tools(state.catalog)
        sink = on_token or (lambda piece: None)
        understanding = tools.interpreter.interpret(text, has_recommendations=bool(state.last_recommendations))
        state.messages.append(Message(role="user", text=text, items=[s.item_id for s in understanding.items]))
        lifted: list[tuple[str, Constraints]] = []
        targets = self.apply(state, understanding, tools, lifted)
        timings: dict[str, float] = {"understand": (time.perf_counter() - started) * 1000}

        act = understanding.act
        if understanding.injection and not understanding.wish:
            reply = self._say(state, _OFF_TASK_REPLY, "clarify", sink)
        elif act == "reset":
            reply = self._say(state, "Okay, let's start over. What are you in the mood for?", "reset", sink)
        elif act == "question" and targets:
            question = understanding.wish or text  # the question without any injected sentence
            reply = self._say(state, self.answer(tools.catalog[targets[0]], question, tools), "question", sink)
        elif act == "question" and not state.recommended and not understanding.items:
            reply = self._say(state, "Which one do you mean? Ask me for a few suggestions first, or name it.",
                              "clarify", sink)
        elif act == "repeat" and state.last_recommendations:
            shown = [state.recommendation(i) for i in state.last_recommendations]
            lines = [f"{n}. {r.title}: {r.justification}" for n, r in enumerate(shown, 1) if r is not None]
            reply = self._say(state, "Here they are again:\n" + "\n".join(lines), "repeat", sink)
        elif act == "feedback" and understanding.reaction == "like":
            title = tools.catalog[targets[0]].title if targets else "that"
            reply = self._say(state, f"Glad you like {title}! {_lifted_note(lifted)}Want more suggestions along "
                                     "those lines?", "feedback", sink)
        elif act == "chitchat":
            reply = self._say(state, self._chitchat(state, text), "chitchat", sink)
        elif not self._has_something_to_go_on(state, understanding):
            reply = self._say(state, self._clarifying_question(tools.catalog), "clarify", sink)
        else:
            reply = self.recommend(state, tools, sink, timings, _lifted_note(lifted))
        reply.timings_ms = {**timings, "total": (time.perf_counter() - started) * 1000}
        state.updated = time.time()
        return reply

    def check_message(self, text: str) -> str:
        """Reject empty or oversized messages with a clear error."""
        if not isinstance(text, str) or not text.strip():
            raise MessageError("the message is empty")
        if len(text) > self.max_message_chars:
            raise MessageError(f"the message is {len(text)} characters; the limit is {self.max_message_chars}")
        return " ".join(text.split())

    # -- state updates -----------------------------------------------------------------------------
    def apply(self, state: SessionState, u: Understanding, tools: CatalogTools,
              lifted: list[tuple[str, Constraints]] | None = None) -> list[str]:
        """Update likes, dislikes, constraints and the preference vector; return the items referred to.

        ``lifted`` receives (title, filters) for each liked item that lifted earlier filters.
        """
        if u.act == "reset":
            # Tastes and filters go; what was shown or seen stays, so that nothing is suggested twice.
            state.liked, state.disliked, state.wishes, state.attributes, state.preference = [], [], [], {}, []
            state.constraints = Constraints()
            state.last_recommendations, state.focus = [], None
            state.context_start = len(state.messages)  # after the "start over" message itself
        targets: list[str] = []
        last = state.last_recommendations
        for ref in u.references:
            if last and -len(last) <= ref < len(last):
                targets.append(last[ref])
        mentioned = [s.item_id for s in u.items]
        if not targets and mentioned and u.act in ("question", "feedback"):
            targets = mentioned[:1]
        if not targets and (u.pronoun or u.reaction) and state.focus:
            targets = [state.focus]

        liked_now: list[str] = []
        for signal in u.items:
            self.react(state, signal.item_id, signal.polarity)
            if signal.polarity == "like" and u.act != "question":  # asking about an item is not liking it
                liked_now.append(signal.item_id)
        if u.reaction and targets:
            for target in targets:
                self.react(state, target, u.reaction)
                if u.reaction in ("like", "chosen"):
                    liked_now.append(target)
        dropped_by: list[tuple[str, Constraints]] = []
        for item_id in liked_now:
            if item_id in tools.catalog:
                dropped = self.lift_filters_broken_by(state, tools.catalog[item_id], tools.interpreter.year_field)
                if not dropped.is_empty():
                    dropped_by.append((tools.catalog[item_id].title, dropped))
        if u.rejects_all:
            for target in last:
                self.react(state, target, "dislike")

        include: dict[str, list[str]] = {}
        for attr in u.attributes:
            # Every field, sparse ones too, feeds the candidates' soft attribute signal.
            kept = [v for v in state.attributes.pop(attr.field, []) if v != attr.value]
            kept += [attr.value] if attr.polarity == "like" else []
            if kept:
                state.attributes[attr.field] = kept
            if attr.field not in tools.interpreter.filter_fields:
                continue  # sparse fields (tags, ...) stay soft: they are in the wish text already
            if attr.polarity == "like" and not attr.requested:
                continue  # a taste ("I love Tom Hanks") ranks items up; only a request filters them
            if attr.polarity == "like":
                include.setdefault(attr.field, []).append(attr.value)
                excluded = state.constraints.exclude.get(attr.field, [])
                if attr.value in excluded:
                    excluded.remove(attr.value)
            else:
                values = state.constraints.exclude.setdefault(attr.field, [])
                if attr.value not in values:
                    values.append(attr.value)

        # New positive values for a field replace the old ones: the user changed their mind. Values said
        # side by side ("romantic comedy", "animated family movie") must all hold; otherwise any of them.
        for name, values in include.items():
            spans = sorted((a.start, a.end) for a in u.attributes if a.field == name and a.polarity == "like")
            joint = len(spans) > 1 and all(
                re.fullmatch(r"[\s-]*", u.wish[end:start] if u.wish else "") is not None
                for (_, end), (start, _) in zip(spans, spans[1:], strict=False)
            )
            state.constraints.include.pop(name, None)
            state.constraints.include_all.pop(name, None)
            (state.constraints.include_all if joint else state.constraints.include)[name] = values
        for bucket in (state.constraints.include, state.constraints.include_all):
            for name, values in list(bucket.items()):
                kept = [v for v in values if v not in state.constraints.exclude.get(name, [])]
                if kept:
                    bucket[name] = kept
                else:
                    del bucket[name]
        state.constraints.exclude = {k: v for k, v in state.constraints.exclude.items() if v}
        state.constraints.ranges.update(u.ranges)
        if u.relative_year and (year := tools.interpreter.year_field):
            state.constraints.ranges[year] = self._relative_years(state, tools, u.relative_year)
        if lifted is not None:
            # A filter the message sets again ("a comedy", then "a comedy like Heat") was not lifted.
            c = state.constraints
            for title, dropped in dropped_by:
                for bucket in (dropped.include, dropped.include_all, dropped.ranges):
                    for name in [n for n in bucket if n in c.include or n in c.include_all or n in c.ranges]:
                        del bucket[name]
                if not dropped.is_empty():
                    lifted.append((title, dropped))

        if u.act in ("recommend", "feedback") and u.wish:
            # Titles are represented by their item vectors; left in the wish they would pull in look-alike titles.
            wish = u.wish
            for signal in u.items:
                wish = wish.replace(signal.surface, " ")
            wish = " ".join(wish.split())
            if wish:
                state.wishes.append(wish)
                state.wishes = state.wishes[-20:]
        self._update_preference(state, u, tools)
        if targets:
            state.focus = targets[0]
        elif mentioned:
            state.focus = mentioned[-1]
        return targets

    @staticmethod
    def _relative_years(state: SessionState, tools: CatalogTools, way: Literal["newer", "older"],
                        ) -> tuple[float | None, float | None]:
        """The year range "newer" or "older" asks for: than the last recommendations, else the liked items,
        else the catalog's recent or old years (`MessageInterpreter.era`)."""
        year = tools.interpreter.year_field
        for ids in (state.last_recommendations, state.liked):
            years = [tools.catalog[i].numbers[year] for i in ids if i in tools.catalog
                     and year in tools.catalog[i].numbers]
            if years:
                return (max(years) + 1, None) if way == "newer" else (None, min(years) - 1)
        return tools.interpreter.era(way)

    @staticmethod
    def lift_filters_broken_by(state: SessionState, item: Item, year_field: str | None) -> Constraints:
        """Drop the include filters, and the range on ``year_field``, that an item the user likes breaks;
        return what was dropped.

        Liking something outside a filter asked for earlier ("a comedy", then "I loved Heat") says the
        conversation has moved past that filter; a filter said in the same message is set after this runs
        ("a comedy like Heat" keeps the comedy). Exclusions stay (one liked horror film does not undo "no
        horror"), and so do limits such as a budget or a minimum rating: liking a dearer item does not raise
        the budget. A field the item has no value for breaks nothing.
        """
        return state.constraints.drop_broken_by(item, [year_field] if year_field else [])

    @staticmethod
    def react(state: SessionState, item_id: str, reaction: str) -> None:
        if reaction == "neutral":
            return  # not knowing an item, or a hedge, says nothing of the user's taste nor changes what they said
        for bucket in (state.liked, state.disliked, state.seen):
            if item_id in bucket:
                bucket.remove(item_id)
        if reaction == "like" or reaction == "chosen":
            state.liked.append(item_id)
        elif reaction == "dislike":
            state.disliked.append(item_id)
        elif reaction == "seen":
            state.seen.append(item_id)
        rec = state.recommendation(item_id)
        if rec is not None and reaction in ("like", "dislike", "seen", "chosen"):
            rec.reaction = reaction  # type: ignore[assignment]

    def _update_preference(self, state: SessionState, u: Understanding, tools: CatalogTools) -> None:
        """Decay the preference vector, pull it towards wishes and liked items, push it from rejected ones."""
        generator = tools.generator
        parts: list[np.ndarray] = []
        if u.act in ("recommend", "feedback") and state.wishes and u.wish:
            positive = _positive_text(state.wishes[-1])
            if positive:
                parts.append(generator.embedder.encode_one(positive))
        matrix = generator.matrix
        rows = generator.row_of
        for signal in u.items:
            if signal.item_id in rows and signal.polarity != "neutral":
                vector = matrix[rows[signal.item_id]]
                parts.append(vector if signal.polarity == "like" else -0.5 * vector)
        for item_id in state.disliked[-3:]:
            if item_id in rows and item_id not in [s.item_id for s in u.items]:
                parts.append(-0.2 * matrix[rows[item_id]])
        if not parts:
            return
        update = np.sum(parts, axis=0)
        current = np.asarray(state.preference, dtype=np.float32) if state.preference else np.zeros_like(update)
        vector = 0.7 * current + update
        norm = float(np.linalg.norm(vector))
        if norm > 0:
            state.preference = (vector / norm).round(5).tolist()

    @staticmethod
    def _has_something_to_go_on(state: SessionState, u: Understanding) -> bool:
        c = state.constraints
        if state.liked or c.include or c.include_all or c.ranges or u.items or u.wants_different:
            return True
        if state.disliked and state.recommended:
            return True
        meaningful = [w for w in state.wishes if not _GENERIC_REQUEST_RE.match(w)]
        return bool(meaningful)

    # -- acts --------------------------------------------------------------------------------------
    def _say(self, state: SessionState, text: str, act: str, sink: TokenSink) -> Reply:
        sink(text)
        state.messages.append(Message(role="assistant", text=text))
        return Reply(state.id, text, act)

    @staticmethod
    def _chitchat(state: SessionState, text: str) -> str:
        lowered = text.lower()
        if re.search(r"\b(thanks|thank you|thx)\b", lowered):
            return "You're welcome! Tell me if you'd like more suggestions."
        if re.search(r"\b(bye|goodbye|see you)\b", lowered):
            return "Goodbye, enjoy!"
        if re.search(r"\bhow are you\b", lowered):
            return "I'm doing well, thanks! What are you looking for today?"
        if state.recommended:
            return "Happy to help. Want more suggestions, or should I tell you more about one of these?"
        return "Hi! Tell me something you enjoyed, or what you're in the mood for, and I'll suggest a few."

    @staticmethod
    def _clarifying_question(catalog: Catalog) -> str:
        fields = sorted({name for item in catalog.items[:500] for name in item.lists if not unsafe_value(name)})
        hint = f" (for example a {fields[0]} you like)" if fields else ""
        return ("Happy to help! What do you usually enjoy? Name one you liked, or describe what you're after"
                f"{hint}.")

    def answer(self, item: Item, question: str, tools: CatalogTools) -> str:
        """Answer a question about one item from its catalog record only.

        The record is quoted without its injected parts (chat tokens, forged turns, orders to the
        assistant): the answer repeats what the record says about the item, never what it commands.
        """
        item = sanitise_item(item)
        for pattern, names in _FIELD_HINTS:
            if not pattern.search(question):
                continue
            for name in names:
                value = _field_value(item, name)
                if value is not None:
                    return f"{item.title}: {name} {value}."
            if names[0] in ("plot", "description"):
                longest = max(item.text.items(), key=lambda kv: len(kv[1]), default=None)
                if longest:
                    return f"{item.title}: {longest[1]}"
            return f"The catalog record for {item.title} doesn't say ({' / '.join(names[:2])})."
        # A field named in the question ("what colour is it")
        for name in [*item.lists, *item.text, *item.numbers]:
            if re.search(rf"\b{re.escape(name.replace('_', ' '))}s?\b", question, re.IGNORECASE):
                return f"{item.title}: {name} {_field_value(item, name)}."
        facts = "; ".join(f"{k}: {_field_value(item, k)}" for k in [*item.lists, *item.numbers][:4])
        summary = next(iter(item.text.values()), "")
        return f"{item.title}. {facts}. {summary}".strip()

    # -- recommending -----------------------------------------------------------------------------
    def preferences(self, state: SessionState) -> Preferences:
        """The candidate generator's view of the session."""
        shown = [r.id for r in state.recommended]
        # The user's own words, read as the retrieval view reads a conversation (`context_text`), which the
        # fusion was fitted on: stripping titles or negated clauses here measured worse on held-out dialogs.
        # Only the latest messages that fill the text are read: a long session is not rescanned every turn.
        said: list[Turn] = []
        for message in reversed(state.messages[state.context_start:]):
            if message.role == "user" and (text := sanitise_text(message.text)).strip():
                said.insert(0, Turn(role="user", text=text))
                if sum(len(t.text) + 1 for t in said) > CONTEXT_CHARS:
                    break
        text, recent = context_text(said)
        return Preferences(
            text=text,
            recent=recent,
            liked=list(state.liked),
            disliked=list(state.disliked),
            exclude=list(dict.fromkeys(shown + state.seen)),
            constraints=state.constraints,
            attributes=state.attributes,
            preference=state.preference or None,
        )

    def lm_context(self, state: SessionState, catalog: Catalog) -> str:
        """The short text the LM ranker conditions on: recent wishes and liked titles."""
        likes = [catalog[i].title for i in state.liked[-5:] if i in catalog and not unsafe_title(catalog[i].title)]
        parts = []
        if likes:
            parts.append("I like " + ", ".join(likes) + ".")
        parts += [sanitise_text(w) for w in state.wishes[-3:]]  # wishes of older sessions were stored raw
        return " ".join(parts)[-600:]

    def rank(self, prefs: Preferences, lm_context: str, catalog_name: str, k: int,
             timings: dict[str, float] | None = None) -> list[Candidate]:
        """Candidates fused with the LM score (top ``rerank`` only), best first."""
        tools = self.tools(catalog_name)
        start = time.perf_counter()
        candidates = tools.generator.candidates(prefs, max(k, self.pool))
        # An item whose title is an instruction or carries chat tokens is a poisoned record: never shown.
        candidates = [c for c in candidates if not unsafe_title(tools.catalog[c.item_id].title)]
        if timings is not None:
            timings["retrieval"] = (time.perf_counter() - start) * 1000
        head = candidates[: self.rerank]
        # A fusion weight of zero (what fitting chose when the LM score did not help on held-out dialogs)
        # makes the LM pass pointless: it is skipped, saving its time.
        if self.ranker is not None and self.lm_weight > 0 and len(head) > 1 and lm_context.strip():
            start = time.perf_counter()
            lm_scores = self.ranker.score(lm_context, [tools.catalog[c.item_id] for c in head])
            if timings is not None:
                timings["ranking"] = (time.perf_counter() - start) * 1000
            fused = zscore([c.score for c in head]) + self.lm_weight * zscore(lm_scores)
            for c, s, lm in zip(head, fused, lm_scores, strict=True):
                c.signals["lm"] = float(lm)
                c.score = float(s)
            head = sorted(head, key=lambda c: -c.score)
            # Keep the rest below the re-ranked head.
            floor = min(c.score for c in head) - 1.0
            for n, c in enumerate(candidates[self.rerank:]):
                c.score = floor - n * 1e-3
            candidates = head + candidates[self.rerank:]
        return candidates[:k]

    def recommend(self, state: SessionState, tools: CatalogTools, sink: TokenSink,
                  timings: dict[str, float], note: str = "") -> Reply:
        """Pick, justify and present the next recommendations, after ``note`` (a sentence about the filters)."""
        prefs = self.preferences(state)
        candidates = self.rank(prefs, self.lm_context(state, tools.catalog), tools.catalog.name,
                               self.recommendations, timings)
        relaxed = ""
        if not candidates and not prefs.constraints.is_empty():
            relaxed = _describe(prefs.constraints)
            prefs.constraints = Constraints(exclude=prefs.constraints.exclude)
            candidates = self.rank(prefs, self.lm_context(state, tools.catalog), tools.catalog.name,
                                   self.recommendations, timings)
        if not candidates:
            return self._say(state, "I have nothing new left to suggest for that. Could you describe something "
                                    "else you'd enjoy?", "clarify", sink)
        intro = note + (f"I found nothing that matches {relaxed} exactly, so here are the closest picks:\n"
                        if relaxed else "Here are some picks for you:\n")
        sink(intro)
        pieces = [intro]
        items: list[ReplyItem] = []
        start = time.perf_counter()
        request_text = " ".join(sanitise_text(m.text) for m in state.messages if m.role == "user")[-1500:]
        likes = self.user_likes(state, tools.catalog)
        from chatbot.justify import JustificationRequest

        chosen = [tools.catalog[cand.item_id] for cand in candidates]
        requests = [JustificationRequest(item=item, user_text=request_text, user_likes=likes) for item in chosen]
        with ExitStack() as streams:
            # All justifications are written together; the first streams live, the rest are read after it.
            opened = [streams.enter_context(closing(s)) for s in tools.justifier.stream_all(requests)]
            for n, (cand, item, stream) in enumerate(zip(candidates, chosen, opened, strict=True), 1):
                head = f"{n}. {item.title}: "
                sink(head)
                pieces.append(head)
                chunks: list[str] = []
                for chunk in stream:
                    chunks.append(chunk)
                    sink(chunk)
                justification = "".join(chunks).strip()
                pieces.append(justification + "\n")
                if n < len(candidates):
                    sink("\n")
                items.append(ReplyItem(item.id, item.title, cand.score, justification, item.display()))
        timings["generation"] = (time.perf_counter() - start) * 1000
        turn = sum(1 for m in state.messages if m.role == "user")
        for it in items:
            state.recommended.append(Recommendation(id=it.id, title=it.title, score=it.score,
                                                    justification=it.justification, turn=turn))
        state.last_recommendations = [it.id for it in items]
        state.focus = items[0].id
        text = "".join(pieces).rstrip()
        state.messages.append(Message(role="assistant", text=text, items=[it.id for it in items]))
        return Reply(state.id, text, "recommend", items)

    @staticmethod
    def user_likes(state: SessionState, catalog: Catalog) -> list[str]:
        likes = [catalog[i].title for i in state.liked if i in catalog and not unsafe_title(catalog[i].title)]
        for bucket in (state.constraints.include, state.constraints.include_all):
            for values in bucket.values():
                likes += values
        return likes


def _field_value(item: Item, name: str) -> str | None:
    if name in item.lists:
        return ", ".join(item.lists[name])
    if name in item.text:
        return item.text[name]
    if name in item.numbers:
        number = item.numbers[name]
        return f"{number:g}" if name != "price" else f"{number:,.2f}"
    return None


def _positive_text(text: str) -> str:
    """The parts of a wish that say what the user wants (negated clauses would pull the wrong way)."""
    from chatbot.understanding import _CLAUSE_SPLIT, _NEGATIVE_CUES

    clauses = [c.strip() for c in _CLAUSE_SPLIT.split(text) if c and c.strip()]
    kept = [c for c in clauses if not _NEGATIVE_CUES.search(c)]
    return " ".join(kept)


def zscore(values: Sequence[float]) -> np.ndarray:
    """Standardised values (all zeros when they do not vary)."""
    array = np.asarray(values, dtype=np.float64)
    std = array.std()
    return (array - array.mean()) / std if std > 1e-9 else np.zeros_like(array)


def _lifted_note(lifted: list[tuple[str, Constraints]]) -> str:
    """What the reply says of filters that liked items lifted, so that the user knows they no longer hold."""
    return "".join(f"Since you like {title}, I no longer keep to {_describe(dropped)}. "
                   for title, dropped in lifted if not unsafe_title(title))


def _describe(constraints: Constraints) -> str:
    parts = [f"{k} {' or '.join(v)}" for k, v in constraints.include.items()]
    parts += [f"{k} {' and '.join(v)}" for k, v in constraints.include_all.items()]
    for name, (low, high) in constraints.ranges.items():
        if low is not None and high is not None:
            parts.append(f"{name} {low:g}-{high:g}")
        elif high is not None:
            parts.append(f"{name} up to {high:g}")
        elif low is not None:
            parts.append(f"{name} from {low:g}")
    return ", ".join(parts) or "your constraints"
