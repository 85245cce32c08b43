"""Message understanding on small real catalogs: polarity, references, constraints, acts."""

from __future__ import annotations

import pytest

from chatbot.understanding import MessageInterpreter
from retrieval.catalog import load_catalog
from retrieval.linking import EntityLinker
from tests.conftest import DATA


@pytest.fixture(scope="module")
def movies() -> MessageInterpreter:
    catalog = load_catalog(DATA / "movies_small.jsonl", "movies_small")
    return MessageInterpreter(catalog, EntityLinker(catalog))


@pytest.fixture(scope="module")
def shop() -> MessageInterpreter:
    catalog = load_catalog(DATA / "products.csv", "shop")
    return MessageInterpreter(catalog, EntityLinker(catalog))


def _title(interp: MessageInterpreter, item_id: str) -> str:
    return interp.catalog[item_id].title


def test_liked_item_and_genre(movies: MessageInterpreter) -> None:
    u = movies.interpret("I loved Heat (1995), something in the crime genre please", False)
    assert u.act == "recommend"
    assert [(_title(movies, s.item_id), s.polarity) for s in u.items] == [("Heat (1995)", "like")]
    assert ("genre", "crime", "like") in [(a.field, a.value, a.polarity) for a in u.attributes]


@pytest.mark.parametrize(("text", "polarity"), [
    ("I hated Titanic (1997)", "dislike"),
    ("I don't like The Notebook", "dislike"),
    ("I've already seen Jaws (1975)", "seen"),
    ("Jaws (1975) was great", "like"),
])
def test_item_polarity(movies: MessageInterpreter, text: str, polarity: str) -> None:
    u = movies.interpret(text, False)
    assert len(u.items) == 1 and u.items[0].polarity == polarity


def test_negated_genre_and_clause_split(movies: MessageInterpreter) -> None:
    u = movies.interpret("I like thrillers but I hate horror", False)
    got = {(a.value, a.polarity) for a in u.attributes if a.field == "genre"}
    assert got == {("thriller", "like"), ("horror", "dislike")}


def test_a_negation_reaches_only_as_far_as_a_new_liking(movies: MessageInterpreter) -> None:
    def genres(text: str) -> dict[str, str]:
        return {a.value: a.polarity for a in movies.interpret(text, False).attributes if a.field == "genre"}

    assert genres("I want a fun but not too stupid movie, like a good comedy") == {"comedy": "like"}
    assert genres("i don't like horror, i like comedy") == {"horror": "dislike", "comedy": "like"}
    assert genres("no horror, comedy is fine") == {"horror": "dislike", "comedy": "like"}
    # A negation still reaches a list, and "like" used as a comparison inside it.
    assert genres("I don't like horror or comedy") == {"horror": "dislike", "comedy": "dislike"}
    assert genres("I don't want anything like horror") == {"horror": "dislike"}
    assert genres("nothing like horror please") == {"horror": "dislike"}
    assert genres("I hate horror, comedy is awful too") == {"horror": "dislike", "comedy": "dislike"}
    u = movies.interpret("I didn't like Heat (1995), I loved Titanic (1997)", False)
    assert [(_title(movies, s.item_id), s.polarity) for s in u.items] == [
        ("Heat (1995)", "dislike"), ("Titanic (1997)", "like")]
    # ", like X" after a negation is mostly an example of what is not wanted.
    for text in ("I don't want anything scary, like The Conjuring (2013)",
                 "I hate horror, especially stuff like Halloween (1978)"):
        assert [s.polarity for s in movies.interpret(text, False).items] == ["dislike"], text


