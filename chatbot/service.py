"""The chatbot service: sessions, the dialogue manager and the models, shared by CLI, HTTP API and UI."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from chatbot.dialogue import DialogueManager, MessageError, Reply
from chatbot.sessions import SessionConflict, SessionNotFound, SessionStore
from chatbot.state import SessionState
from retrieval.catalog import Catalog
from retrieval.index import Library
from retrieval.settings import Settings

if TYPE_CHECKING:
    from chatbot.grounding import GroundingChecker
    from chatbot.justify import Justifier
    from chatbot.lm import LanguageModel
    from chatbot.remote_lm import RemoteLanguageModel

Feedback = Literal["like", "dislike", "seen", "chosen"]

__all__ = ["Chatbot", "MessageError", "SessionNotFound"]


class Chatbot:
    """Everything a front end needs: create, read, delete sessions; send messages; give feedback.

    Work on one session is serialized (no lost update): in-process by the store's per-session lock, and
    across processes by the store's version check, retried on conflict.
    """

    def __init__(
        self,
        settings: Settings,
        library: Library | None = None,
        store: SessionStore | None = None,
        dialogue: DialogueManager | None = None,
        use_lm: bool = True,
    ) -> None:
        self.settings = settings
        self.library = library or Library(settings)
        if store is None:
            from chatbot.sessions import open_session_store

            store = open_session_store(settings)
        self.store = store
        self._lm: LanguageModel | None = None
        self._remote: RemoteLanguageModel | None = None
        self._lm_lock = threading.Lock()
        self.use_lm = use_lm
        self.dialogue = dialogue or self._default_dialogue()

    @property
    def lm(self) -> LanguageModel:
        """The one language model, shared by ranking and justification (loaded on first use)."""
        with self._lm_lock:
            if self._lm is None:
                from chatbot.lm import LanguageModel

                self._lm = LanguageModel(self.settings)
            return self._lm

    @property
    def remote(self) -> RemoteLanguageModel | None:
        """The LM server client when ``settings.lm_url`` is set (and the LM is used), else None."""
        if not (self.use_lm and self.settings.lm_url):
            return None
        with self._lm_lock:
            if self._remote is None:
                from chatbot.remote_lm import RemoteLanguageModel

                self._remote = RemoteLanguageModel(self.settings)
            return self._remote

    def _default_dialogue(self) -> DialogueManager:
        ranker = None
        remote = self.remote
        if self.use_lm and self.settings.rank_candidates > 0:
            if remote is not None:
                ranker = remote.ranker()
            else:
                from chatbot.ranking import LMRanker

                ranker = LMRanker(self.lm)

        def justifier_factory(catalog: Catalog, checker: GroundingChecker) -> Justifier:
            from chatbot.justify import LMJustifier, TemplateJustifier

            template = TemplateJustifier()
            if not self.use_lm:
                return template
            if remote is not None:
                return remote.justifier(checker, template, max_sentences=self.settings.justification_sentences)
            return LMJustifier(self.lm, checker, template, max_sentences=self.settings.justification_sentences)

        from chatbot.lm import lm_fusion_weight

        lm_weight = lm_fusion_weight(self.settings) if self.use_lm else 0.0
        return DialogueManager(self.library, ranker, justifier_factory, rerank=self.settings.rank_candidates,
                               lm_weight=lm_weight,
                               max_message_chars=self.settings.max_message_chars)

    def close(self) -> None:
        """Release the session store and the LM server client."""
        self.store.close()
        if self._remote is not None:
            self._remote.close()

    def warm_up(self, catalog: str | None = None) -> None:
        """Load the catalog (indexing it on first use), its vectors and the models, before traffic arrives."""
        tools = self.dialogue.tools(catalog or self.settings.default_catalog)
        _ = tools.generator.matrix
        tools.generator.embedder.encode_one("warm up")
        if self.remote is not None:
            self.remote.check()
        elif self.use_lm:
            _ = self.lm.model

    def check_dependencies(self) -> dict[str, str]:
        """``{dependency: "ok" or why it failed}`` for the session store, the vector store and the LM server.

        Each part answers through an optional ``ping()`` (raising `DependencyUnavailable` when down);
        parts without one are not checked. Used by ``/readyz``.
        """
        from retrieval.errors import DependencyUnavailable

        checks: dict[str, object] = {"session_store": getattr(self.store, "ping", None),
                                     "vector_store": getattr(self.library, "ping", None)}
        if self.remote is not None:
            checks["lm"] = self.remote.check
        out: dict[str, str] = {}
        for name, ping in checks.items():
            if not callable(ping):
                continue
            try:
                ping()
                out[name] = "ok"
            except DependencyUnavailable as exc:
                out[name] = str(exc) or type(exc).__name__
        return out

    # -- sessions ----------------------------------------------------------------------------------
    def create_session(self, catalog: str | None = None, owner: str = "", likes: list[str] | None = None,
                       session_id: str | None = None) -> SessionState:
        """Start a conversation on a catalog, optionally with liked item ids or titles."""
        cat = self.library.catalog(catalog or self.settings.default_catalog)
        state = SessionState(catalog=cat.name, owner=owner)
        if session_id:
            state.id = session_id
        if likes:
            linker = self.library.linker(cat.name)
            for like in likes:
                item_id = like if like in cat else linker.resolve_title(like)
                if item_id is None:
                    raise MessageError(f"unknown item {like!r} in catalog {cat.name!r}")
                if item_id not in state.liked:
                    state.liked.append(item_id)
        return self.store.put(state)

    def get_session(self, session_id: str, owner: str | None = None) -> SessionState:
        """The session, or `SessionNotFound` (also when it belongs to another caller)."""
        state = self.store.get(session_id)
        if state is None or (owner is not None and state.owner != owner):
            raise SessionNotFound(session_id)
        return state

    def delete_session(self, session_id: str, owner: str | None = None) -> None:
        self.get_session(session_id, owner)
        self.store.delete(session_id)

    def list_sessions(self, owner: str | None = None, limit: int = 100, offset: int = 0) -> list[SessionState]:
        return self.store.list(owner, limit, offset)

    # -- turns -------------------------------------------------------------------------------------
    def send(self, session_id: str, text: str, owner: str | None = None,
             on_token: Callable[[str], None] | None = None) -> Reply:
        """Process one user message in a session and persist the result before returning."""
        self.dialogue.check_message(text)
        return self._update(session_id, owner, lambda state: self.dialogue.respond(state, text, on_token))

    def feedback(self, session_id: str, item_id: str, reaction: Feedback, owner: str | None = None) -> SessionState:
        """Record like / dislike / seen / chosen on an item, as the same words would."""
        def apply(state: SessionState) -> SessionState:
            catalog = self.library.catalog(state.catalog)
            if item_id not in catalog:
                raise MessageError(f"unknown item {item_id!r} in catalog {state.catalog!r}")
            self.dialogue.react(state, item_id, reaction)
            return state

        self._update(session_id, owner, apply)
        return self.get_session(session_id, owner)

    def forget(self, session_id: str, kind: Literal["liked", "disliked", "constraint"], value: str,
               owner: str | None = None) -> SessionState:
        """Remove a wrong belief: a liked or disliked item id, or a constraint value ("field=value")."""
        def apply(state: SessionState) -> SessionState:
            if kind in ("liked", "disliked") and value in getattr(state, kind):
                getattr(state, kind).remove(value)
                rec = state.recommendation(value)
                if rec is not None:
                    rec.reaction = "none"
            elif kind == "constraint":
                name, _, wanted = value.partition("=")
                for bucket in (state.constraints.include, state.constraints.include_all, state.constraints.exclude):
                    if name in bucket:
                        bucket[name] = [v for v in bucket[name] if v.lower() != wanted.lower()]
                        if not bucket[name]:
                            del bucket[name]
                if not wanted and name in state.constraints.ranges:
                    del state.constraints.ranges[name]
            return state

        self._update(session_id, owner, apply)
        return self.get_session(session_id, owner)

    def _update(self, session_id: str, owner: str | None, change: Callable[[SessionState], object]):  # noqa: ANN202
        with self.store.lock(session_id):
            for attempt in range(8):
                state = self.get_session(session_id, owner)
                result = change(state)
                try:
                    self.store.put(state)
                    return result
                except SessionConflict:
                    # Another process wrote first: redo the turn on the fresh state, after a short random
                    # pause so that two workers retrying the same session do not collide again and again.
                    time.sleep(random.uniform(0, 0.05 * 2**attempt))
            raise SessionConflict(f"session {session_id} kept changing; try again")
