"""The recchat web UI: a Gradio page over the `Chatbot` service, mounted at ``/`` next to the HTTP API.

    app = FastAPI()
    mount_ui(app, lambda: chatbot)          # the page at /, its Gradio endpoints under /gradio_api

What is on the page:

* a chat whose replies stream in as they are written (the service's ``on_token`` callback, fed from a worker
  thread through a queue into a generator callback);
* the current recommendations as cards (title, year / price / rating, list fields such as genres or tags,
  the justification), each with like / dislike / seen buttons that call `Chatbot.feedback`;
* a panel of what the bot believes (liked and disliked items, wanted and unwanted values, numeric limits),
  where a wrong belief can be removed (`Chatbot.forget`);
* a catalog picker and a "new conversation" button.

The session id lives in the browser (`gr.BrowserState`, localStorage), so a page reload restores the chat,
the cards and the beliefs from `Chatbot.get_session`. The callbacks are thin: every decision is the
service's. Named endpoints (``/respond``, ``/restore``, ``/feedback``, ``/forget``, ``/new_conversation``)
make the page's own HTTP endpoints callable with ``gradio_client``.

Nothing heavy happens at import time: Gradio and the service modules are imported when the UI is built.
"""

from __future__ import annotations

import html
import queue
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import gradio as gr
    from fastapi import FastAPI

    from chatbot.service import Chatbot
    from chatbot.state import Recommendation, SessionState
    from retrieval.catalog import Catalog, Item

__all__ = ["CARD_SLOTS", "UI_CSS", "UI_OWNER", "Belief", "beliefs_of", "build_ui", "card_html", "mount_ui",
           "reaction_of"]

CARD_SLOTS = 3
"""How many recommendation cards the page has room for (the dialogue manager recommends 3 at a time)."""
UI_OWNER = "web"
"""The owner recorded on sessions started from the web UI; the UI opens no session owned by anyone else."""
STORAGE_KEY = "recchat-session"
"""The browser localStorage key that holds the (encrypted) session id."""
NO_SESSION = "none"
"""What the browser holds after "new conversation": `gr.BrowserState` never writes a falsy value (None, ""),
so clearing the id takes a non-empty marker."""

REACTIONS: tuple[tuple[str, str], ...] = (("like", "Like"), ("dislike", "Dislike"), ("seen", "Seen it"))
_REACTION_NOTES = {"like": "You like this", "dislike": "Not for you", "seen": "Already seen",
                   "chosen": "You chose this"}
_CHIP_FIELDS = ("genre", "genres", "category", "categories", "tags", "tag", "keywords")
_TEXT_FACT_MAX = 32  # short free-text fields (brand, category) are shown as facts; long ones (plots) are not

UI_CSS = """
.rc-card-box { border: 1px solid var(--border-color-primary); border-radius: var(--radius-lg);
               padding: 6px; gap: 4px !important; }
.rc-card { padding: 6px 8px 2px 8px; }
.rc-head { display: flex; gap: 8px; align-items: baseline; }
.rc-num { font-weight: 700; color: var(--color-accent); }
.rc-title { font-weight: 700; font-size: 1.05em; }
.rc-facts { color: var(--body-text-color-subdued); font-size: 0.9em; margin-top: 2px; }
.rc-chips { margin-top: 4px; display: flex; flex-wrap: wrap; gap: 4px; }
.rc-chip { background: var(--background-fill-secondary); border: 1px solid var(--border-color-primary);
           border-radius: 999px; padding: 0 8px; font-size: 0.8em; }
.rc-extra { font-size: 0.85em; color: var(--body-text-color-subdued); margin-top: 2px; }
.rc-why { margin: 6px 0 2px 0; font-style: italic; }
.rc-reaction { font-size: 0.85em; font-weight: 600; color: var(--color-accent); }
"""


# -- what the page shows (pure functions of the session) -------------------------------------------------


@dataclass(frozen=True)
class Belief:
    """One thing the bot believes about the user, as shown in the beliefs panel.

    ``kind`` and ``value`` are what `Chatbot.forget` takes to remove it; ``key`` identifies it in the dropdown.
    """

    kind: str  # "liked" | "disliked" | "constraint"
    value: str  # an item id, "field=value", or a range's field name
    label: str
    group: str  # "Likes", "Dislikes", "Wants", "Wants all of", "Avoids", "Limits"

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.value}"


def _number(name: str, value: float) -> str:
    if name in ("price", "cost"):
        return f"${value:,.2f}"
    return f"{value:g}"