def test_not_having_seen_an_item_is_neither_a_dislike_nor_seen(movies: MessageInterpreter) -> None:
    """"I haven't seen X" says the user does not know X: nothing about their taste, and X may be recommended."""
    def polarities(text: str) -> list[str]:
        return [s.polarity for s in movies.interpret(text, False).items]

    for text in ("I haven't seen Heat (1995)", "I have not seen Heat (1995) yet", "Never heard of Heat (1995)",
                 "No, I cannot say that I've even heard of Heat (1995) but it sounds intriguing",
                 "I've never watched Heat (1995)", "I don't think I've seen Heat (1995)",
                 "Heat (1995)? Never seen it", "I never got around to watching Heat (1995)",
                 "I'm not familiar with Heat (1995)", "I'm not sure about Heat (1995)"):
        assert polarities(text) == ["neutral"], text
    assert polarities("I haven't seen Heat (1995) or Titanic (1997)") == ["neutral", "neutral"]
    # A later cue in the same clause still counts, and so does a dislike elsewhere in the message.
    u = movies.interpret("I haven't seen Heat (1995) and I hate Titanic (1997)", False)
    assert [(_title(movies, s.item_id), s.polarity) for s in u.items] == [
        ("Heat (1995)", "neutral"), ("Titanic (1997)", "dislike")]
    # Not about knowing the item: these keep their reading.
    for text, polarity in (("I never saw the appeal of Titanic (1997)", "dislike"),
                           ("I hated Titanic (1997), never watched it again", "dislike"),
                           ("I loved Heat (1995), never seen anything like it", "like"),
                           ("I don't like Titanic (1997)", "dislike")):
        assert polarities(text) == [polarity], text
    # Genres keep the older reading: not having seen any horror is no wish for horror.
    u = movies.interpret("I have not seen any horror movies, something funny please", False)
    assert ("horror", "like") not in [(a.value, a.polarity) for a in u.attributes]
    assert "dislike" in [a.polarity for a in movies.interpret("I'm not so sure about horror", False).attributes]


def test_not_having_seen_a_recommendation_is_no_reaction(movies: MessageInterpreter) -> None:
    for text in ("No, I haven't seen it", "I have not seen the second one", "never seen that one"):
        u = movies.interpret(text, True)
        assert u.reaction is None and u.act != "feedback", text
    assert movies.interpret("I've seen the second one", True).reaction == "seen"
    assert movies.interpret("I never saw the appeal of the first one", True).reaction == "dislike"


def test_references_to_earlier_recommendations(movies: MessageInterpreter) -> None:
    assert movies.interpret("Who directed the second one?", True).references == [1]
    assert movies.interpret("tell me more about the last one", True).references == [-1]
    second = movies.interpret("what's number 3 about?", True)
    assert second.references == [2] and second.act == "question"
    it = movies.interpret("Who stars in it?", True)
    assert it.act == "question" and it.pronoun


@pytest.mark.parametrize(("text", "act"), [
    ("Hi there!", "chitchat"),
    ("Thanks a lot!", "chitchat"),
    ("Can you recommend something?", "recommend"),
    ("What were they again?", "repeat"),
    ("Let's start over", "reset"),
    ("I've seen the first one already", "feedback"),
    ("Something different please", "recommend"),
    ("a cozy story for a rainy day", "recommend"),
])
def test_acts(movies: MessageInterpreter, text: str, act: str) -> None:
    assert movies.interpret(text, True).act == act


def test_feedback_reactions(movies: MessageInterpreter) -> None:
    assert movies.interpret("I've seen the first one already", True).reaction == "seen"
    assert movies.interpret("not that one", True).reaction == "dislike"
    assert movies.interpret("I don't like the second one", True).reaction == "dislike"
    assert movies.interpret("sounds good, I'll watch it", True).reaction == "like"


def test_year_ranges(movies: MessageInterpreter) -> None:
    assert movies.interpret("a sci-fi movie from the 80s", False).ranges == {"year": (1980.0, 1989.0)}
    assert movies.interpret("something made after 2010", False).ranges == {"year": (2010.0, None)}
    assert movies.interpret("anything before 1990", False).ranges == {"year": (None, 1990.0)}


