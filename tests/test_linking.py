"""Tests for retrieval.linking: title and attribute linking on small in-test catalogs and on ReDial."""

from __future__ import annotations

from pathlib import Path

import pytest

from retrieval.catalog import Catalog, Item, load_catalog
from retrieval.linking import AttributeMention, EntityLinker, ItemMention, normalize_title

REDIAL_CATALOG = Path("/work/shared/datasets/redial/catalog/redial_catalog_merged.jsonl")


def _movie(item_id: str, title: str, year: int | None = None, **lists: list[str]) -> Item:
    numbers = {"year": float(year)} if year is not None else {}
    return Item(id=item_id, title=title, lists=lists, numbers=numbers)


MOVIES = [
    _movie("matrix", "The Matrix (1999)", 1999, genre=["action", "sci-fi"],
           star=["Keanu Reeves", "Carrie-Anne Moss"]),
    _movie("heat", "Heat (1995)", 1995, genre=["crime", "thriller"], star=["Al Pacino", "Robert De Niro"]),
    _movie("the-heat", "The Heat (2013)", 2013, genre=["comedy", "crime"], star=["Sandra Bullock"]),
    _movie("inception", "Inception (2010)", 2010, genre=["sci-fi", "thriller"]),
    _movie("godfather", "The Godfather (1972)", 1972, genre=["crime", "drama"], star=["Al Pacino"]),
    _movie("godfather2", "The Godfather Part II (1974)", 1974, genre=["crime", "drama"], star=["Al Pacino"]),
    _movie("up", "Up (2009)", 2009, genre=["animation", "comedy"]),
    _movie("it2017", "It (2017)", 2017, genre=["horror"]),
    _movie("it1990", "It (1990)", 1990, genre=["horror"]),
    _movie("apes1968", "Planet of the Apes (1968)", 1968, genre=["sci-fi"]),
    _movie("apes2001", "Planet of the Apes (2001)", 2001, genre=["sci-fi", "action"]),
    _movie("toy1", "Toy Story (1995)", 1995, genre=["animation", "comedy"], star=["Tom Hanks"]),
    _movie("toy2", "Toy Story 2 (1999)", 1999, genre=["animation", "comedy"], star=["Tom Hanks"]),
    _movie("furious", "Fast & Furious (2009)", 2009, genre=["action"]),
    _movie("2012", "2012 (2009)", 2009, genre=["action", "sci-fi"]),
    _movie("amelie", "Amélie (2001)", 2001, genre=["comedy", "romance"]),
    _movie("keanu", "Keanu (2016)", 2016, genre=["comedy"], star=["Keegan-Michael Key"]),
    _movie("thriller", "Thriller (2018)", 2018, genre=["horror"]),
    _movie("unforgiven", "Unforgiven (1992)", 1992, genre=["western"], star=["Clint Eastwood"],
           director=["Clint Eastwood"]),
]


@pytest.fixture(scope="module")
def movies() -> Catalog:
    return Catalog("movies", MOVIES)


@pytest.fixture(scope="module")
def linker(movies: Catalog) -> EntityLinker:
    return EntityLinker(movies)


def _ids(mentions: list[ItemMention]) -> list[str]:
    return [m.item_id for m in mentions]


def _pairs(mentions: list[AttributeMention]) -> set[tuple[str, str]]:
    return {(m.field, m.value) for m in mentions}


# ---------------------------------------------------------------- normalisation


def test_normalize_title_strips_year_punctuation_and_unifies_and() -> None:
    assert normalize_title("The Matrix (1999)") == "the matrix"
    assert normalize_title("Fast & Furious (2009)") == normalize_title("Fast and Furious")
    assert normalize_title("Matrix, The (1999)") == "the matrix"
    assert normalize_title("Amélie") == "amelie"
    assert normalize_title("  Schindler's   List! ") == "schindlers list"


# ---------------------------------------------------------------- link_items


def test_exact_title_with_offsets(linker: EntityLinker) -> None:
    text = "I loved the matrix so much"
    [mention] = linker.link_items(text)
    assert mention.item_id == "matrix"
    assert mention.surface == "the matrix"
    assert text[mention.start:mention.end] == mention.surface
    assert 0.0 < mention.score <= 1.0


