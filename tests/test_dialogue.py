"""The dialogue manager through the `Chatbot` service, in process (templates instead of the LM: fast).

The same behaviour with the real LM is covered through `recchat chat` in test_chat_cli.py.
"""

from __future__ import annotations

import threading

import pytest

from chatbot.dialogue import MessageError
from chatbot.service import Chatbot
from chatbot.sessions import SessionNotFound


@pytest.fixture
def bot(settings, library, movies_small) -> Chatbot:  # noqa: ANN001
    return Chatbot(settings, library=library, use_lm=False)


def _id(bot: Chatbot, title: str) -> str:
    return next(i.id for i in bot.library.catalog("movies_small") if i.title == title)


def _genres(bot: Chatbot, item_id: str) -> set[str]:
    return set(bot.library.catalog("movies_small")[item_id].lists.get("genre", []))


def test_likes_negation_and_never_recommending_rejected(bot: Chatbot) -> None:
    sid = bot.create_session("movies_small").id
    heat = _id(bot, "Heat (1995)")
    first = bot.send(sid, "I loved Heat (1995), something similar please")
    assert first.act == "recommend" and len(first.recommendations) == 3
    assert heat not in [r.id for r in first.recommendations]
    state = bot.get_session(sid)
    assert state.liked == [heat] and state.preference

    rejected = first.recommendations[1].id
    second = bot.send(sid, "I don't like the second one")
    assert rejected in bot.get_session(sid).disliked
    assert second.recommendations and rejected not in [r.id for r in second.recommendations]
    shown = {r.id for r in first.recommendations + second.recommendations}
    assert not ({r.id for r in second.recommendations} & {r.id for r in first.recommendations})

    third = bot.send(sid, "I hate horror movies, show me more")
    assert "horror" in bot.get_session(sid).constraints.exclude["genre"]
    assert "horror" not in bot.get_session(sid).attributes.get("genre", [])
    assert third.recommendations and not any("horror" in _genres(bot, r.id) for r in third.recommendations)
    assert not ({r.id for r in third.recommendations} & (shown | {heat, rejected}))


def test_an_item_the_user_has_not_seen_is_neither_rejected_nor_excluded(bot: Chatbot) -> None:
    sid = bot.create_session("movies_small").id
    heat, titanic = _id(bot, "Heat (1995)"), _id(bot, "Titanic (1997)")
    bot.send(sid, "I haven't seen Heat (1995), but I love Titanic (1997)")
    state = bot.get_session(sid)
    assert state.liked == [titanic]
    assert heat not in state.disliked + state.seen + state.liked
    first = bot.send(sid, "some suggestions please")
    unseen = first.recommendations[1].id
    bot.send(sid, "No, I haven't seen the second one")
    state = bot.get_session(sid)
    assert unseen not in state.disliked + state.seen
    assert state.recommendation(unseen).reaction == "none"


def test_questions_resolve_the_second_one_and_it(bot: Chatbot) -> None:
    sid = bot.create_session("movies_small").id
    recs = bot.send(sid, "recommend a crime movie").recommendations
    catalog = bot.library.catalog("movies_small")
    answer = bot.send(sid, "Who directed the second one?")
    assert answer.act == "question" and answer.recommendations == []
    assert any(d in answer.text for d in catalog[recs[1].id].lists["director"])
    about = bot.send(sid, "what is it about?")
    assert catalog[recs[1].id].text["plot"][:40] in about.text  # "it" is now the second one


def test_constraints_and_change_of_mind(bot: Chatbot) -> None:
    sid = bot.create_session("movies_small").id
    horror = bot.send(sid, "I want a horror movie")
    assert horror.recommendations and all("horror" in _genres(bot, r.id) for r in horror.recommendations)
    comedy = bot.send(sid, "Actually, I'd prefer a comedy")
    assert comedy.recommendations and all("comedy" in _genres(bot, r.id) for r in comedy.recommendations)
    assert bot.get_session(sid).constraints.include == {"genre": ["comedy"]}
    assert {"horror", "comedy"} <= set(bot.get_session(sid).attributes["genre"])  # the soft signal keeps both
    old = bot.send(sid, "something from before 1990")
    assert all(bot.library.catalog("movies_small")[r.id].numbers["year"] <= 1990 for r in old.recommendations)


def test_liking_an_item_outside_a_filter_lifts_it_unless_said_together(bot: Chatbot) -> None:
    sid = bot.create_session("movies_small").id
    catalog = bot.library.catalog("movies_small")
    bot.send(sid, "I want a comedy from before 2010")
    assert bot.get_session(sid).constraints.include == {"genre": ["comedy"]}
    assert bot.get_session(sid).constraints.ranges["year"][1] is not None
    # Heat is no comedy but is from before 2010: the genre filter goes, the year filter stays.
    moved_on = bot.send(sid, "I loved Heat (1995), recommend something similar")
    state = bot.get_session(sid)
    assert "genre" not in state.constraints.include and "year" in state.constraints.ranges
    assert moved_on.text.startswith("Since you like Heat (1995), I no longer keep to genre comedy.")
    assert moved_on.recommendations
    assert not all("comedy" in _genres(bot, r.id) for r in moved_on.recommendations)
    assert all(catalog[r.id].numbers["year"] <= 2010 for r in moved_on.recommendations)
    # Said in one message, the filter is what the user asks of the example: it holds.
    together = bot.send(sid, "a horror movie like Titanic (1997)")
    assert bot.get_session(sid).constraints.include == {"genre": ["horror"]}
    assert together.recommendations and all("horror" in _genres(bot, r.id) for r in together.recommendations)
    assert together.text.startswith("Here are some picks")  # nothing was lifted
    # Asking about an item is not liking it.
    bot.send(sid, "I want a comedy")
    bot.send(sid, "Who directed Heat (1995)?")
    assert bot.get_session(sid).constraints.include == {"genre": ["comedy"]}
    # A filter the message sets again was not lifted: nothing to say.
    bot.send(sid, "a comedy please")
    again = bot.send(sid, "a comedy like Heat (1995)")
    assert bot.get_session(sid).constraints.include == {"genre": ["comedy"]}
    assert "no longer keep" not in again.text
    # An exclusion is not undone by one liked item that breaks it.
    bot.send(sid, "no horror please")
    bot.send(sid, "I did like The Shining (1980) though")
    assert "horror" in bot.get_session(sid).constraints.exclude["genre"]