def _range_label(name: str, bounds: Sequence[float | None]) -> str:
    low, high = (list(bounds) + [None, None])[:2]
    if low is not None and high is not None:
        return f"{name} {_number(name, low)}–{_number(name, high)}"
    if high is not None:
        return f"{name} ≤ {_number(name, high)}"
    if low is not None:
        return f"{name} ≥ {_number(name, low)}"
    return name


def beliefs_of(state: SessionState, catalog: Catalog | None) -> list[Belief]:
    """What the session says the user likes and dislikes, in display order.

    >>> from chatbot.state import SessionState
    >>> s = SessionState(catalog="products", liked=["p-1"])
    >>> s.constraints.ranges["price"] = (None, 300.0)
    >>> [b.label for b in beliefs_of(s, None)]
    ['p-1', 'price ≤ $300.00']
    """

    def title(item_id: str) -> str:
        return catalog[item_id].title if catalog is not None and item_id in catalog else item_id

    out = [Belief("liked", i, title(i), "Likes") for i in state.liked]
    out += [Belief("disliked", i, title(i), "Dislikes") for i in state.disliked]
    c = state.constraints
    for group, bucket in (("Wants", c.include), ("Wants all of", c.include_all), ("Avoids", c.exclude)):
        for name, values in bucket.items():
            out += [Belief("constraint", f"{name}={v}", f"{name}: {v}", group) for v in values]
    for name, bounds in c.ranges.items():
        out.append(Belief("constraint", name, _range_label(name, bounds), "Limits"))
    return out


def beliefs_markdown(beliefs: Sequence[Belief]) -> str:
    """The beliefs panel's text: one line per group."""
    if not beliefs:
        return "_Nothing yet. Tell me something you enjoyed, or what you are looking for._"
    groups: dict[str, list[str]] = {}
    for belief in beliefs:
        groups.setdefault(belief.group, []).append(_md_escape(belief.label))
    return "\n\n".join(f"**{group}:** {', '.join(labels)}" for group, labels in groups.items())


def _md_escape(text: str) -> str:
    return re.sub(r"([\\`*_\[\]<>#|])", r"\\\1", text)


def reaction_of(state: SessionState, rec: Recommendation) -> str | None:
    """What the user now says of a recommended item, from the session's current beliefs.

    Read from the liked / disliked / seen lists rather than ``rec.reaction``, so that a belief removed in the
    panel no longer shows on its card.
    """
    if rec.id in state.liked:
        return "chosen" if rec.reaction == "chosen" else "like"
    if rec.id in state.disliked:
        return "dislike"
    if rec.id in state.seen:
        return "seen"
    return None


def card_html(number: int, rec: Recommendation, item: Item | None, reaction: str | None = None) -> str:
    """One recommendation card: title, facts (year, price, rating, brand...), list fields, justification,
    and the user's ``reaction`` to it (see `reaction_of`)."""
    esc = html.escape
    facts: list[str] = []
    chips: list[str] = []
    extras: list[str] = []
    if item is not None:
        year = item.numbers.get("year")
        if year is not None and str(int(year)) not in item.title:
            facts.append(str(int(year)))
        for name in ("price", "cost"):
            if name in item.numbers:
                facts.append(_number(name, item.numbers[name]))
                break
        if "rating" in item.numbers:
            facts.append(f"★ {item.numbers['rating']:g}")
        facts += [value for value in item.text.values() if 0 < len(value) <= _TEXT_FACT_MAX]
        for name, values in item.lists.items():
            if not values:
                continue
            if name.lower() in _CHIP_FIELDS:
                chips += values[:6]
            elif len(extras) < 2:
                extras.append(f"{name}: {', '.join(values[:3])}")
    parts = [
        '<div class="rc-card">',
        f'<div class="rc-head"><span class="rc-num">{number}.</span>'
        f'<span class="rc-title">{esc(rec.title)}</span></div>',
    ]
    if facts:
        parts.append(f'<div class="rc-facts">{" · ".join(esc(f) for f in facts)}</div>')
    if chips:
        parts.append('<div class="rc-chips">' + "".join(f'<span class="rc-chip">{esc(c)}</span>' for c in chips)
                     + "</div>")
    parts += [f'<div class="rc-extra">{esc(e)}</div>' for e in extras]
    if rec.justification:
        parts.append(f'<p class="rc-why">{esc(rec.justification)}</p>')
    note = _REACTION_NOTES.get(reaction or "")
    if note:
        parts.append(f'<div class="rc-reaction">{esc(note)}</div>')
    parts.append("</div>")
    return "".join(parts)