def test_title_followed_by_year_includes_year_in_span(linker: EntityLinker) -> None:
    cases = [("Heat (1995) is a classic", "Heat (1995)"), ("have you seen heat 1995", "heat 1995")]
    for text, surface in cases:
        [mention] = linker.link_items(text)
        assert mention.item_id == "heat"
        assert mention.surface == surface


def test_article_dropped(linker: EntityLinker) -> None:
    assert _ids(linker.link_items("have you seen matrix?")) == ["matrix"]


def test_question_with_punctuation(linker: EntityLinker) -> None:
    [mention] = linker.link_items("have you seen Inception?")
    assert (mention.item_id, mention.surface) == ("inception", "Inception")


def test_typo_is_fuzzy_matched_with_lower_score(linker: EntityLinker) -> None:
    [mention] = linker.link_items("the godfater was great")
    assert mention.item_id == "godfather"
    assert mention.surface == "the godfater"
    assert mention.score < 1.0


def test_longest_match_wins(linker: EntityLinker) -> None:
    assert _ids(linker.link_items("I prefer the godfather part ii")) == ["godfather2"]
    assert _ids(linker.link_items("toy story 2 was better")) == ["toy2"]


def test_unknown_sequel_does_not_link_the_original(linker: EntityLinker) -> None:
    assert linker.link_items("toy story 4 comes out soon") == []
    # Numbers never count as typos: "toy story 3" is not "toy story 2".
    assert linker.link_items("did you like toy story 3?") == []


def test_ambiguous_remake_uses_year_then_popularity_then_order(movies: Catalog) -> None:
    plain = EntityLinker(movies)
    assert _ids(plain.link_items("Planet of the Apes (2001) was weak")) == ["apes2001"]
    assert _ids(plain.link_items("planet of the apes 1968 is better")) == ["apes1968"]
    # No year, no popularity: the first in catalog order.
    assert _ids(plain.link_items("I watched planet of the apes")) == ["apes1968"]
    popular = EntityLinker(movies, popularity={"apes2001": 10.0})
    assert _ids(popular.link_items("I watched planet of the apes")) == ["apes2001"]
    # A given year beats popularity.
    assert _ids(popular.link_items("I watched planet of the apes (1968)")) == ["apes1968"]


def test_common_word_title_needs_evidence(linker: EntityLinker) -> None:
    assert linker.link_items("I can't stand the heat") == []
    assert linker.link_items("the heat is unbearable today") == []
    assert linker.link_items("Heat was everywhere this summer") == []  # sentence-initial casing is weak
    assert _ids(linker.link_items("I loved Heat")) == ["heat"]  # capitalised mid-sentence
    assert _ids(linker.link_items("i loved heat")) == ["heat"]  # cue word
    assert _ids(linker.link_items('what about "heat"?')) == ["heat"]  # quoted
    assert _ids(linker.link_items("heat (1995) please")) == ["heat"]  # year


def test_stopword_titles_need_strong_evidence(linker: EntityLinker) -> None:
    assert linker.link_items("what's up with you") == []
    assert linker.link_items("I saw it yesterday and liked it") == []
    assert _ids(linker.link_items("Can you recommend something like Up?")) == ["up"]
    # Two films called It: the first in catalog order without popularity.
    assert _ids(linker.link_items("I watched It last night")) == ["it2017"]
    assert _ids(linker.link_items("I watched It (1990) last night")) == ["it1990"]


def test_number_titles_need_a_cue(linker: EntityLinker) -> None:
    assert linker.link_items("in 2012 we moved house") == []
    assert _ids(linker.link_items("I have seen 2012 twice")) == ["2012"]


def test_cue_does_not_link_a_title_used_as_an_adjective(movies: Catalog) -> None:
    catalog = Catalog("c", [*movies, _movie("fast", "Fast (2010)", 2010), _movie("war", "War (2007)", 2007)])
    linker = EntityLinker(catalog)
    assert linker.link_items("I like fast cars") == []
    assert linker.link_items("I like war movies") == []
    assert _ids(linker.link_items("I liked war, it was tense")) == ["war"]


