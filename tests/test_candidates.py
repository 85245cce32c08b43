"""Candidate generation on real Chroma + MiniLM: signals, constraints, exclusions, learned priors."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.candidates import DEFAULT_WEIGHTS, FEATURES, Constraints, Preferences
from retrieval.dialogs import Dialog, Turn
from retrieval.index import Library
from retrieval.priors import InteractionPriors


def _id(catalog, title: str) -> str:  # noqa: ANN001
    return next(item.id for item in catalog if item.title == title)


def test_dense_signal_finds_matching_items(library: Library, movies_small) -> None:  # noqa: ANN001
    generator = library.generator("movies_small")
    results = generator.candidates(Preferences(text="a scary horror movie with ghosts and a haunted house"), 5)
    assert len(results) == 5
    top_genres = [set(movies_small[c.item_id].lists.get("genre", [])) for c in results[:3]]
    assert all("horror" in g for g in top_genres), [c.title for c in results]
    assert set(results[0].signals) == set(FEATURES)
    assert results == sorted(results, key=lambda c: -c.score)


def test_liked_items_pull_neighbours_and_are_not_returned(library: Library, movies_small) -> None:  # noqa: ANN001
    generator = library.generator("movies_small")
    alien = _id(movies_small, "Alien (1979)")
    results = generator.candidates(Preferences(liked=[alien]), 10)
    ids = [c.item_id for c in results]
    assert alien not in ids
    assert _id(movies_small, "Aliens (1986)") in ids[:3]
    assert all(c.signals["item_sim_max"] > 0 for c in results)


def test_constraints_filter_every_candidate(library: Library, products) -> None:  # noqa: ANN001
    generator = library.generator("products")
    prefs = Preferences(
        text="I need a sturdy phone",
        constraints=Constraints(include={"category": ["phone"]}, ranges={"price": (None, 300.0)}),
    )
    results = generator.candidates(prefs, 10)
    assert results, "some phones are under $300"
    for c in results:
        item = products[c.item_id]
        assert item.text["category"] == "phone" and item.numbers["price"] <= 300
    assert results[0].item_id in {"p-001", "p-005"}  # the two rugged ones
    excluded = generator.candidates(Preferences(text="phone", constraints=Constraints(
        exclude={"brand": ["Samsung"], "tags": ["budget"]})), 20)
    assert excluded and all(products[c.item_id].text["brand"] != "Samsung" for c in excluded)
    assert all("budget" not in products[c.item_id].lists.get("tags", []) for c in excluded)


def test_exclusions_and_disliked(library: Library, products) -> None:  # noqa: ANN001
    generator = library.generator("products")
    prefs = Preferences(text="rugged phone", exclude=["p-005"], disliked=["p-001"])
    ids = [c.item_id for c in generator.candidates(prefs, 20)]
    assert "p-005" not in ids and "p-001" not in ids and ids


def test_nothing_to_go_on_still_returns_items(library: Library, products) -> None:  # noqa: ANN001
    results = library.generator("products").candidates(Preferences(), 5)
    assert len(results) == 5


def test_cooccurrence_priors_change_the_ranking(library: Library, movies_small) -> None:  # noqa: ANN001
    # An unlikely pair by content: only the learned co-occurrence can put Finding Nemo first after Heat.
    heat, nemo = _id(movies_small, "Heat (1995)"), _id(movies_small, "Finding Nemo (2003)")
    dialogs = [Dialog(id=str(n), turns=[Turn(role="user", text="like Heat", items=[heat]),
                                        Turn(role="assistant", text="try Finding Nemo", items=[nemo])])
               for n in range(5)]
    priors = InteractionPriors.from_dialogs(dialogs)
    assert priors.follow[heat][nemo] == 5 and priors.popularity[nemo] == 5
    from retrieval.candidates import CandidateGenerator

    plain = CandidateGenerator(movies_small, library.store, library.embedder)
    learned = CandidateGenerator(movies_small, library.store, library.embedder, priors)
    prefs = Preferences(liked=[heat])
    plain_rank = [c.item_id for c in plain.candidates(prefs, 48)].index(nemo)
    learned_results = learned.candidates(prefs, 48)
    assert plain_rank > 5
    assert learned_results[0].item_id == nemo
    assert learned_results[0].signals["follow"] > 0


def test_where_filter_translation() -> None:
    c = Constraints(include={"genre": ["Comedy", "drama"]}, exclude={"brand": ["X"]}, ranges={"year": (1990, None)})
    assert c.chroma_where({"genre"}) == {"$and": [
        {"$or": [{"genre": {"$contains": "comedy"}}, {"genre": {"$contains": "drama"}}]},
        {"brand": {"$ne": "x"}},
        {"year": {"$gte": 1990}},
    ]}
    assert Constraints().chroma_where(set()) is None


def test_fitted_fusion_learns_from_conversations(library: Library, movies_small) -> None:  # noqa: ANN001
    """`fit_retrieval` cross-fits a learned scorer that the generator then uses, and reports held-out recall."""
    from retrieval.candidates import CandidateGenerator, LearnedFusion
    from retrieval.fusion import fit_retrieval

    items = [item.id for item in movies_small]
    # Each liked item is always followed by the same, unrelated recommendation: a pattern only the
    # conversation signals carry, which the fitted fusion must pick up.
    pairs = [(items[n], items[(n * 7 + 13) % len(items)]) for n in range(20)]
    dialogs = [Dialog(id=f"{n}-{r}", turns=[Turn(role="user", text="something good please", items=[a]),
                                            Turn(role="assistant", text="try this", items=[b])])
               for n, (a, b) in enumerate(pairs) for r in range(3)]
    fitted = fit_retrieval(dialogs, movies_small, library.store, library.embedder, pool_k=20, epochs=60,
                           folds=3, progress=False)
    assert set(fitted.report) >= {"linear", "learned", "samples", "in_pool"}
    assert 0.0 <= fitted.report["learned"]["recall@10"] <= 1.0
    scorer = LearnedFusion.from_dict(fitted.scorer)
    assert scorer is not None and scorer.features == list(FEATURES)
    assert LearnedFusion.from_dict({**fitted.scorer, "features": ["dense"]}) is None  # another feature set

    priors = InteractionPriors.from_dialogs(dialogs)
    fitted.store_in(priors)
    assert priors.scorer == fitted.scorer and priors.weights == fitted.weights
    assert len(priors.projection) == fitted.projection.shape[0]
    generator = CandidateGenerator(movies_small, library.store, library.embedder, priors)
    assert generator.learned is not None
    hits = sum(generator.candidates(Preferences(text="something good please", liked=[a]), 5)[0].item_id == b
               for a, b in pairs)
    assert hits >= 15
    # Explicit weights are a caller's choice and switch the learned scorer off.
    assert CandidateGenerator(movies_small, library.store, library.embedder, priors, {"dense": 1.0}).learned is None

    # These dialogs have no dislikes, so `disliked_sim` never varied: the scorer reads it at its default
    # linear weight rather than through untrained MLP weights, where any value would saturate the scores.
    features = np.zeros((2, len(FEATURES)), dtype=np.float32)
    features[1, FEATURES.index("disliked_sim")] = 0.8
    low, high = scorer.score(features)[[1, 0]]
    assert np.isfinite([low, high]).all()
    assert high - low == pytest.approx(-0.8 * DEFAULT_WEIGHTS["disliked_sim"], rel=1e-5)


def test_named_attributes_are_a_soft_signal(library: Library, movies_small) -> None:  # noqa: ANN001
    from retrieval.dialogs import Turn
    from retrieval.fusion import preferences_for

    context = [Turn(role="user", text="I'm in the mood for something by Michael Mann, maybe a crime film"),
               Turn(role="assistant", text="Have you seen a Steven Soderbergh movie?")]
    prefs = preferences_for(context, movies_small, library.linker("movies_small"))
    # Only the user's words count: the assistant's suggestion is not the user's taste.
    assert "Michael Mann" in prefs.attributes["director"]
    assert "Steven Soderbergh" not in prefs.attributes.get("director", [])
    assert "crime" in prefs.attributes["genre"]

    results = library.generator("movies_small").candidates(prefs, len(movies_small))
    by_title = {c.title: c for c in results}
    assert by_title["Heat (1995)"].signals["attr_match"] == 2  # directed by Michael Mann, and a crime film
    for c in results:
        item = movies_small[c.item_id]
        expected = ("Michael Mann" in item.lists.get("director", [])) + ("crime" in item.lists.get("genre", []))
        assert c.signals["attr_match"] == expected, c.title
    # Soft: items without the attributes are still candidates (unlike constraints).
    assert any(c.signals["attr_match"] == 0 for c in results)