def history_of(state: SessionState | None) -> list[dict[str, str]]:
    """The conversation in Gradio's messages format."""
    if state is None:
        return []
    return [{"role": m.role, "content": m.text} for m in state.messages]


def current_cards(state: SessionState | None) -> list[Recommendation]:
    """The recommendations of the latest recommending turn, in the order they were given."""
    if state is None:
        return []
    cards = [state.recommendation(item_id) for item_id in state.last_recommendations]
    return [rec for rec in cards if rec is not None][:CARD_SLOTS]


# -- the service side of the page -----------------------------------------------------------------------

_DONE = object()


class _Backend:
    """The page's callbacks: each one reads or changes the session through the `Chatbot` service."""

    def __init__(self, get_chatbot: Callable[[], Chatbot], owner: str) -> None:
        self.get_chatbot = get_chatbot
        self.owner = owner

    def bot(self) -> Chatbot:
        """The service, or a readable error while it is starting."""
        import gradio as gr

        try:
            return self.get_chatbot()
        except Exception as exc:  # e.g. the API's ChatbotNotReady while the models load
            raise gr.Error(f"The recommender is not ready yet ({exc}). Try again in a moment.") from None

    def session(self, session_id: str | None) -> SessionState | None:
        """The session behind the browser's id, or None when there is none (or it is gone)."""
        from chatbot.sessions import SessionNotFound

        if not session_id or session_id == NO_SESSION:
            return None
        try:
            return self.bot().get_session(session_id, self.owner)
        except SessionNotFound:
            return None

    def catalog_of(self, state: SessionState | None) -> Catalog | None:
        """The session's catalog (for titles and card facts), or None."""
        if state is None:
            return None
        try:
            return self.bot().library.catalog(state.catalog)
        except Exception:  # a removed catalog: show ids instead of titles
            return None

    def catalog_names(self) -> list[str]:
        """The catalogs the picker offers."""
        try:
            return self.bot().library.names()
        except Exception:
            return []

    # -- turns -------------------------------------------------------------------------------------
    def stream_turn(self, session_id: str, text: str) -> Iterator[str]:
        """Send one message; yield the reply text as it grows. Errors of the turn are raised here."""
        bot = self.bot()
        pieces: queue.Queue[object] = queue.Queue()
        failure: list[BaseException] = []

        def work() -> None:
            try:
                bot.send(session_id, text, self.owner, on_token=pieces.put)
            except BaseException as exc:  # handed to the generator
                failure.append(exc)
            finally:
                pieces.put(_DONE)

        threading.Thread(target=work, name="recchat-ui-turn", daemon=True).start()
        reply = ""
        done = False
        while not done:
            piece = pieces.get()
            batch = [piece]
            while True:  # coalesce what is already there: one UI update per batch of tokens
                try:
                    batch.append(pieces.get_nowait())
                except queue.Empty:
                    break
            for piece in batch:
                if piece is _DONE:
                    done = True
                else:
                    reply += str(piece)
            if not done:
                yield reply
        if failure:
            raise failure[0]

    def start_session(self, catalog: str | None) -> SessionState:
        """A new session on ``catalog`` (the service's default when empty)."""
        return self.bot().create_session(catalog or None, owner=self.owner)


# -- the page -------------------------------------------------------------------------------------------


