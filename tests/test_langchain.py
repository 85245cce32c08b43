"""The LangChain integration with real parts: the products catalog indexed with the real embedding model, a real
`Chatbot` (no language model, to stay fast), and a real uvicorn server on 127.0.0.1 for the remote backends."""

# ruff: noqa: E402 - langchain-core is imported after the check that it is installed
from __future__ import annotations

import ast
import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("langchain_core", reason="the LangChain integration needs langchain-core")

from langchain_core.documents import Document
from langchain_core.messages import ToolMessage
from langchain_core.messages.tool import tool_call
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough
from langchain_core.utils.function_calling import convert_to_openai_tool

from chatbot.api import ApiConfig, create_app
from chatbot.integrations import langchain as integration
from chatbot.integrations.langchain import (
    CatalogRetriever,
    HttpRecommendationClient,
    RecchatError,
    RecommendationBackend,
    RecommendationClient,
    make_recommendation_tool,
)
from chatbot.service import Chatbot
from retrieval.catalog import Catalog, load_catalog
from retrieval.index import Library
from retrieval.settings import Settings
from tests.conftest import DATA, live_server

KEY = "k1"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "langchain.md"
RUGGED = {"p-001", "p-005"}


# -- in-process --------------------------------------------------------------------------------------


def test_retriever_in_process_returns_catalog_documents(library: Library, products: Catalog) -> None:
    retriever = CatalogRetriever(library=library, catalog="products", k=4)

    docs = retriever.invoke("rugged phone")  # the Runnable interface

    assert len(docs) == 4 and all(isinstance(d, Document) for d in docs)
    assert docs[0].metadata["id"] in RUGGED
    assert {d.metadata["id"] for d in docs[:2]} == RUGGED
    assert all(d.metadata["id"] in products for d in docs)
    top = products[docs[0].metadata["id"]]
    assert docs[0].page_content == top.document()
    assert docs[0].metadata["fields"] == top.display()
    assert docs[0].metadata["title"] == top.title and docs[0].metadata["catalog"] == "products"
    scores = [d.metadata["score"] for d in docs]
    assert scores == sorted(scores, reverse=True)
    assert json.loads(json.dumps([d.metadata for d in docs])) == [d.metadata for d in docs]
    headphones = retriever.batch(["rugged phone", "noise cancelling headphones"])[1]
    assert {d.metadata["id"] for d in headphones[:3]} == {"p-008", "p-009", "p-010"}
    assert asyncio.run(retriever.ainvoke("rugged phone"))[0].metadata["id"] == docs[0].metadata["id"]
    assert retriever.invoke("   ") == []


def test_retriever_options_are_checked(library: Library) -> None:
    with pytest.raises(ValueError, match="exactly one of library"):
        CatalogRetriever(catalog="products")
    with pytest.raises(ValueError, match="exactly one of library"):
        CatalogRetriever(library=library, base_url="http://127.0.0.1:1", catalog="products")
    with pytest.raises(ValueError, match="Extra inputs"):
        CatalogRetriever(library=library, catalog="products", top_k=3)  # a typo is an error, not ignored
    remote = CatalogRetriever(base_url="http://127.0.0.1:1", api_key="secret-key", catalog="products")
    assert "secret-key" not in repr(remote)


def test_tool_in_process_creates_then_continues_a_session(settings: Settings, library: Library,
                                                          products: Catalog) -> None:
    bot = Chatbot(settings, library=library, use_lm=False)
    client = RecommendationClient(bot, owner="support", catalog="products")
    assert isinstance(client, RecommendationBackend)
    tool = make_recommendation_tool(client)

    first = json.loads(tool.invoke({"message": "I need a rugged phone"}))

    session_id = first["session_id"]
    assert first["act"] == "recommend" and first["reply"]
    assert first["recommendations"], first
    assert all(r["id"] in products and r["title"] == products[r["id"]].title and r["justification"]
               for r in first["recommendations"])
    assert first["recommendations"][0]["id"] in RUGGED
    assert bot.get_session(session_id, owner="support").catalog == "products"

    again = json.loads(tool.invoke({"message": "something cheaper please", "session_id": session_id}))

    assert again["session_id"] == session_id
    state = bot.get_session(session_id)
    assert [m.role for m in state.messages] == ["user", "assistant", "user", "assistant"]
    assert state.messages[2].text == "something cheaper please"


def test_tool_reports_fixable_errors_to_the_model(settings: Settings, library: Library, products: Catalog) -> None:
    bot = Chatbot(settings, library=library, use_lm=False)
    tool = make_recommendation_tool(RecommendationClient(bot, catalog="products"))

    assert "omit session_id" in tool.invoke({"message": "a phone", "session_id": "no-such-session"})
    assert "message is empty" in tool.invoke({"message": "   "})
    assert bot.list_sessions() == []  # no session was started for an empty message
    too_long = tool.invoke({"message": "x" * (settings.max_message_chars + 1)})
    assert f"the limit is {settings.max_message_chars}" in too_long

    # As an agent calls it: a tool call in, a ToolMessage out, marked as an error when the call must change.
    bad = tool.invoke(tool_call(name=tool.name, args={"message": "hi", "session_id": "nope"}, id="call-1"))
    assert isinstance(bad, ToolMessage) and bad.status == "error" and bad.tool_call_id == "call-1"
    good = tool.invoke(tool_call(name=tool.name, args={"message": "a rugged phone"}, id="call-2"))
    assert good.status == "success" and json.loads(good.content)["recommendations"]


