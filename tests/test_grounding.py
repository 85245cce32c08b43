"""GroundingChecker: invented facts are caught, facts from the record or the user's words are accepted."""

from __future__ import annotations

import pytest

from chatbot.grounding import GroundingChecker, normalise, numbers_in, stem
from retrieval.catalog import Catalog, Item, load_catalog
from tests.conftest import DATA


@pytest.fixture(scope="module")
def movies() -> Catalog:
    return load_catalog(DATA / "movies_small.jsonl", "movies_small")


@pytest.fixture(scope="module")
def products() -> Catalog:
    return load_catalog(DATA / "products.csv", "products")


@pytest.fixture(scope="module")
def movie_checker(movies: Catalog) -> GroundingChecker:
    return GroundingChecker(movies)


@pytest.fixture(scope="module")
def heat(movies: Catalog) -> Item:
    return movies["176314"]


def test_vocabulary_collects_lists_short_strings_and_titles(movie_checker: GroundingChecker,
                                                            products: Catalog) -> None:
    assert movie_checker.vocabulary["al pacino"] == "Al Pacino"
    assert "crime" in movie_checker.vocabulary
    assert movie_checker.titles["heat 1995"] == "Heat (1995)"
    product_checker = GroundingChecker(products)
    assert product_checker.vocabulary["samsung"] == "Samsung"  # a short string field (brand)
    assert "rugged" in product_checker.vocabulary  # a list field (tags)


def test_facts_from_the_record_are_accepted(movie_checker: GroundingChecker, heat: Item) -> None:
    text = ("Heat (1995) is an action crime drama directed by Michael Mann, starring Al Pacino and "
            "Robert De Niro's crew of professional thieves, a film from the 1990s released in 1995.")
    assert movie_checker.unsupported_claims(text, heat) == []


def test_invented_year_is_caught(movie_checker: GroundingChecker, heat: Item) -> None:
    assert movie_checker.unsupported_claims("Heat came out in 2003.", heat) == ["2003"]
    assert movie_checker.unsupported_claims("A classic of the 1980s.", heat) == ["1980s"]


def test_invented_person_is_caught(movie_checker: GroundingChecker, heat: Item) -> None:
    # Tom Hanks is in the catalog vocabulary (Toy Story); Jane Doerington is not in it at all.
    claims = movie_checker.unsupported_claims("It stars Tom Hanks and Jane Doerington.", heat)
    assert claims == ["Tom Hanks", "Jane Doerington"]


def test_other_items_title_is_caught(movie_checker: GroundingChecker, movies: Catalog, heat: Item) -> None:
    other = next(item for item in movies if item.id != heat.id and len(item.title.split()) >= 3)
    claims = movie_checker.unsupported_claims(f"If you liked {other.title}, this is for you.", heat)
    assert other.title in claims


def test_invented_genre_is_caught(movie_checker: GroundingChecker, heat: Item) -> None:
    assert movie_checker.unsupported_claims("A light animation for the family.", heat) == ["animation"]


def test_user_words_support_claims(movie_checker: GroundingChecker, movies: Catalog, heat: Item) -> None:
    other = next(item for item in movies if item.id != heat.id and len(item.title.split()) >= 3)
    text = f"Since you loved {other.title} and Tom Hanks, try this one from the 1990s."
    assert movie_checker.unsupported_claims(text, heat, user_text=f"I loved {other.title} and Tom Hanks") == []


def test_invented_relations_awards_and_lone_names_are_caught(movie_checker: GroundingChecker, heat: Item) -> None:
    check = movie_checker.unsupported_claims
    assert check("You may enjoy Heat (1995) because it's a sequel to the film.", heat) == ["sequel"]
    assert check("It is an award-winning remake.", heat) == ["award", "remake"]
    assert check("It is a Disney classic set in Paris.", heat) == ["Disney", "Paris"]
    # Supported by the record (Pacino, the LAPD of the plot) or by the user's words (a sequel, Oscars).
    assert check("It has Pacino chasing thieves for the LAPD.", heat) == []
    assert check("It won an Oscar, like the sequel you mentioned.", heat,
                 user_text="I want a sequel that won Oscars") == []


def test_ordinary_capitalised_words_are_not_claims(movie_checker: GroundingChecker, heat: Item) -> None:
    text = "I Think You Will Love It. On Monday Night, Heat is the one. Enjoy It In December!"
    assert movie_checker.unsupported_claims(text, heat) == []


def test_prices_and_ratings_are_compared_numerically(products: Catalog) -> None:
    checker = GroundingChecker(products)
    phone = products["p-003"]  # $1,299.99, rated 4.7/5
    assert phone.numbers["price"] == 1299.99
    ok = "At $1,299.99 (about $1,300) and rated 4.7 out of 5, it has a 200 MP camera."
    assert checker.unsupported_claims(ok, phone) == []
    assert checker.unsupported_claims("It costs only $999.", phone) == ["$999"]
    assert checker.unsupported_claims("Rated 4.5/5 by buyers.", phone) == ["4.5"]
    assert checker.unsupported_claims("Under $1,500 as you asked.", phone, user_text="under $1,500") == []


def test_brand_of_another_product_is_caught(products: Catalog) -> None:
    checker = GroundingChecker(products)
    phone = products["p-001"]  # a Nokia
    assert checker.unsupported_claims("A Nokia phone, as rugged as a Samsung.", phone) == ["Samsung"]


def test_refers_to_user(movie_checker: GroundingChecker) -> None:
    likes = ["Heat (1995)", "comedy", "not too violent"]
    assert movie_checker.refers_to_user("Like Heat, it is tense.", likes)
    assert movie_checker.refers_to_user("Full of COMEDIES.", likes)
    assert movie_checker.refers_to_user("It is never violent.", likes)
    assert not movie_checker.refers_to_user("A heated drama about a family.", likes)
    assert not movie_checker.refers_to_user("Anything at all.", [])


def test_text_helpers() -> None:
    assert normalise("Sci-Fi, Ocean's  Eleven!") == "sci fi ocean eleven"
    assert numbers_in("$1,299.99 or 4.7/5 in 1995") == [1299.99, 4.7, 1995.0]
    assert [stem(w) for w in ("comedies", "thrillers", "boxes", "class")] == ["comedy", "thriller", "box", "class"]


def test_names_with_initials_accents_and_model_numbers(products: Catalog) -> None:
    item = Item(id="x", title="Some Film", lists={"star": ["Samuel L. Jackson", "Gael García Bernal"]})
    checker = GroundingChecker([item])
    assert checker.unsupported_claims("With Samuel L. Jackson and Gael García Bernal.", item) == []
    assert checker.unsupported_claims("With Samuel L. Jackson and Émile Zolaire.", item) == ["Émile Zolaire"]
    phone_checker = GroundingChecker(products)
    s24 = products["p-003"]
    assert phone_checker.unsupported_claims(f"The {s24.title} from Samsung, model S24.", s24) == []