def build_ui(get_chatbot: Callable[[], Chatbot], *, owner: str = UI_OWNER, storage_secret: str | None = None,
             concurrency: int = 4) -> gr.Blocks:
    """The recchat page as a `gr.Blocks` (not launched).

    ``get_chatbot`` is called on every event (the service may be built after the page). ``storage_secret``
    encrypts the session id kept in the browser; by default a random one per process, so a page reload keeps
    the conversation and a server restart starts a new one. ``concurrency`` bounds turns handled at once.
    """
    import gradio as gr

    from chatbot.dialogue import MessageError

    backend = _Backend(get_chatbot, owner)

    with gr.Blocks(title="recchat", analytics_enabled=False) as demo:
        session_id = gr.BrowserState(None, storage_key=STORAGE_KEY, secret=storage_secret)
        gr.Markdown("## recchat\nTell me what you like or what you are after; I suggest a few and say why.")
        with gr.Row(equal_height=True):
            catalog = gr.Dropdown(label="Catalog", choices=[], value=None, allow_custom_value=True, scale=3,
                                  elem_id="catalog")
            new_btn = gr.Button("New conversation", scale=1, elem_id="new-conversation")
        with gr.Row():
            with gr.Column(scale=3):
                chat = gr.Chatbot(label="Conversation", height=560, elem_id="chat", feedback_options=None,
                                  buttons=["copy", "copy_all"],
                                  placeholder="Name something you enjoyed, or describe what you are looking for.")
                with gr.Row(equal_height=True):
                    message = gr.Textbox(show_label=False, placeholder="e.g. a rugged phone under $300",
                                         scale=5, lines=1, max_lines=4, elem_id="message", autofocus=True)
                    send_btn = gr.Button("Send", variant="primary", scale=1, elem_id="send")
            with gr.Column(scale=2):
                gr.Markdown("### Recommendations")
                cards_hint = gr.Markdown("_Suggestions appear here._", elem_id="cards-hint")
                card_boxes: list[gr.Column] = []
                card_texts: list[gr.HTML] = []
                card_buttons: list[list[gr.Button]] = []
                for slot in range(CARD_SLOTS):
                    with gr.Column(visible=False, elem_classes=["rc-card-box"], elem_id=f"card-{slot}") as box:
                        card_texts.append(gr.HTML(elem_id=f"card-{slot}-body"))
                        with gr.Row():
                            card_buttons.append([
                                gr.Button(label, size="sm", min_width=60, elem_id=f"card-{slot}-{reaction}")
                                for reaction, label in REACTIONS
                            ])
                    card_boxes.append(box)
                gr.Markdown("### What I think you like")
                beliefs_md = gr.Markdown(beliefs_markdown([]), elem_id="beliefs")
                with gr.Row(equal_height=True):
                    belief_pick = gr.Dropdown(label="Got something wrong? Pick it and remove it", choices=[],
                                              value=None, scale=3, interactive=True, allow_custom_value=True,
                                              elem_id="belief-pick")
                    forget_btn = gr.Button("Remove", scale=1, size="sm", elem_id="forget")

        panels: list[Any] = [*card_boxes, *card_texts, cards_hint, beliefs_md, belief_pick]

        def panel_values(state: SessionState | None) -> list[Any]:
            """Values for ``panels``: card visibility, card bodies, hint, beliefs text, beliefs dropdown."""
            catalog_obj = backend.catalog_of(state)
            recs = current_cards(state)
            boxes = [gr.Column(visible=slot < len(recs)) for slot in range(CARD_SLOTS)]
            bodies = []
            for slot in range(CARD_SLOTS):
                if slot < len(recs):
                    rec = recs[slot]
                    item = catalog_obj[rec.id] if catalog_obj is not None and rec.id in catalog_obj else None
                    bodies.append(card_html(slot + 1, rec, item, reaction_of(state, rec)))
                else:
                    bodies.append("")
            hint = gr.Markdown(visible=not recs)
            beliefs = beliefs_of(state, catalog_obj) if state is not None else []
            pick = gr.Dropdown(choices=[(f"{b.group}: {b.label}", b.key) for b in beliefs], value=None)
            return [*boxes, *bodies, hint, beliefs_markdown(beliefs), pick]

        # -- callbacks -----------------------------------------------------------------------------
        def restore(session_id: str | None) -> tuple[Any, ...]:
            """Rebuild the page from the session kept in the browser (on load)."""
            try:
                state = backend.session(session_id)
            except gr.Error as exc:  # not ready: keep the id, show an empty page and say why
                gr.Warning(str(exc))
                return (gr.Dropdown(), [], session_id, *panel_values(None))
            names = backend.catalog_names()
            current = state.catalog if state is not None else backend.bot().settings.default_catalog
            choices = names if current in names else [*names, current]
            return (gr.Dropdown(choices=choices, value=current), history_of(state),
                    state.id if state is not None else NO_SESSION, *panel_values(state))

        def respond(message: str, session_id: str | None, catalog: str | None) -> Iterator[tuple[Any, Any, Any]]:
            """Send a message and stream the reply; starts a session on the chosen catalog when there is none."""
            text = (message or "").strip()
            if not text:
                yield gr.skip(), gr.skip(), gr.skip()
                return
            try:
                backend.bot().dialogue.check_message(text)
            except MessageError as exc:  # too long: say so and leave the text to be shortened
                gr.Warning(str(exc))
                yield message, gr.skip(), gr.skip()
                return
            state = backend.session(session_id)
            if state is None:
                try:
                    state = backend.start_session(catalog)
                except Exception as exc:  # unknown catalog and the like: say so, keep the text
                    raise gr.Error(str(exc)) from None
            history = history_of(state) + [{"role": "user", "content": text}]
            yield "", [*history, {"role": "assistant", "content": "…"}], state.id
            try:
                for partial in backend.stream_turn(state.id, text):
                    yield "", [*history, {"role": "assistant", "content": partial}], state.id
            except MessageError as exc:
                gr.Warning(str(exc))
                yield text, history_of(backend.session(state.id)), state.id
                return
            yield "", history_of(backend.session(state.id)), state.id

        def refresh(session_id: str | None) -> list[Any]:
            return panel_values(backend.session(session_id))

        def feedback_slot(slot: int, reaction: str) -> Callable[[str | None], list[Any]]:
            def on_click(session_id: str | None) -> list[Any]:
                state = backend.session(session_id)
                recs = current_cards(state)
                if state is None or slot >= len(recs):
                    return panel_values(state)
                bot = backend.bot()
                state = bot.feedback(state.id, recs[slot].id, reaction, backend.owner)  # type: ignore[arg-type]
                return panel_values(state)

            return on_click

        def feedback(session_id: str, item_id: str, reaction: str) -> dict[str, Any]:
            """Record like / dislike / seen / chosen on an item; returns the beliefs afterwards."""
            if reaction not in ("like", "dislike", "seen", "chosen"):
                raise gr.Error(f"unknown reaction {reaction!r}: use like, dislike, seen or chosen")
            if backend.session(session_id) is None:
                raise gr.Error(f"no session {session_id!r}")
            try:
                state = backend.bot().feedback(session_id, item_id, reaction, backend.owner)  # type: ignore[arg-type]
            except MessageError as exc:
                raise gr.Error(str(exc)) from None
            return {"liked": state.liked, "disliked": state.disliked, "seen": state.seen}

        def forget(session_id: str | None, belief: str | None) -> list[Any]:
            """Remove a belief picked in the dropdown (``liked:ID``, ``disliked:ID``, ``constraint:F=V``)."""
            state = backend.session(session_id)
            if state is not None and belief:
                kind, _, value = belief.partition(":")
                if kind not in ("liked", "disliked", "constraint"):
                    raise gr.Error(f"unknown belief {belief!r}")
                state = backend.bot().forget(state.id, kind, value, backend.owner)  # type: ignore[arg-type]
            return panel_values(state)

        def new_conversation() -> tuple[Any, ...]:
            """Forget the browser's session id and clear the page (the next message starts a new session)."""
            return (NO_SESSION, [], "", *panel_values(None))

        # -- wiring --------------------------------------------------------------------------------
        demo.load(restore, [session_id], [catalog, chat, session_id, *panels], api_name="restore")
        turn_io: dict[str, Any] = {"inputs": [message, session_id, catalog], "outputs": [message, chat, session_id],
                                   "concurrency_id": "turn", "concurrency_limit": concurrency}
        send_btn.click(respond, **turn_io, api_name="respond").then(
            refresh, [session_id], panels, api_visibility="private")
        message.submit(respond, **turn_io, api_visibility="private").then(
            refresh, [session_id], panels, api_visibility="private")
        for slot, buttons in enumerate(card_buttons):
            for (reaction, _), button in zip(REACTIONS, buttons, strict=True):
                button.click(feedback_slot(slot, reaction), [session_id], panels, api_visibility="private")
        gr.api(feedback, api_name="feedback")
        forget_btn.click(forget, [session_id, belief_pick], panels, api_name="forget")
        new_btn.click(new_conversation, None, [session_id, chat, message, *panels], api_name="new_conversation")
        chat.clear(new_conversation, None, [session_id, chat, message, *panels], api_visibility="private")
        catalog.select(new_conversation, None, [session_id, chat, message, *panels], api_visibility="private")
    demo.queue(default_concurrency_limit=concurrency)
    return demo


def mount_ui(app: FastAPI, get_chatbot: Callable[[], Chatbot], *, path: str = "/", owner: str = UI_OWNER,
             storage_secret: str | None = None) -> None:
    """Mount the web UI on ``app`` at ``path`` (after the app's own routes, which keep precedence)."""
    import gradio as gr

    demo = build_ui(get_chatbot, owner=owner, storage_secret=storage_secret)
    # show_error=False: a `gr.Error` raised on purpose reaches the page, an unexpected exception only as "Error"
    # (its traceback goes to the server log), as the HTTP API keeps internals in the process.
    gr.mount_gradio_app(app, demo, path=path, css=UI_CSS, ssr_mode=False, footer_links=["api"], show_error=False)