def test_and_ampersand_and_accents(linker: EntityLinker) -> None:
    assert _ids(linker.link_items("fast and furious was fun")) == ["furious"]
    assert _ids(linker.link_items("Fast & Furious was fun")) == ["furious"]
    assert _ids(linker.link_items("I loved amelie")) == ["amelie"]


def test_distinctive_single_word_lowercase_needs_a_cue(linker: EntityLinker) -> None:
    assert _ids(linker.link_items("Inception was great")) == ["inception"]
    assert linker.link_items("inception was great") == []
    assert _ids(linker.link_items("what about inception")) == ["inception"]


def test_list_after_a_linked_title_counts_as_evidence(linker: EntityLinker) -> None:
    mentions = linker.link_items("I liked the matrix, inception and heat")
    assert _ids(mentions) == ["matrix", "inception", "heat"]
    starts = [m.start for m in mentions]
    assert starts == sorted(starts)


def test_title_inside_a_person_name_is_not_linked(linker: EntityLinker) -> None:
    assert linker.link_items("anything with Keanu Reeves please") == []
    assert _ids(linker.link_items("I liked Keanu a lot")) == ["keanu"]


def test_pronouns_verbs_interjections_and_compounds_are_not_titles(movies: Catalog) -> None:
    extra = [_movie("loved", "Loved (1997)", 1997), _movie("cop", "Cop (1988)", 1988),
             _movie("yes", "Yes (2004)", 2004)]
    linker = EntityLinker(Catalog("c", [*movies, *extra]))
    assert linker.link_items("Up is a great one, It makes me cry") == []
    assert linker.link_items("Yes and I Loved it!") == []
    assert linker.link_items("Oh Yes, that one was good") == []
    assert linker.link_items("An Ex-Cop is caught up in a conspiracy") == []
    assert _ids(linker.link_items("Last week I watched Cop with my dad")) == ["cop"]


def test_everyday_phrase_titles_need_evidence(movies: Catalog) -> None:
    extra = [_movie("lastnight", "Last Night (2010)", 2010), _movie("gamenight", "Game Night (2018)", 2018)]
    linker = EntityLinker(Catalog("c", [*movies, *extra]))
    assert linker.link_items("I watched a great movie last night") == []
    assert linker.link_items("any ideas for a game night with friends?") == []
    assert _ids(linker.link_items("I really loved Game Night")) == ["gamenight"]


def test_sequel_number_does_not_block_the_real_sequel(movies: Catalog) -> None:
    extra = [_movie("inc1", "The Incredibles (2004)", 2004), _movie("inc2", "Incredibles 2 (2018)", 2018)]
    linker = EntityLinker(Catalog("c", [*movies, *extra]))
    assert _ids(linker.link_items("Did you see the Incredibles 2 yesterday?")) == ["inc2"]
    assert _ids(linker.link_items("Did you see the Incredibles yesterday?")) == ["inc1"]


def test_title_equal_to_a_person_name_needs_a_cue(movies: Catalog) -> None:
    extra = [_movie("stunts", "Jackie Chan: My Stunts (1999)", 1999),
             _movie("rush", "Rush Hour (1998)", 1998, star=["Jackie Chan", "Chris Tucker"])]
    linker = EntityLinker(Catalog("c", [*movies, *extra]))
    assert _ids(linker.link_items("Rush Hour is with jackie chan")) == ["rush"]
    assert ("star", "Jackie Chan") in _pairs(linker.link_attributes("Rush Hour is with jackie chan"))


def test_generic_attribute_word_is_not_a_title(linker: EntityLinker) -> None:
    # "thriller" is a genre of several items, so the film "Thriller" needs strong evidence.
    assert linker.link_items("i like thriller movies") == []
    assert _ids(linker.link_items('have you seen "Thriller"?')) == ["thriller"]


