"""Justifiers: the template quotes only the record; the LM justifier is grounded or falls back."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest

from chatbot.grounding import GroundingChecker
from chatbot.justify import (
    JustificationRequest,
    LMJustifier,
    TemplateJustifier,
    _boundaries,
    answer_start,
    justification_prompt,
    overlap,
)
from chatbot.lm import MIN_SHARED_PREFIX, LanguageModel
from retrieval.catalog import Catalog, Item, load_catalog
from retrieval.settings import Settings
from tests.conftest import DATA


@pytest.fixture(scope="module")
def movies() -> Catalog:
    return load_catalog(DATA / "movies_small.jsonl", "movies_small")


@pytest.fixture(scope="module")
def products() -> Catalog:
    return load_catalog(DATA / "products.csv", "products")


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> LanguageModel:
    # The same session-wide data dir as tests/test_lm.py: whichever module runs first converts the GGUF.
    # float32: texts written in one batch are compared with texts written alone (bfloat16 rounding lets
    # left padding change greedy texts early); the service's bfloat16 is exercised end to end.
    model = LanguageModel(Settings(data_dir=tmp_path_factory.getbasetemp() / "recchat-lm", device="cpu",
                                   lm_dtype="float32"))
    model.model  # noqa: B018
    return model


class RejectEverything(GroundingChecker):
    """A checker that finds every sentence unsupported, to force the fallback."""

    def unsupported_claims(self, text: str, item: Item, user_text: str = "") -> list[str]:
        return [text]


def check(checker: GroundingChecker, text: str, request: JustificationRequest) -> list[str]:
    return checker.unsupported_claims(text, request.item, " ".join([request.user_text, *request.user_likes]))


def test_template_for_a_movie_mentions_the_overlap_and_only_record_facts(movies: Catalog) -> None:
    checker = GroundingChecker(movies)
    request = JustificationRequest(movies["176314"], "I love action films with Al Pacino",
                                   ["Heat (1995)", "action", "Al Pacino", "not too violent"])
    text = TemplateJustifier().justify(request)
    assert text.startswith("Since you like action and Al Pacino, Heat (1995) fits: genre: action")
    assert "star: Al Pacino" in text and "Plot: A group of high-end professional thieves" in text
    assert check(checker, text, request) == []
    assert checker.refers_to_user(text, request.user_likes)
    assert "violent" not in text  # a negative wish is never presented as a like


def test_template_for_a_product_uses_its_own_fields_and_numbers(products: Catalog) -> None:
    checker = GroundingChecker(products)
    phone = products["p-003"]
    request = JustificationRequest(phone, "a phone with a great camera", ["camera", "Samsung"])
    text = TemplateJustifier().justify(request)
    assert "price: 1299.99" in text and "rating: 4.7" in text and "brand: Samsung" in text
    assert "Description: A flagship phone with a 200 MP camera" in text
    assert check(checker, text, request) == []
    assert checker.refers_to_user(text, request.user_likes)
    assert "".join(TemplateJustifier().stream(request)) == text


def test_template_without_overlap_still_only_quotes_the_record(movies: Catalog) -> None:
    checker = GroundingChecker(movies)
    request = JustificationRequest(movies["80067"], "", ["westerns"])
    text = TemplateJustifier().justify(request)
    assert text.startswith("Toy Story (1995) could suit you:")
    assert check(checker, text, request) == []


def test_overlap_and_prompt_are_schema_free(products: Catalog) -> None:
    phone = products["p-001"]
    assert ("rugged phones", "tags", "rugged") in overlap(phone, ["rugged phones", "no budget limit"])
    content = justification_prompt(JustificationRequest(phone, "", ["rugged"]))[1]["content"]
    assert "Item: Nokia G42 5G" in content and "price: 249" in content and "brand: Nokia" in content
    assert "Samsung" not in content  # only this item's record goes into the prompt
    assert answer_start(JustificationRequest(phone, "", ["rugged", "not too big"])) == (
        "Since you like rugged, you may enjoy Nokia G42 5G because")


def test_clause_and_sentence_ends_keep_decimals_and_thousands() -> None:
    text = "It is rated 4.5 today, costs $1,000: fine. Dr. No is 4:3; And th"
    ends = [(text[:words], ends_sentence) for words, _, ends_sentence in _boundaries(text, 0)]
    assert ends == [("It is rated 4.5 today", False), ("It is rated 4.5 today, costs $1,000", False),
                    ("It is rated 4.5 today, costs $1,000: fine.", True),
                    ("It is rated 4.5 today, costs $1,000: fine. Dr. No is 4:3", False)]
    after_first = [text[:words] for words, _, _ in _boundaries(text, len("It is rated 4.5 today,"))]
    assert after_first == [text for text, _ in ends[1:]]


@pytest.mark.slow
def test_lm_justification_is_grounded_and_stream_matches(lm: LanguageModel, movies: Catalog) -> None:
    checker = GroundingChecker(movies)
    justifier = LMJustifier(lm, checker)
    request = JustificationRequest(movies["176314"], "I want a tense crime film. I loved The Departed.",
                                   ["The Departed (2006)", "crime"])
    text = justifier.justify(request)
    assert text.strip() and justifier.last_outcome in {"lm", "partial", "fallback"}
    assert check(checker, text, request) == []
    pieces = list(justifier.stream(request))
    assert "".join(pieces) == text  # greedy decoding: the same text, streamed
    if justifier.last_outcome != "fallback":
        assert pieces[0].startswith("Since you like")


@pytest.mark.slow
def test_lm_justifier_falls_back_to_the_template(lm: LanguageModel, products: Catalog) -> None:
    request = JustificationRequest(products["p-001"], "a cheap rugged phone", ["rugged", "budget"])
    justifier = LMJustifier(lm, RejectEverything(products))
    pieces: Sequence[str] = list(justifier.stream(request))
    assert "".join(pieces) == TemplateJustifier().justify(request)
    assert justifier.last_outcome == "fallback"
    assert len(justifier.raw(request).split()) > 3  # the LM did write something; it was rejected


@pytest.mark.slow
def test_justifications_written_together_match_those_written_alone(lm: LanguageModel, movies: Catalog) -> None:
    checker = GroundingChecker(movies)
    justifier = LMJustifier(lm, checker, max_new_tokens=24)  # short texts keep the test quick
    ids = list(movies.ids)[:3]
    requests = [JustificationRequest(movies[i], "Something tense please. I loved The Departed.",
                                     ["The Departed (2006)"]) for i in ids]
    together = ["".join(stream) for stream in justifier.stream_all(requests)]
    alone = [justifier.justify(request) for request in requests]
    assert len(together) == 3 and all(text.strip() for text in together)
    for text, request in zip(together, requests, strict=True):
        assert check(checker, text, request) == []
        assert text.startswith(("Since you like", "You may enjoy", TemplateJustifier().justify(request)[:10]))
    # Left padding changes floating-point sums slightly, so greedy texts may part late; they start alike.
    assert sum(a.split()[:6] == b.split()[:6] for a, b in zip(together, alone, strict=True)) >= 2
    # A reader that stops early releases the model: the next generation does not wait for the batch.
    streams = justifier.stream_all(requests)
    next(streams[0])
    for stream in streams:
        stream.close()
    assert justifier.justify(requests[0]) == alone[0]


@pytest.mark.slow
def test_the_shared_opening_of_a_batch_runs_once_and_changes_nothing(lm: LanguageModel, movies: Catalog) -> None:
    from chatbot import justify

    justifier = LMJustifier(lm, GroundingChecker(movies))
    requests = [JustificationRequest(movies[i], "Something tense please. I loved The Departed.",
                                     ["The Departed (2006)"]) for i in list(movies.ids)[:3]]
    _, prompts = justifier._prompts(requests)
    shared = justify._batch_inputs(lm.model, prompts, lm.tokenizer.pad_token_id, lm.device)
    # The system prompt and the user's words open every prompt; each item's record follows.
    assert shared["cache"].get_seq_length() > MIN_SHARED_PREFIX
    plain = justify._batch_inputs(lm.model, prompts[:1], lm.tokenizer.pad_token_id, lm.device)
    assert "cache" not in plain  # one row: nothing to share

    def texts(inputs: dict) -> list[str]:
        out = lm.model.generate(**inputs, max_new_tokens=12, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)
        return lm.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    with lm.lock:
        together = texts(shared)
        alone = [texts(justify._batch_inputs(lm.model, [ids], lm.tokenizer.pad_token_id, lm.device))[0]
                 for ids in prompts]
    assert together == alone and all(text.strip() for text in together)


def test_requests_that_wait_together_are_generated_together(lm: LanguageModel, movies: Catalog) -> None:
    import threading

    from retrieval import model_thread

    justifier = LMJustifier(lm, GroundingChecker(movies), max_new_tokens=16)
    ids = list(movies.ids)
    users = [[JustificationRequest(movies[i], "Something tense please.", ["The Departed (2006)"]) for i in ids[:2]],
             [JustificationRequest(movies[i], "A funny one for the family.", []) for i in ids[2:5]]]
    alone = [[justifier.raw(r) for r in requests] for requests in users]

    calls: list[int] = []
    generate = lm.model.generate

    def counted(**kwargs: object) -> object:
        calls.append(len(kwargs["input_ids"]))  # type: ignore[arg-type]
        return generate(**kwargs)

    busy, release = threading.Event(), threading.Event()
    blocker = model_thread.submit(lambda: (busy.set(), release.wait(30)))
    busy.wait(30)
    lm.model.generate = counted  # type: ignore[method-assign]
    try:
        # Both users ask while the model thread is busy: their rows wait together, then run as one batch.
        streams = [justifier.generate_all(requests) for requests in users]
        release.set()
        blocker.result(30)
        together = [["".join(stream).strip() for stream in user] for user in streams]
    finally:
        lm.model.generate = generate  # type: ignore[method-assign]
    assert calls == [5]
    # Each row writes what it wrote alone, after its own forced start.
    assert together == [[text.strip() for text in user] for user in alone]
    assert all(text for user in together for text in user)


def _scripted(start: str, *written: str) -> Iterator[str]:
    """What a generation yields: the forced start, then the model's pieces (here fixed, to test the check)."""
    yield start
    yield from written