def test_tool_schema_is_what_a_chat_model_is_bound_to(settings: Settings, library: Library) -> None:
    tool = make_recommendation_tool(RecommendationClient(Chatbot(settings, library=library, use_lm=False)))

    function = convert_to_openai_tool(tool)["function"]

    assert function["name"] == "recommend_items"
    assert "session_id" in function["description"]
    assert function["parameters"]["required"] == ["message"]
    assert set(function["parameters"]["properties"]) == {"message", "session_id"}


# -- remote: a real server -------------------------------------------------------------------------


def _wait_ready(url: str, deadline: float) -> None:
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url}/readyz did not answer 200 within 60 s")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> Iterator[tuple[str, Library]]:
    """A real API server over the products catalog (key ``k1``, a client), and its library."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("langchain") / "data", default_catalog="products")
    library = Library(settings, embedder=embedder, log=lambda message: None)
    library.add(load_catalog(DATA / "products.csv", "products"), progress=False)
    app = create_app(lambda: Chatbot(settings, library=library, use_lm=False), settings,
                     config=ApiConfig(api_keys=f"{KEY}:client"), ui=False)
    with live_server(app, wait_ready=False) as url:
        _wait_ready(url, time.monotonic() + 60)  # 503 not_ready until the warm-up is done
        yield url, library


def test_retriever_remote_matches_in_process(remote: tuple[str, Library]) -> None:
    url, library = remote
    retriever = CatalogRetriever(base_url=url, api_key=KEY, catalog="products", k=4)

    docs = retriever.invoke("rugged phone")

    catalog = library.catalog("products")
    assert docs[0].metadata["id"] in RUGGED
    assert all(d.metadata["id"] in catalog and d.metadata["match"] == "semantic" for d in docs)
    local = CatalogRetriever(library=library, catalog="products", k=4).invoke("rugged phone")
    assert [(d.id, d.page_content, d.metadata["fields"]) for d in docs] == \
        [(d.id, d.page_content, d.metadata["fields"]) for d in local]
    assert [d.metadata["id"] for d in asyncio.run(retriever.ainvoke("rugged phone"))] == \
        [d.metadata["id"] for d in docs]
    titled = retriever.invoke("Kindle")  # the API lists title matches first, without a score
    assert titled[0].metadata["id"] == "p-012"
    assert titled[0].metadata["match"] == "title" and titled[0].metadata["score"] is None


def test_tool_remote_creates_then_continues_a_session(remote: tuple[str, Library]) -> None:
    url, library = remote
    catalog = library.catalog("products")
    with HttpRecommendationClient(url, KEY, catalog="products") as client:
        assert isinstance(client, RecommendationBackend)
        tool = make_recommendation_tool(client)

        first = json.loads(tool.invoke({"message": "I need a rugged phone"}))
        session_id = first["session_id"]
        assert first["recommendations"]
        assert all(r["id"] in catalog and r["justification"] for r in first["recommendations"])
        assert first["recommendations"][0]["id"] in RUGGED

        again = json.loads(tool.invoke({"message": "something cheaper please", "session_id": session_id}))
        assert again["session_id"] == session_id
        assert "omit session_id" in tool.invoke({"message": "a phone", "session_id": "no-such-session"})

    session = httpx.get(f"{url}/v1/sessions/{session_id}", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert session["catalog"] == "products"
    assert [m["role"] for m in session["messages"]] == ["user", "assistant", "user", "assistant"]


def test_remote_wrong_key_raises_a_clear_error(remote: tuple[str, Library]) -> None:
    url, _ = remote
    retriever = CatalogRetriever(base_url=url, api_key="wrong-key", catalog="products")
    with pytest.raises(RecchatError, match="401 unauthorized: invalid API key") as raised:
        retriever.invoke("rugged phone")
    assert raised.value.status == 401 and raised.value.code == "unauthorized"
    with pytest.raises(RecchatError, match="invalid API key"):
        asyncio.run(retriever.ainvoke("rugged phone"))

    with HttpRecommendationClient(url, "wrong-key", catalog="products") as client:
        tool = make_recommendation_tool(client)
        with pytest.raises(RecchatError, match="invalid API key"):  # raised, not handed to the model
            tool.invoke({"message": "I need a rugged phone"})

    with pytest.raises(RecchatError, match="404 catalog_not_found"):
        CatalogRetriever(base_url=url, api_key=KEY, catalog="nope").invoke("phone")


def test_remote_unreachable_server_raises_a_clear_error() -> None:
    retriever = CatalogRetriever(base_url="http://127.0.0.1:9", catalog="products", timeout=5)
    with pytest.raises(RecchatError, match="unreachable: cannot reach http://127.0.0.1:9") as raised:
        retriever.invoke("rugged phone")
    assert raised.value.status is None


# -- docs ------------------------------------------------------------------------------------------


def test_docs_examples_use_the_real_api(remote: tuple[str, Library]) -> None:
    """docs/langchain.md: every example parses and imports names that exist; its chain works up to the model."""
    text = DOCS.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) >= 4
    for block in blocks:
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom) and node.module == "chatbot.integrations.langchain":
                for alias in node.names:
                    assert hasattr(integration, alias.name), alias.name
    assert 'tool.invoke({"message"' in text and ".bind_tools([tool])" in text

    url, _ = remote
    retriever = CatalogRetriever(base_url=url, api_key=KEY, catalog="products", k=3)

    def as_context(docs: list[Document]) -> str:
        return "\n".join(f"[{d.metadata['id']}] {d.page_content}" for d in docs)

    prompt = ChatPromptTemplate.from_messages([("system", "Items:\n{context}"), ("human", "{question}")])
    chain = {"context": retriever | as_context, "question": RunnablePassthrough()} | prompt
    messages = chain.invoke("rugged phone").to_messages()
    assert messages[1].content == "rugged phone"
    assert "[p-005]" in messages[0].content and "[p-001]" in messages[0].content
