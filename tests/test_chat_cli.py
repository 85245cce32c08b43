"""`recchat chat` end to end with the real embedding model, real Chroma and the real LM, on small catalogs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def chat(lines: list[str], *args: str, env: dict[str, str] | None = None) -> list[dict]:
    """Pipe messages into `recchat chat` and parse one JSON reply per line."""
    result = subprocess.run(
        [sys.executable, "-m", "chatbot", "chat", *args], input="\n".join(lines) + "\n", capture_output=True,
        text=True, timeout=600, env={**os.environ, **(env or {})},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    replies = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert len(replies) == len(lines), result.stdout
    return replies


@pytest.fixture
def lm_env(converted_lm: Path) -> dict[str, str]:
    return {"RECCHAT_LM_MODEL": str(converted_lm)}


def test_movie_conversation_state_and_restart(movies_small, lm_env: dict[str, str], data_dir: Path) -> None:  # noqa: ANN001
    titles = {item.id: item.title for item in movies_small}
    genres = {item.id: set(item.lists.get("genre", [])) for item in movies_small}
    directors = {item.id: item.lists.get("director", []) for item in movies_small}
    replies = chat([
        "I loved Heat (1995), can you recommend something similar?",
        "I don't like the second one",
        "Who directed the first one?",
        "I hate horror. Show me something different",
        "I want a comedy",
    ], "--catalog", "movies_small", env=lm_env)
    first, second, question, no_horror, comedy = replies
    session = first["session_id"]
    assert all(r["session_id"] == session for r in replies)

    heat = next(i for i, t in titles.items() if t == "Heat (1995)")
    recs = [r["id"] for r in first["recommendations"]]
    assert len(recs) == 3 and heat not in recs and all(i in titles for i in recs)
    assert all(r["justification"] and r["title"] == titles[r["id"]] for r in first["recommendations"])

    rejected = recs[1]
    assert rejected not in [r["id"] for r in second["recommendations"]]
    assert second["recommendations"], "a rejection is answered with new suggestions"

    first_of_second = second["recommendations"][0]["id"]
    assert question["recommendations"] == []
    assert any(d in question["reply"] for d in directors[first_of_second]), question["reply"]

    assert no_horror["recommendations"]
    assert not any("horror" in genres[r["id"]] for r in no_horror["recommendations"])
    assert all("comedy" in genres[r["id"]] for r in comedy["recommendations"])
    shown = {r["id"] for reply in replies for r in reply["recommendations"]}

    # A new process resumes the session: nothing shown or rejected comes back.
    later = chat(["more please"], "--session", session, env=lm_env)[0]
    assert later["session_id"] == session
    again = [r["id"] for r in later["recommendations"]]
    assert again and not (set(again) & shown) and rejected not in again and heat not in again
    assert all("comedy" in genres[i] for i in again)  # the constraint survived the restart
    assert (data_dir / "sessions.sqlite3").exists()


def test_product_catalog_constraints(products, lm_env: dict[str, str]) -> None:  # noqa: ANN001
    replies = chat(["I need a sturdy phone under $300", "how much is the first one?"], "--catalog", "products",
                   env=lm_env)
    phones = replies[0]["recommendations"]
    assert phones
    for rec in phones:
        item = products[rec["id"]]
        assert item.text["category"] == "phone" and item.numbers["price"] <= 300
    price = products[phones[0]["id"]].numbers["price"]
    assert f"{price:,.2f}" in replies[1]["reply"]


def test_bad_input_is_reported_and_loses_nothing(products, lm_env: dict[str, str]) -> None:  # noqa: ANN001
    replies = chat(["", "x" * 5000, "noise cancelling headphones"], "--catalog", "products", env=lm_env)
    assert replies[0]["code"] == "empty_message"
    assert replies[1]["code"] == "bad_message" and "limit" in replies[1]["error"]
    assert replies[2]["recommendations"]
    unknown = subprocess.run([sys.executable, "-m", "chatbot", "chat", "--session", "nope"], input="hi\n",
                             capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 1 and "unknown session" in unknown.stderr