@pytest.mark.parametrize(("written", "sentences", "expected", "outcome"), [
    # Every clause passes: the model's text goes out clause by clause, its delimiter with the next clause.
    ((" it is", " a tense", " crime film, with", " a great cast. It", " also"), 1,
     [" it is a tense crime film", ", with a great cast."], "lm"),
    # An invented director ends the sentence where the last good clause ended.
    ((" it is a crime film, directed by Steven Spielberg, with a twist. More",), 1,
     [" it is a crime film", "."], "partial"),
    # Nothing of the model's survives: the template finishes the sentence from the record.
    ((" it was directed by Steven Spielberg, and it is great.",), 1, ["REASON"], "fallback"),
    # A sentence cut by the token limit loses its unfinished clause.
    ((" it is a crime film, and", " it won"), 1, [" it is a crime film", "."], "partial"),
    # Two sentences: an unsupported one in between is dropped whole.
    ((" it is a crime film. It won an Oscar. It is tense.",), 2, [" it is a crime film.", " It is tense."],
     "partial"),
])
def test_lm_text_streams_clause_by_clause_once_grounded(movies: Catalog, written: tuple[str, ...], sentences: int,
                                                        expected: list[str], outcome: str) -> None:
    checker = GroundingChecker(movies)
    request = JustificationRequest(movies["176314"], "I want a tense crime film.", ["crime"])
    justifier = LMJustifier(None, checker, max_sentences=sentences)  # type: ignore[arg-type] - no LM runs
    start = answer_start(request)
    pieces = list(justifier.checked(request, _scripted(start, *written)))
    reason = TemplateJustifier().reason(request)
    assert pieces[0] == start  # sent before the model's first word
    assert pieces[1:] == [reason if piece == "REASON" else piece for piece in expected]
    assert justifier.last_outcome == outcome
    assert check(checker, "".join(pieces), request) == []
    assert reason.startswith(" of its genre (crime, action, drama), director (Michael Mann)")
    assert "Plot: A group of high-end professional thieves" in reason