def test_vague_time_words_filter_only_when_asked(movies: MessageInterpreter) -> None:
    newest = movies.newest_year
    assert newest is not None
    assert movies.interpret("any recent thrillers?", False).ranges == {"year": (newest - 5, None)}
    assert movies.interpret("I want some classics", False).ranges == {"year": (None, newest - 30)}
    # Said of a movie, a time word describes it; "a new movie" is one not seen yet.
    for text in ("oh that's a classic", "Heat (1995) is a real classic, any thrillers?",
                 "I liked the new one too", "I'm looking for a new movie to watch",
                 "I hate old movies", "not a classic fan, any comedies?"):
        u = movies.interpret(text, False)
        assert (u.ranges, u.relative_year) == ({}, None), text
    # A comparative compares with the movie named, else with the conversation (the dialogue manager).
    assert movies.interpret("anything newer than Heat (1995)?", False).ranges == {"year": (1996.0, None)}
    assert movies.interpret("a thriller like Heat (1995) or newer", False).ranges == {"year": (1995.0, None)}
    assert movies.interpret("a movie for my 12 year old", False).ranges == {}
    assert movies.interpret("an 80's or 90's comedy please", False).ranges == {"year": (1980.0, 1999.0)}
    assert movies.interpret("a comedy from the 80s, not the 90s", False).ranges == {"year": (1980.0, 1989.0)}
    u = movies.interpret("something a little more modern", False)
    assert (u.ranges, u.relative_year) == ({}, "newer")
    u = movies.interpret("can you suggest anything newer?", False)
    assert (u.ranges, u.relative_year, u.act) == ({}, "newer", "recommend")


def test_only_what_is_asked_for_becomes_a_filter(movies: MessageInterpreter) -> None:
    def requested(text: str) -> dict[str, bool]:
        return {a.value: a.requested for a in movies.interpret(text, False).attributes}

    assert requested("I want a comedy") == {"comedy": True}
    assert requested("horror movies") == {"horror": True}
    assert requested("Actually, I'd prefer a comedy") == {"comedy": True}
    # Telling a taste is not asking for a filter: these stay soft preferences.
    assert requested("I like comedies") == {"comedy": False}
    assert requested("I like comedies. Any crime movies?") == {"comedy": False, "crime": True}
    # Saying what a movie is asks for nothing either.
    assert requested("Also Rushmore (1998). It's a comedy.") == {"comedy": False}
    assert requested("I want something that is a comedy") == {"comedy": True}
    # A taste told in a run-on message stays a taste; the request after it asks for something else.
    assert requested("I like crime movies Can you think of a few?") == {"crime": False}
    assert requested("I really like horror movies. Action is good too something like Saw would be great") == {
        "horror": False, "action": False}
    assert requested("I would like a comedy") == {"comedy": True}
    assert requested("I want a comedy that is funny") == {"comedy": True}
    assert requested("Comedy is what I want") == {"comedy": True}
    # "like anything with X" tells a taste; "I'd like anything with X" asks.
    assert requested("But I like anything with Al Pacino") == {"Al Pacino": False}
    assert requested("I'd like anything with Al Pacino") == {"Al Pacino": True}
    assert requested("I'd love anything with Al Pacino") == {"Al Pacino": True}
    # A value said of the title just named describes it (only when its record has it).
    assert requested("I want something like Heat (1995), with Al Pacino") == {"Al Pacino": False}
    assert requested("I want something like Titanic (1997), with Al Pacino") == {"Al Pacino": True}
    # A story about the past is no year filter; a request for a decade is.
    assert movies.interpret("Growing up in the 80s I loved Jaws (1975)", False).ranges == {}
    assert movies.interpret("I like thrillers, any from the 80s?", False).ranges == {"year": (1980.0, 1989.0)}


