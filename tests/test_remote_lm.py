"""The LM behind an OpenAI-compatible server: `chatbot.lm_server` over the real model, `chatbot.remote_lm` as client.

The server runs on a loopback port (uvicorn in a thread) over the same in-process model that the
in-process ranker and justifier use here, so the remote results can be compared with theirs exactly.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from typer.testing import CliRunner

from chatbot.grounding import GroundingChecker
from chatbot.justify import JustificationRequest, LMJustifier, TemplateJustifier
from chatbot.lm import LanguageModel
from chatbot.lm_server import create_lm_app
from chatbot.ranking import LMRanker, candidate_text, ranking_prompt
from chatbot.remote_lm import RemoteJustifier, RemoteLanguageModel
from retrieval.catalog import Catalog, Item, load_catalog
from retrieval.errors import LanguageModelUnavailable
from retrieval.settings import Settings
from tests.conftest import DATA, live_server

pytestmark = pytest.mark.slow

KEY = "test-lm-key-5b1e"
CONTEXT = "I want a tense crime thriller with a heist. I liked Heat (1995)."


@pytest.fixture(scope="module")
def lm_settings(converted_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    # float32: the server's log-probabilities are compared with the in-process ones to 2e-4.
    return Settings(data_dir=tmp_path_factory.mktemp("remote-lm"), lm_model=str(converted_lm), device="cpu",
                    lm_dtype="float32")


@pytest.fixture(scope="module")
def lm(lm_settings: Settings) -> LanguageModel:
    """The one in-process model: served by the test server and used by the in-process twins."""
    model = LanguageModel(lm_settings)
    model.model  # noqa: B018 - load once for the module
    return model


@pytest.fixture(scope="module")
def lm_url(lm: LanguageModel) -> Iterator[str]:
    with live_server(create_lm_app(lm, "recchat"), wait_ready=False) as url:
        yield url


@pytest.fixture(scope="module")
def remote(lm_settings: Settings, lm_url: str) -> Iterator[RemoteLanguageModel]:
    client = RemoteLanguageModel(Settings(**{**lm_settings.model_dump(), "lm_url": lm_url, "lm_timeout_s": 60}))
    yield client
    client.close()


@pytest.fixture(scope="module")
def movies() -> Catalog:
    return load_catalog(DATA / "movies_small.jsonl", "movies_small")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def completions(url: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/completions", json={"model": "recchat", "temperature": 0, **body}, headers=headers,
                      timeout=60)


def reference_logprobs(lm: LanguageModel, text: str) -> list[float]:
    """log p(token t | tokens < t) for t >= 1, from one plain forward pass over ``text`` alone."""
    import torch

    ids = lm.tokenizer(text)["input_ids"]
    with lm.lock, torch.inference_mode():
        logits = lm.model(input_ids=torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0].tolist()


# -- the server: wire format -------------------------------------------------------------------------------


def test_models_lists_the_served_model_and_a_key_is_enforced(lm: LanguageModel, lm_settings: Settings) -> None:
    with live_server(create_lm_app(lm, "recchat-lora", api_key=KEY), wait_ready=False) as url:
        assert httpx.get(f"{url}/health").status_code == 200  # liveness needs no key
        refused = httpx.get(f"{url}/v1/models")
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        listed = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()
        assert listed["object"] == "list" and [m["id"] for m in listed["data"]] == ["recchat-lora"]

        def client(**changes: Any) -> RemoteLanguageModel:
            return RemoteLanguageModel(Settings(**{**lm_settings.model_dump(), "lm_url": url,
                                                   "lm_served_model": "recchat-lora", **changes}))

        client(lm_api_key=KEY).check()
        client(lm_api_key=KEY, lm_url=f"{url}/v1").check()  # the base URL as OpenAI clients write it works too
        with pytest.raises(LanguageModelUnavailable, match="answered 401") as wrong_key:
            client(lm_api_key="not-the-key").check()
        assert "not-the-key" not in str(wrong_key.value) and KEY not in repr(client(lm_api_key=KEY))
        with pytest.raises(LanguageModelUnavailable, match="does not serve model 'recchat'"):
            client(lm_api_key=KEY, lm_served_model="recchat").check()


def test_echo_returns_prompt_logprobs_equal_to_a_forward_pass(lm: LanguageModel, lm_url: str,
                                                              movies: Catalog) -> None:
    prompt = lm.tokenizer.apply_chat_template(ranking_prompt(CONTEXT), add_generation_prompt=True, tokenize=False)
    shared = [prompt + candidate_text(movies.items[k]) for k in (0, 1)]  # a shared prefix: computed once
    unrelated = ["The quick brown fox jumps over the lazy dog.", "Hello world"]  # no shared prefix: a padded batch
    for prompts in (shared, unrelated):
        response = completions(lm_url, {"prompt": prompts, "max_tokens": 0, "echo": True, "logprobs": 2})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["object"] == "text_completion" and body["model"] == "recchat" and body["id"].startswith("cmpl-")
        assert isinstance(body["created"], int)
        assert sorted(c["index"] for c in body["choices"]) == [0, 1]
        n_tokens = 0
        for choice in body["choices"]:
            text = prompts[choice["index"]]
            assert choice["text"] == text and choice["finish_reason"] == "length"
            lp = choice["logprobs"]
            tokens, values, offsets, tops = lp["tokens"], lp["token_logprobs"], lp["text_offset"], lp["top_logprobs"]
            assert len(tokens) == len(values) == len(offsets) == len(tops) >= 2
            assert values[0] is None and tops[0] is None  # nothing precedes the first token
            assert "".join(tokens) == text
            assert all(text[o:o + len(t)] == t for t, o in zip(tokens, offsets, strict=True))
            assert values[1:] == pytest.approx(reference_logprobs(lm, text), abs=2e-4)
            for token, value, top in zip(tokens[1:], values[1:], tops[1:], strict=True):
                assert 2 <= len(top) <= 3 and top[token] == value  # the 2 best, plus the actual token
                assert max(top.values()) >= value
            n_tokens += len(tokens)
        assert body["usage"] == {"prompt_tokens": n_tokens, "completion_tokens": 0, "total_tokens": n_tokens}


def test_the_server_serves_the_configured_lora_adapter(lm: LanguageModel, lm_settings: Settings,
                                                       tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    # A LoRA adapter with non-zero weights (peft's default init would be a no-op), saved as peft does.
    base = LanguageModel(lm_settings.model_copy(update={"adapter": "none"}))
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base.model, config).save_pretrained(tmp_path / "adapter")
    tuned = LanguageModel(lm_settings.model_copy(update={"adapter": str(tmp_path / "adapter")}))
    text = lm.tokenizer.apply_chat_template(ranking_prompt(CONTEXT), add_generation_prompt=True, tokenize=False)
    prompts = [text + "Heat: action, crime", text + "Toy Story: animation"]
    with live_server(create_lm_app(tuned, "recchat"), wait_ready=False) as url:
        body = completions(url, {"prompt": prompts, "max_tokens": 0, "echo": True, "logprobs": 0}).json()
    assert tuned.adapter_path == str(tmp_path / "adapter")
    for choice in body["choices"]:
        served = choice["logprobs"]["token_logprobs"][1:]
        assert served == pytest.approx(reference_logprobs(tuned, prompts[choice["index"]]), abs=2e-4)
        assert served != pytest.approx(reference_logprobs(lm, prompts[choice["index"]]), abs=1e-2)


def test_generation_stop_and_streaming(lm_url: str) -> None:
    prompt = "<|im_start|>user\nCount from one to ten in words.<|im_end|>\n<|im_start|>assistant\n"
    whole = completions(lm_url, {"prompt": prompt, "max_tokens": 8}).json()
    choice = whole["choices"][0]
    assert choice["text"].strip() and choice["finish_reason"] in ("length", "stop") and choice["logprobs"] is None
    assert whole["usage"]["completion_tokens"] <= 8

    with httpx.stream("POST", f"{lm_url}/v1/completions", timeout=60,
                      json={"model": "recchat", "prompt": prompt, "max_tokens": 8, "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert all(c["object"] == "text_completion" and c["choices"][0]["index"] == 0 for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == choice["text"]  # greedy: the same text
    assert chunks[-1]["choices"][0]["finish_reason"] == choice["finish_reason"]

    first_word = choice["text"].split()[0]
    stopped = completions(lm_url, {"prompt": prompt, "max_tokens": 8, "stop": [first_word], "echo": True})
    assert stopped.json()["choices"][0] | {"logprobs": None} == {
        "index": 0, "text": prompt + choice["text"][: choice["text"].index(first_word)], "logprobs": None,
        "finish_reason": "stop"}


def test_bad_requests_get_openai_errors(lm_url: str) -> None:
    def error(response: httpx.Response, status: int) -> dict[str, Any]:
        assert response.status_code == status, response.text
        problem = response.json()["error"]
        assert set(problem) == {"message", "type", "param", "code"} and problem["message"]
        return problem

    assert error(completions(lm_url, {"prompt": "Hi", "temperature": 0.7}), 400)["param"] == "temperature"
    assert "best_of" in error(completions(lm_url, {"prompt": "Hi", "best_of": 2}), 400)["message"]
    assert error(completions(lm_url, {"prompt": "Hi", "model": "gpt-4"}), 404)["code"] == "model_not_found"
    assert error(completions(lm_url, {"prompt": "Hi", "max_tokens": 100_000}), 400)["param"] == "max_tokens"
    assert error(completions(lm_url, {"prompt": ["a", "b"], "stream": True}), 400)["param"] == "stream"
    assert error(completions(lm_url, {"prompt": []}), 400)["param"] == "prompt"
    assert error(completions(lm_url, {"prompt": "word " * 30_000}), 400)["code"] == "context_length_exceeded"
    assert error(completions(lm_url, {"prompt": "x" * 2_000_000}), 413)["code"] == "request_too_large"
    not_json = httpx.post(f"{lm_url}/v1/completions", content=b"{nope", timeout=10)
    assert error(not_json, 400)["type"] == "invalid_request_error"


# -- the client: ranking and justification ----------------------------------------------------------------


def test_remote_ranker_agrees_with_the_in_process_ranker(lm: LanguageModel, remote: RemoteLanguageModel,
                                                         movies: Catalog) -> None:
    items = movies.items[:20]
    requests: list[httpx.Request] = []
    remote._client.event_hooks["request"].append(requests.append)
    try:
        remote_scores = remote.ranker().score(CONTEXT, items)
    finally:
        remote._client.event_hooks["request"].remove(requests.append)
    local_scores = LMRanker(lm).score(CONTEXT, items)
    assert len(requests) == 1  # every candidate in one request
    assert remote_scores == pytest.approx(local_scores, abs=1e-3)
    order = sorted(range(len(items)), key=lambda k: -local_scores[k])
    assert sorted(range(len(items)), key=lambda k: -remote_scores[k])[:5] == order[:5]
    assert remote.ranker().score(CONTEXT, []) == []
    # An over-long context is cut to its recent end as in process, so the prompts (and scores) still agree.
    long_context = "I like old westerns. " * 150 + "Now I want a zombie film."
    ranker = remote.ranker()
    assert remote.count_tokens(ranker.prompt_text(long_context)) <= ranker.max_context_tokens
    assert ranker.prompt_text(long_context) == lm.tokenizer.decode(LMRanker(lm).prompt_ids(long_context))


def test_ranker_reads_choices_by_index_and_survives_offset_drift(remote: RemoteLanguageModel,
                                                                  movies: Catalog) -> None:
    ranker = remote.ranker()
    prompt = ranker.prompt_text(CONTEXT)
    texts = [candidate_text(item) for item in movies.items[:3]]
    own = [remote.count_tokens(text) for text in texts]
    answer = remote.complete({"prompt": [prompt + t for t in texts], "max_tokens": 0, "echo": True, "logprobs": 1,
                              "temperature": 0}, "test")
    scores = ranker.scores_from_answer(answer, len(prompt), own)
    answer["choices"].reverse()  # servers may answer in any order
    assert ranker.scores_from_answer(answer, len(prompt), own) == scores
    # vLLM's offsets come from per-token detokenisation: a character split across tokens in the user's
    # words shifts them. The candidate's tokens are then found by counting from the end.
    for choice in answer["choices"]:
        choice["logprobs"]["text_offset"] = [o + 2 if o > 40 else o for o in choice["logprobs"]["text_offset"]]
    assert ranker.scores_from_answer(answer, len(prompt), own) == scores
    with pytest.raises(ValueError):
        ranker.scores_from_answer({"choices": answer["choices"][:2]}, len(prompt), own)


def test_remote_justifier_writes_what_the_in_process_one_writes(lm: LanguageModel, remote: RemoteLanguageModel,
                                                                movies: Catalog) -> None:
    checker = GroundingChecker(movies)
    request = JustificationRequest(movies["176314"], "I want a tense crime film. I loved The Departed.",
                                   ["The Departed (2006)", "crime"])
    local = LMJustifier(lm, checker, max_new_tokens=24)
    justifier = remote.justifier(checker, TemplateJustifier(), max_new_tokens=24)
    assert isinstance(justifier, RemoteJustifier)
    pieces = list(justifier.stream(request))
    text = "".join(pieces)
    assert text == local.justify(request) and justifier.last_outcome == local.last_outcome
    assert checker.unsupported_claims(text, request.item, " ".join([request.user_text, *request.user_likes])) == []
    if justifier.last_outcome != "fallback":
        assert pieces[0].startswith("Since you like")


class RejectEverything(GroundingChecker):
    """A checker that finds every sentence unsupported, to force the fallback."""

    def unsupported_claims(self, text: str, item: Item, user_text: str = "") -> list[str]:
        return [text]


def test_remote_justifier_falls_back_to_the_template(remote: RemoteLanguageModel, movies: Catalog) -> None:
    request = JustificationRequest(movies["176314"], "a heist film", ["crime"])
    justifier = remote.justifier(RejectEverything(movies), max_new_tokens=12)
    assert justifier.justify(request) == TemplateJustifier().justify(request)
    assert justifier.last_outcome == "fallback"


def test_closing_the_stream_stops_the_generation_on_the_server(lm: LanguageModel,
                                                               remote: RemoteLanguageModel) -> None:
    prompt = "<|im_start|>user\nWrite a very long story about a dragon.<|im_end|>\n<|im_start|>assistant\n"
    pieces = remote.stream_text(prompt, max_tokens=500)
    assert next(pieces)
    assert lm.lock.locked()  # the server's generation thread holds it
    started = time.monotonic()
    pieces.close()  # type: ignore[attr-defined]
    # The generation holds the model lock; 500 tokens would keep it for half a minute or more.
    assert lm.lock.acquire(timeout=10), "the server kept generating after the client went away"
    lm.lock.release()
    assert time.monotonic() - started < 10


# -- the service over the LM server ------------------------------------------------------------------------


def test_chatbot_recommends_and_justifies_through_the_lm_server(lm_settings: Settings, lm_url: str, library: Any,
                                                                movies_small: Catalog) -> None:
    from chatbot.service import Chatbot

    settings = Settings(**{**lm_settings.model_dump(), "data_dir": library.settings.data_dir, "lm_url": lm_url,
                           "default_catalog": "movies_small", "rank_candidates": 8})
    bot = Chatbot(settings, library=library)
    try:
        assert bot.remote is not None and bot._lm is None  # no model in this process
        tools = bot.dialogue.tools("movies_small")
        assert isinstance(tools.justifier, RemoteJustifier)
        tools.justifier.max_new_tokens = 16  # keeps the test short; the default is LMJustifier's
        bot.warm_up()
        assert bot.check_dependencies()["lm"] == "ok"
        session = bot.create_session("movies_small")
        reply = bot.send(session.id, "I want a tense crime thriller about a heist, like Heat.")
        assert reply.act == "recommend" and reply.recommendations
        for item in reply.recommendations:
            assert item.id in movies_small and item.justification.strip()
        assert bot._lm is None
    finally:
        bot.close()


def test_lm_server_down_is_lm_unavailable_quickly(lm_settings: Settings, movies: Catalog) -> None:
    remote = RemoteLanguageModel(Settings(**{**lm_settings.model_dump(), "lm_url": f"http://127.0.0.1:{free_port()}"}))
    _ = remote.tokenizer
    started = time.monotonic()
    with pytest.raises(LanguageModelUnavailable, match="failed"):
        remote.check()
    with pytest.raises(LanguageModelUnavailable):
        remote.ranker().score(CONTEXT, movies.items[:3])
    with pytest.raises(LanguageModelUnavailable):
        remote.justifier(GroundingChecker(movies)).justify(JustificationRequest(movies.items[0]))
    assert time.monotonic() - started < 3


def start_lm_server(lm: LanguageModel, port: int) -> Callable[[], None]:
    """The LM server on a given loopback port (uvicorn in a thread); returns its stop function."""
    server = uvicorn.Server(uvicorn.Config(create_lm_app(lm, "recchat"), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn-lm", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the LM server did not start"
        time.sleep(0.02)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=30)

    return stop


def test_api_answers_503_while_the_lm_server_is_down_and_recovers(lm: LanguageModel, lm_settings: Settings,
                                                                 library: Any, movies_small: Catalog) -> None:
    from chatbot.api import ApiConfig, create_app
    from chatbot.service import Chatbot

    port = free_port()
    settings = Settings(**{**lm_settings.model_dump(), "data_dir": library.settings.data_dir,
                           "lm_url": f"http://127.0.0.1:{port}", "default_catalog": "movies_small",
                           "rank_candidates": 8})
    app = create_app(lambda: Chatbot(settings, library=library), settings, config=ApiConfig(), ui=False)
    stop: Callable[[], None] | None = start_lm_server(lm, port)  # up for the warm-up: the API waits for it
    try:
        with live_server(app) as url, httpx.Client(base_url=url, timeout=60) as c:
            assert c.get("/readyz").json()["dependencies"]["lm"] == "ok"
            session = c.post("/v1/sessions", json={"catalog": "movies_small"}).json()["id"]
            stop()  # the LM server goes away; the API stays up
            stop = None
            reply = c.post(f"/v1/sessions/{session}/messages",
                           json={"text": "I want a tense crime thriller about a heist, like Heat."})
            assert reply.status_code == 503 and reply.json()["error"]["code"] == "lm_unavailable"
            assert reply.headers["Retry-After"]
            ready = c.get("/readyz")
            assert ready.status_code == 503 and ready.json()["dependencies"]["lm"] != "ok"
            stop = start_lm_server(lm, port)  # back on the same address: the API recovers by itself
            assert c.get("/readyz").status_code == 200
    finally:
        if stop is not None:
            stop()


def test_lm_serve_refuses_other_interfaces_without_a_key() -> None:
    import typer

    from chatbot import lm_serve_cli

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    lm_serve_cli.register(app)
    app.command("unused")(lambda: None)  # with two commands typer keeps the subcommand name
    result = CliRunner().invoke(app, ["lm-serve", "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "RECCHAT_LM_API_KEY" in result.output