def test_mentions_do_not_overlap(linker: EntityLinker) -> None:
    mentions = linker.link_items("The Godfather Part II (1974) and The Matrix (1999) and heat 1995")
    assert _ids(mentions) == ["godfather2", "matrix", "heat"]
    for first, second in zip(mentions, mentions[1:], strict=False):
        assert first.end <= second.start


def test_no_text_no_mentions(linker: EntityLinker) -> None:
    assert linker.link_items("") == []
    assert linker.link_items("?!") == []
    assert linker.link_attributes("") == []


# ---------------------------------------------------------------- link_attributes


def test_attributes_with_plurals_and_people(linker: EntityLinker) -> None:
    mentions = linker.link_attributes("I like comedies and thrillers with al pacino")
    assert _pairs(mentions) == {("genre", "comedy"), ("genre", "thriller"), ("star", "Al Pacino")}
    by_value = {m.value: m for m in mentions}
    assert by_value["comedy"].surface == "comedies"
    assert by_value["Al Pacino"].surface == "al pacino"


def test_attribute_person_name_typo(linker: EntityLinker) -> None:
    assert _pairs(linker.link_attributes("something with sandra bulock")) == {("star", "Sandra Bullock")}


def test_attribute_one_mention_per_field(linker: EntityLinker) -> None:
    mentions = linker.link_attributes("films by Clint Eastwood")
    assert _pairs(mentions) == {("star", "Clint Eastwood"), ("director", "Clint Eastwood")}
    assert {m.surface for m in mentions} == {"Clint Eastwood"}


def test_attribute_fields_filter(linker: EntityLinker) -> None:
    text = "sci-fi with Keanu Reeves"
    assert _pairs(linker.link_attributes(text)) == {("genre", "sci-fi"), ("star", "Keanu Reeves")}
    assert _pairs(linker.link_attributes(text, fields=["star"])) == {("star", "Keanu Reeves")}
    assert linker.link_attributes(text, fields=["director"]) == []


def test_attribute_hyphen_and_compact_spellings(linker: EntityLinker) -> None:
    assert _pairs(linker.link_attributes("any good scifi?")) == {("genre", "sci-fi")}
    assert _pairs(linker.link_attributes("any good sci fi?")) == {("genre", "sci-fi")}


def test_attribute_values_short_stopword_and_long_are_skipped() -> None:
    items = [
        Item(id="a", title="A thing", lists={"tag": ["it", "tv", "up", "cozy"]},
             text={"tagline": "An extremely long sentence that is free text rather than an attribute"}),
        Item(id="b", title="B thing", lists={"tag": ["cozy"]}),
    ]
    linker = EntityLinker(Catalog("t", items))
    assert linker.link_attributes("I want it up on tv, an extremely long sentence that is free text") == []
    assert _pairs(linker.link_attributes("something cozy")) == {("tag", "cozy")}


def test_attribute_plural_guard_and_one_word_names() -> None:
    items = [
        Item(id="a", title="Daily Show", lists={"genre": ["news", "talk"], "star": ["Common", "Jon Stewart"]}),
        Item(id="b", title="Other Show", lists={"genre": ["news"], "star": ["Jon Stewart", "Trevor Noah"]}),
    ]
    linker = EntityLinker(Catalog("t", items))
    assert linker.link_attributes("something new please") == []  # "new" is not the plural-less "news"
    assert _pairs(linker.link_attributes("any news shows?")) == {("genre", "news")}
    assert linker.link_attributes("we share a common goal") == []
    assert _pairs(linker.link_attributes("I like Common and jon stewart")) == {
        ("star", "Common"), ("star", "Jon Stewart")}


def test_attribute_word_boundaries(linker: EntityLinker) -> None:
    # "crime" must not match inside "crimean", nor "drama" inside "dramatic".
    assert linker.link_attributes("a crimean dramatic story") == []


# ---------------------------------------------------------------- non-movie catalog