def test_price_ranges_on_a_product_catalog(shop: MessageInterpreter) -> None:
    assert shop.interpret("I need a sturdy phone under $300", False).ranges == {"price": (None, 300.0)}
    assert shop.interpret("headphones between 50 and 150 dollars", False).ranges == {"price": (50.0, 150.0)}
    assert shop.interpret("a laptop for more than $1,000", False).ranges == {"price": (1000.0, None)}
    no_price = shop.interpret("a waterproof speaker", False)
    assert no_price.ranges == {}


def test_product_attributes_and_negation(shop: MessageInterpreter) -> None:
    u = shop.interpret("I want a new phone, but no Samsung", False)
    got = {(a.field, a.value.lower(), a.polarity) for a in u.attributes}
    assert ("brand", "samsung", "dislike") in got
    assert ("category", "phone", "like") in got


def test_product_negation_ends_where_the_liking_starts(shop: MessageInterpreter) -> None:
    u = shop.interpret("no Samsung, I like Apple", False)
    assert {(a.value.lower(), a.polarity) for a in u.attributes if a.field == "brand"} == {
        ("samsung", "dislike"), ("apple", "like")}
    u = shop.interpret("no Android phones, like the Samsung Galaxy A15", False)
    assert [(shop.catalog[s.item_id].title, s.polarity) for s in u.items] == [("Samsung Galaxy A15", "dislike")]
    # A brand said of the phone just named (a text field here) describes it; it is no filter.
    u = shop.interpret("I want something like the Samsung Galaxy A15, from Samsung", False)
    assert {(a.value.lower(), a.requested) for a in u.attributes if a.field == "brand"} == {("samsung", False)}


def test_common_words_are_not_titles(movies: MessageInterpreter) -> None:
    u = movies.interpret("I can't stand the heat in summer, I want something up beat", False)
    assert u.items == []


def test_a_yes_no_question_about_an_item_asks_for_nothing(movies: MessageInterpreter) -> None:
    def read(text: str) -> list[tuple[str, str, bool]]:
        return [(a.value, a.polarity, a.requested) for a in movies.interpret(text, True).attributes]

    # Values said of the item asked about: neither a filter nor a rejection.
    assert read("Is that the one with Tom Hanks?") == [("Tom Hanks", "like", False)]
    assert read("It's not a horror movie, is it?") == [("horror", "like", False)]
    assert read("Does it have Keanu Reeves in it?") == [("Keanu Reeves", "like", False)]
    # A request in question form still asks.
    assert read("Is there a comedy with Tom Hanks?") == [("comedy", "like", True), ("Tom Hanks", "like", True)]
    assert read("Do you have any horror movies?") == [("horror", "like", True)]
    assert read("Is that a comedy? I want a horror movie.") == [("comedy", "like", False), ("horror", "like", True)]


def test_a_fragment_is_read_with_the_sentence_it_adds_to(movies: MessageInterpreter) -> None:
    u = movies.interpret("I hated Heat (1995). And Titanic (1997).", False)
    assert [(_title(movies, s.item_id), s.polarity) for s in u.items] == [("Heat (1995)", "dislike"),
                                                                          ("Titanic (1997)", "dislike")]
    u = movies.interpret("Is that the one with Al Pacino? And Robert De Niro?", True)
    assert [(a.value, a.requested) for a in u.attributes] == [("Al Pacino", False), ("Robert De Niro", False)]
    u = movies.interpret("I am not a fan of Tom Hanks. Or Will Ferrell. Something like Heat (1995)?", False)
    assert [(a.value, a.polarity) for a in u.attributes] == [("Tom Hanks", "dislike"), ("Will Ferrell", "dislike")]
    # A sentence of its own is not a fragment.
    u = movies.interpret("I loved Heat (1995). And I want a comedy.", False)
    assert [(a.value, a.polarity, a.requested) for a in u.attributes] == [("comedy", "like", True)]
    assert [s.polarity for s in u.items] == ["like"]