def test_liking_a_dearer_item_keeps_the_budget(settings, library, products) -> None:  # noqa: ANN001
    bot = Chatbot(settings, library=library, use_lm=False)
    sid = bot.create_session("products").id
    bot.send(sid, "I need a phone under $300")
    assert bot.get_session(sid).constraints.ranges["price"] == (None, 300.0)
    reply = bot.send(sid, "I love the Samsung Galaxy S24 Ultra, something like it")
    assert bot.get_session(sid).constraints.ranges["price"] == (None, 300.0)
    assert reply.recommendations and all(bot.library.catalog("products")[r.id].numbers["price"] <= 300
                                         for r in reply.recommendations)


def test_newer_and_older_compare_with_what_was_shown(bot: Chatbot) -> None:
    sid = bot.create_session("movies_small").id
    catalog = bot.library.catalog("movies_small")
    first = bot.send(sid, "I want a crime movie")
    years = [catalog[r.id].numbers["year"] for r in first.recommendations]
    newer = bot.send(sid, "can you suggest anything newer?")
    assert bot.get_session(sid).constraints.ranges["year"] == (max(years) + 1, None)
    assert newer.recommendations and all(catalog[r.id].numbers["year"] > max(years) for r in newer.recommendations)
    # A remark about a movie sets no filter.
    bot.send(sid, "oh that's a classic")
    assert bot.get_session(sid).constraints.ranges["year"] == (max(years) + 1, None)


def test_a_taste_ranks_a_request_filters_and_starting_over_forgets(bot: Chatbot) -> None:
    sid = bot.create_session("movies_small").id
    heat = _id(bot, "Heat (1995)")
    first = bot.send(sid, "I loved Heat (1995). I like horror movies. What would you suggest?")
    state = bot.get_session(sid)
    assert "horror" in state.attributes["genre"] and not state.constraints.include  # told, not asked for
    assert state.liked == [heat] and first.recommendations
    bot.send(sid, "Let's start over")
    state = bot.get_session(sid)
    assert not (state.liked or state.attributes or state.wishes or state.preference)
    assert state.constraints.is_empty() and len(state.recommended) == 3  # what was shown stays shown
    comedy = bot.send(sid, "a comedy please")
    assert bot.get_session(sid).constraints.include == {"genre": ["comedy"]}
    assert comedy.recommendations and all("comedy" in _genres(bot, r.id) for r in comedy.recommendations)
    assert not {r.id for r in comedy.recommendations} & {r.id for r in first.recommendations}


def test_clarify_chitchat_and_bad_input(bot: Chatbot) -> None:
    sid = bot.create_session("movies_small").id
    assert bot.send(sid, "hello!").act == "chitchat"
    assert bot.send(sid, "can you recommend something?").act == "clarify"
    with pytest.raises(MessageError, match="empty"):
        bot.send(sid, "   ")
    with pytest.raises(MessageError, match="limit"):
        bot.send(sid, "a" * 10_000)
    assert len(bot.get_session(sid).messages) == 4  # the bad messages changed nothing
    with pytest.raises(SessionNotFound):
        bot.send("no-such-session", "hi")


def test_feedback_forget_and_restart_persistence(bot: Chatbot, settings, library) -> None:  # noqa: ANN001
    sid = bot.create_session("movies_small", owner="alice").id
    recs = bot.send(sid, "a science fiction adventure in space", owner="alice").recommendations
    bot.feedback(sid, recs[0].id, "dislike", owner="alice")
    bot.feedback(sid, recs[1].id, "like", owner="alice")
    with pytest.raises(SessionNotFound):
        bot.get_session(sid, owner="mallory")  # another caller cannot see it
    restarted = Chatbot(settings, library=library, use_lm=False)  # a new process on the same data dir
    state = restarted.get_session(sid, owner="alice")
    assert state.disliked == [recs[0].id] and recs[1].id in state.liked
    assert [m.role for m in state.messages] == ["user", "assistant"]
    more = restarted.send(sid, "more please", owner="alice")
    assert recs[0].id not in [r.id for r in more.recommendations]
    restarted.forget(sid, "liked", recs[1].id, owner="alice")
    assert recs[1].id not in restarted.get_session(sid).liked
    restarted.delete_session(sid, owner="alice")
    with pytest.raises(SessionNotFound):
        restarted.get_session(sid)


def test_concurrent_messages_on_one_session_lose_nothing(bot: Chatbot) -> None:
    sid = bot.create_session("movies_small").id
    errors: list[BaseException] = []

    def send(n: int) -> None:
        try:
            bot.send(sid, f"a movie with action number {n}")
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(bot.get_session(sid).messages) == 8


def test_unknown_catalog_and_likes_on_creation(bot: Chatbot) -> None:
    from retrieval.catalog import CatalogError

    with pytest.raises(CatalogError):
        bot.create_session("nope")
    state = bot.create_session("movies_small", likes=["Heat (1995)"])
    assert state.liked == [_id(bot, "Heat (1995)")]
    with pytest.raises(MessageError):
        bot.create_session("movies_small", likes=["No Such Film 3000"])
