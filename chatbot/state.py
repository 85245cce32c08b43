"""Session state of one conversation: what the user likes, dislikes, asked for, and was shown."""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, Field

from retrieval.candidates import Constraints

Reaction = Literal["like", "dislike", "seen", "chosen", "none"]


class Message(BaseModel):
    """One message of the conversation as it was said."""

    role: Literal["user", "assistant"]
    text: str
    items: list[str] = Field(default_factory=list, description="Item ids mentioned or recommended.")
    at: float = Field(default_factory=time.time)


class Recommendation(BaseModel):
    """An item the assistant recommended, with why, and what the user said of it."""

    id: str
    title: str
    score: float
    justification: str = ""
    turn: int = 0
    reaction: Reaction = "none"


class SessionState(BaseModel):
    """Everything the dialogue manager knows about one conversation.

    ``preference`` is a dense user-preference vector (same space as item embeddings) updated every turn:
    liked items and wishes pull it, rejected items push it, so long conversations keep earlier preferences
    without re-reading every message.
    """

    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    owner: str = ""
    catalog: str
    created: float = Field(default_factory=time.time)
    updated: float = Field(default_factory=time.time)
    liked: list[str] = Field(default_factory=list)
    disliked: list[str] = Field(default_factory=list)
    seen: list[str] = Field(default_factory=list)
    wishes: list[str] = Field(default_factory=list, description="Free-text wishes, e.g. 'not too violent'.")
    constraints: Constraints = Field(default_factory=Constraints)
    attributes: dict[str, list[str]] = Field(
        default_factory=dict, description="Attribute values the user asked for or liked (a soft preference)."
    )
    recommended: list[Recommendation] = Field(default_factory=list)
    last_recommendations: list[str] = Field(default_factory=list)
    focus: str | None = Field(default=None, description="The item 'it' refers to.")
    preference: list[float] = Field(default_factory=list)
    messages: list[Message] = Field(default_factory=list)
    context_start: int = Field(default=0, description="Index of the first message since the user started over.")
    version: int = 0

    def shown_ids(self) -> set[str]:
        return {r.id for r in self.recommended}

    def recommendation(self, item_id: str) -> Recommendation | None:
        for rec in reversed(self.recommended):
            if rec.id == item_id:
                return rec
        return None
