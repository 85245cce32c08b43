"""``recchat serve`` against a real Chroma server (``chroma run``): a conversation end to end over HTTP.

The products catalog is indexed into the Chroma server first (with the test session's embedding model), then
``recchat serve --no-lm`` runs in its own process with ``RECCHAT_CHROMA_URL`` pointing at the server. Nothing
may land in an embedded Chroma under the data directory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from retrieval.catalog import Catalog, load_catalog
from retrieval.settings import Settings
from tests.conftest import DATA
from tests.test_redis_sessions import ChromaServer, RecchatServer, index_catalog

pytestmark = pytest.mark.slow  # starts servers and loads the embedding model

BOOKS_CSV = (
    "id,title,genre,description\n"
    "b-1,The Silent Forest,mystery|nature,A ranger solves a disappearance deep in an old-growth forest.\n"
    "b-2,Stars Over Lisbon,romance|travel,Two strangers meet on a night tram in Lisbon.\n"
    "b-3,Engines of Dawn,sci-fi|adventure,A crew restarts a dead generation ship.\n"
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> Iterator[tuple[ChromaServer, RecchatServer]]:
    """A Chroma server with the products catalog, and recchat serving it (SQLite sessions)."""
    root = tmp_path_factory.mktemp("chroma-api")
    data_dir = root / "data"
    with ChromaServer(root / "chroma") as chroma:
        index_catalog(Settings(data_dir=data_dir, chroma_url=chroma.url), embedder, DATA / "products.csv", "products")
        server = RecchatServer(root / "recchat", data_dir=str(data_dir), chroma_url=chroma.url,
                               default_catalog="products")
        with server:
            yield chroma, server  # type: ignore[misc]


@pytest.fixture(scope="module")
def products() -> Catalog:
    return load_catalog(DATA / "products.csv", "products")


@pytest.fixture
def api(stack: tuple[ChromaServer, RecchatServer]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack[1].url, timeout=60) as client:
        yield client


def test_ready_with_the_chroma_server_as_vector_store(api: httpx.Client, stack: tuple[ChromaServer, RecchatServer]
                                                      ) -> None:
    ready = api.get("/readyz").json()
    assert ready["status"] == "ready" and ready["catalog"] == "products"
    assert ready["dependencies"] == {"session_store": "ok", "vector_store": "ok"}
    data_dir = Path(stack[1].settings["data_dir"])
    assert not (data_dir / "chroma").exists(), "nothing may go to an embedded Chroma"


def test_conversation_over_http_recommends_catalog_items(api: httpx.Client, products: Catalog) -> None:
    created = api.post("/v1/sessions", json={})
    assert created.status_code == 201, created.text
    session_id = created.json()["id"]
    assert created.json()["catalog"] == "products"

    first = api.post(f"/v1/sessions/{session_id}/messages", json={"text": "I want a rugged phone with a big battery"})
    assert first.status_code == 200, first.text
    recs = first.json()["recommendations"]
    assert recs and all(r["id"] in products and r["title"] == products[r["id"]].title for r in recs)
    assert "p-005" in [r["id"] for r in recs]  # the rugged 22000 mAh phone: found through Chroma's neighbours

    second = api.post(f"/v1/sessions/{session_id}/messages", json={"text": "what about headphones under $300?"})
    assert second.status_code == 200, second.text
    recs2 = second.json()["recommendations"]
    assert recs2 and all(r["id"] in products for r in recs2)
    assert {r["id"] for r in recs2}.isdisjoint({r["id"] for r in recs})

    state = api.get(f"/v1/sessions/{session_id}").json()
    assert [m["role"] for m in state["messages"]] == ["user", "assistant"] * 2
    assert [r["id"] for r in state["recommendations"]] == [r["id"] for r in recs + recs2]


def test_item_search_by_title_and_by_meaning(api: httpx.Client) -> None:
    by_title = api.get("/v1/catalogs/products/items", params={"q": "galaxy", "limit": 2}).json()
    assert [(m["id"], m["match"]) for m in by_title["items"]] == [("p-002", "title"), ("p-003", "title")]
    semantic = api.get("/v1/catalogs/products/items", params={"q": "something to block out plane noise"})
    assert semantic.status_code == 200, semantic.text
    top = [m["id"] for m in semantic.json()["items"][:3]]
    assert {"p-008", "p-009", "p-010"} & set(top)


def test_uploaded_catalog_is_indexed_in_the_chroma_server(api: httpx.Client,
                                                         stack: tuple[ChromaServer, RecchatServer]) -> None:
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    uploaded = api.post("/v1/catalogs/books", params={"format": "csv"}, content=BOOKS_CSV,
                        headers={"Content-Type": "text/csv"})
    assert uploaded.status_code == 201, uploaded.text
    assert uploaded.json()["embedded"] == 3
    client = chromadb.HttpClient(host="127.0.0.1", port=stack[0].port,
                                 settings=ChromaSettings(anonymized_telemetry=False))
    assert client.get_collection("books", embedding_function=None).count() == 3

    session_id = api.post("/v1/sessions", json={"catalog": "books"}).json()["id"]
    reply = api.post(f"/v1/sessions/{session_id}/messages", json={"text": "a mystery set in a forest"})
    assert reply.status_code == 200, reply.text
    assert reply.json()["recommendations"][0]["id"] == "b-1"