@pytest.fixture(scope="module")
def products() -> Catalog:
    return Catalog("products", [
        Item(id="p1", title="Nokia G42 5G phone", text={"brand": "Nokia"},
             lists={"category": ["phone"], "colour": ["purple", "grey"]}, numbers={"price": 199.0}),
        Item(id="p2", title="Apple iPhone 15", text={"brand": "Apple"},
             lists={"category": ["phone"], "colour": ["black", "pink"]}, numbers={"price": 799.0}),
        Item(id="p3", title="Samsung Galaxy Tab S9", text={"brand": "Samsung"},
             lists={"category": ["tablet"], "colour": ["black"]}, numbers={"price": 699.0}),
        Item(id="p4", title="Sony WH-1000XM5 Wireless Headphones", text={"brand": "Sony"},
             lists={"category": ["headphones"], "colour": ["black", "silver"]}),
    ])


def test_product_titles(products: Catalog) -> None:
    linker = EntityLinker(products)
    assert _ids(linker.link_items("is the nokia g42 5g phone any good?")) == ["p1"]
    compare = "Compare the Apple iPhone 15 with the samsung galaxy tab s9"
    assert _ids(linker.link_items(compare)) == ["p2", "p3"]
    assert _ids(linker.link_items("I need sony wh-1000xm5 wireless headphones")) == ["p4"]
    assert linker.link_items("I need a phone for my mom") == []


def test_product_attributes(products: Catalog) -> None:
    linker = EntityLinker(products)
    pairs = _pairs(linker.link_attributes("Show me black phones from Samsung or apple"))
    assert pairs == {("colour", "black"), ("category", "phone"), ("brand", "Samsung"), ("brand", "Apple")}
    assert _pairs(linker.link_attributes("tablets", fields=["category"])) == {("category", "tablet")}
    # Plurals in either direction: the catalog says "headphones".
    assert _pairs(linker.link_attributes("a silver headphone")) == {("colour", "silver"), ("category", "headphones")}


# ---------------------------------------------------------------- resolve_title


def test_resolve_title_exact_and_year(linker: EntityLinker) -> None:
    assert linker.resolve_title("The Matrix (1999)") == "matrix"
    assert linker.resolve_title("the matrix") == "matrix"
    assert linker.resolve_title("Matrix, The (1999)") == "matrix"
    assert linker.resolve_title("Heat (1995)") == "heat"
    assert linker.resolve_title("Heat (2013)") == "the-heat"  # article-dropped variant, picked by year
    assert linker.resolve_title("Planet of the Apes (2001)") == "apes2001"
    assert linker.resolve_title("Planet of the Apes (1969)") == "apes1968"  # one year of slack
    assert linker.resolve_title("Toy Story") == "toy1"


def test_resolve_title_fuzzy_and_unsure(linker: EntityLinker) -> None:
    assert linker.resolve_title("Incepton (2010)") == "inception"
    assert linker.resolve_title("Incepton (1990)") is None  # fuzzy only within the same year
    assert linker.resolve_title("Toy Story 3 (2010)") is None
    assert linker.resolve_title("A Completely Unknown Film (2000)") is None
    assert linker.resolve_title("") is None


# ---------------------------------------------------------------- real catalog


def test_redial_catalog() -> None:
    if not REDIAL_CATALOG.is_file():
        pytest.skip(f"ReDial catalog not found at {REDIAL_CATALOG}")
    catalog = load_catalog(REDIAL_CATALOG)
    linker = EntityLinker(catalog)

    def titles(text: str) -> list[str]:
        return [catalog[m.item_id].title for m in linker.link_items(text)]

    assert titles("I loved The Matrix and Heat (1995)") == ["The Matrix (1999)", "Heat (1995)"]
    assert titles("I really enjoyed the dark knight rises") == ["The Dark Knight Rises (2012)"]
    assert titles("I can't stand the heat") == []
    assert titles("I saw it in May with my family") == []
    matrix = linker.resolve_title("The Matrix (1999)")
    assert matrix is not None and catalog[matrix].title == "The Matrix (1999)"
    assert ("genre", "comedy") in _pairs(linker.link_attributes("any good comedies?"))
    assert ("star", "Tom Hanks") in _pairs(linker.link_attributes("something with tom hanks"))
