"""LangChain integration: a catalog retriever and a recommendation tool for agents, in-process or over HTTP.

Needs only ``langchain-core``. Each part has two backends behind one small interface: in-process (a `Library`
or a `Chatbot` in this Python process) and remote (the HTTP API of ``recchat serve``, with an API key).

    from chatbot.integrations.langchain import (CatalogRetriever, HttpRecommendationClient,
                                                make_recommendation_tool)

    retriever = CatalogRetriever(base_url="http://127.0.0.1:7860", api_key="KEY", catalog="products", k=5)
    docs = retriever.invoke("a rugged phone")            # list[Document], best first

    tool = make_recommendation_tool(HttpRecommendationClient("http://127.0.0.1:7860", "KEY", catalog="products"))
    tool.invoke({"message": "I need a sturdy phone under $300"})   # JSON: session_id, reply, recommendations

Failures raise `RecchatError` with the API's stable error code (``unauthorized``, ``not_ready``...). The tool
turns the errors a model can fix itself (an unknown session id, an empty or too long message) into its output
instead, so an agent sees them and tries again.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol, Self, runtime_checkable
from urllib.parse import quote

import httpx
from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.tools import BaseTool, StructuredTool, ToolException
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from chatbot.service import Chatbot
from retrieval.candidates import Preferences
from retrieval.catalog import Item
from retrieval.index import Library

__all__ = [
    "CatalogRetriever",
    "CatalogSearch",
    "HttpCatalogSearch",
    "HttpRecommendationClient",
    "LibraryCatalogSearch",
    "RecchatError",
    "RecommendationBackend",
    "RecommendationClient",
    "RecommendationRequest",
    "item_document",
    "make_recommendation_tool",
]

DEFAULT_TOOL_NAME = "recommend_items"
DEFAULT_TOOL_DESCRIPTION = (
    "Recommend items from the catalog for a customer. Pass the customer's request in their own words as "
    "`message` (wishes, items they like or dislike, budget, feedback on earlier suggestions). The first call "
    "starts a conversation and returns its `session_id`; pass that `session_id` on every later call for the "
    "same customer so earlier wishes and feedback are remembered. Returns JSON with `session_id`, `reply` "
    "(what recchat answers), `act` and `recommendations` (id, title, justification)."
)
# Error codes a model can fix by calling the tool differently: reported to it as the tool's output.
_AGENT_FIXABLE = frozenset({"session_not_found", "empty_message", "message_too_long", "invalid_message",
                            "invalid_request"})


class RecchatError(RuntimeError):
    """A recchat call failed: ``status`` (HTTP status; None when the server was not reached), ``code`` (the
    API's stable error code, e.g. ``unauthorized``, ``session_not_found``, ``not_ready``) and ``message``."""

    def __init__(self, status: int | None, code: str, message: str) -> None:
        where = f" {status}" if status is not None else ""
        super().__init__(f"recchat{where} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message

    @classmethod
    def from_service(cls, exc: Exception) -> RecchatError | None:
        """The error the HTTP API would answer for a `Chatbot` exception, or None for an unexpected one."""
        from chatbot.api import api_error_for  # the same codes in-process as over HTTP

        error = api_error_for(exc)
        return None if error is None else cls(error.status_code, error.code, error.message)


# -- HTTP ------------------------------------------------------------------------------------------


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _checked(response: httpx.Response) -> Any:
    """The JSON body of a successful response; `RecchatError` with the API's error code otherwise."""
    if response.is_success:
        return response.json()
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message = f"http_{response.status_code}", response.text[:200] or response.reason_phrase
    raise RecchatError(response.status_code, code, message)


def _unreachable(base_url: str, exc: httpx.TransportError) -> RecchatError:
    return RecchatError(None, "unreachable", f"cannot reach {base_url}: {type(exc).__name__}: {exc}")


# -- documents -------------------------------------------------------------------------------------


def item_document(item: Item, catalog: str, score: float | None, match: str) -> Document:
    """An item as a LangChain `Document`: its embedding text as ``page_content``; JSON-serialisable metadata
    ``id``, ``title``, ``catalog``, ``score`` (None for a title match), ``match`` (``semantic`` or ``title``)
    and ``fields`` (the item's display fields, as the HTTP API shows them)."""
    metadata = {"id": item.id, "title": item.title, "catalog": catalog, "score": score, "match": match,
                "fields": item.display()}
    return Document(page_content=item.document(), metadata=metadata, id=item.id)


def _item_from_display(fields: dict[str, Any]) -> Item:
    """The inverse of `Item.display` (id, title, then numbers, lists and text fields, in order)."""
    numbers: dict[str, float] = {}
    lists: dict[str, list[str]] = {}
    text: dict[str, str] = {}
    for name, value in fields.items():
        if name in ("id", "title"):
            continue
        if isinstance(value, bool):
            text[name] = str(value)
        elif isinstance(value, int | float):
            numbers[name] = float(value)
        elif isinstance(value, list):
            lists[name] = [str(v) for v in value]
        elif value is not None:
            text[name] = str(value)
    return Item(id=str(fields["id"]), title=str(fields["title"]), text=text, lists=lists, numbers=numbers)


# -- catalog search: one interface, two backends ---------------------------------------------------


@runtime_checkable
class CatalogSearch(Protocol):
    """Catalog items for a query, best first, as `Document`s (see `item_document`)."""

    def search(self, query: str, k: int) -> list[Document]: ...

    async def asearch(self, query: str, k: int) -> list[Document]: ...


class LibraryCatalogSearch:
    """In-process search: the `CandidateGenerator` the chatbot uses, over a catalog of a `Library`."""

    def __init__(self, library: Library, catalog: str) -> None:
        self.library = library
        self.catalog = catalog

    def search(self, query: str, k: int) -> list[Document]:
        """The ``k`` best candidates for ``query`` (the text as both the wishes and the latest request)."""
        if not query.strip():
            return []
        generator = self.library.generator(self.catalog)
        catalog = generator.catalog
        candidates = generator.candidates(Preferences(text=query, recent=query), k)
        return [item_document(catalog[c.item_id], catalog.name, round(c.score, 4), "semantic") for c in candidates]

    async def asearch(self, query: str, k: int) -> list[Document]:
        """`search` in a worker thread (the embedding model and Chroma block)."""
        return await asyncio.to_thread(self.search, query, k)


class HttpCatalogSearch:
    """Remote search: ``GET /v1/catalogs/{catalog}/items?q=&limit=`` of the recchat HTTP API.

    The API lists items whose title contains the query first (``match="title"``, no score), then semantic
    matches; it accepts queries of at most 200 characters (longer ones fail with ``invalid_request``).
    """

    def __init__(self, base_url: str, api_key: str | None, catalog: str, timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.catalog = catalog
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"HttpCatalogSearch(base_url={self.base_url!r}, catalog={self.catalog!r})"

    @property
    def url(self) -> str:
        return f"{self.base_url}/v1/catalogs/{quote(self.catalog, safe='')}/items"

    def search(self, query: str, k: int) -> list[Document]:
        """The first ``k`` matches for ``query``."""
        if not query.strip():
            return []
        try:
            with httpx.Client(timeout=self.timeout, headers=_headers(self._api_key)) as client:
                response = client.get(self.url, params={"q": query, "limit": k})
        except httpx.TransportError as exc:
            raise _unreachable(self.base_url, exc) from exc
        return self._documents(_checked(response))

    async def asearch(self, query: str, k: int) -> list[Document]:
        """`search` with an async HTTP client."""
        if not query.strip():
            return []
        try:
            async with httpx.AsyncClient(timeout=self.timeout, headers=_headers(self._api_key)) as client:
                response = await client.get(self.url, params={"q": query, "limit": k})
        except httpx.TransportError as exc:
            raise _unreachable(self.base_url, exc) from exc
        return self._documents(_checked(response))

    @staticmethod
    def _documents(body: dict[str, Any]) -> list[Document]:
        return [item_document(_item_from_display(match["fields"]), body["catalog"], match.get("score"),
                              match["match"]) for match in body["items"]]


class CatalogRetriever(BaseRetriever):
    """A LangChain retriever over a recchat catalog: in-process (``library=``) or remote (``base_url=``).

    Returns up to ``k`` `Document`s, best first; ``page_content`` is the item's text (title, list fields,
    text fields) and ``metadata`` holds ``id``, ``title``, ``catalog``, ``score``, ``match`` and ``fields``.

    >>> retriever = CatalogRetriever(library=library, catalog="products", k=3)  # doctest: +SKIP
    >>> remote = CatalogRetriever(base_url="http://127.0.0.1:7860", api_key="KEY", catalog="products")  # doctest: +SKIP
    >>> [d.metadata["id"] for d in retriever.invoke("rugged phone")]  # doctest: +SKIP
    ['p-005', 'p-001', 'p-002']
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    catalog: str = Field(min_length=1, description="Name of the catalog to search.")
    k: int = Field(default=5, ge=1, le=100, description="Number of documents to return.")
    library: Library | None = Field(default=None, description="In-process backend: the library holding the catalog.")
    base_url: str | None = Field(default=None, description="Remote backend: the recchat server, e.g. http://host:7860.")
    api_key: SecretStr | None = Field(default=None, description="Remote backend: API key; None when auth is off.")
    timeout: float = Field(default=60.0, gt=0, description="Remote backend: seconds per request.")

    @model_validator(mode="after")
    def _one_backend(self) -> Self:
        if (self.library is None) == (self.base_url is None):
            raise ValueError("give exactly one of library= (in-process) and base_url= (a remote recchat server)")
        if self.library is not None and self.api_key is not None:
            raise ValueError("api_key is only for a remote server (base_url=)")
        return self

    @property
    def backend(self) -> CatalogSearch:
        """The search backend the fields describe."""
        if self.library is not None:
            return LibraryCatalogSearch(self.library, self.catalog)
        assert self.base_url is not None
        key = self.api_key.get_secret_value() if self.api_key is not None else None
        return HttpCatalogSearch(self.base_url, key, self.catalog, self.timeout)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        return self.backend.search(query, self.k)

    async def _aget_relevant_documents(self, query: str, *,
                                       run_manager: AsyncCallbackManagerForRetrieverRun) -> list[Document]:
        return await self.backend.asearch(query, self.k)


# -- recommendations: one interface, two backends --------------------------------------------------


@runtime_checkable
class RecommendationBackend(Protocol):
    """Conversations with recchat: start one, send a message, get the reply.

    ``send`` returns the reply as the HTTP API shapes it (``ReplyPublic``): ``session_id``, ``reply``, ``act``
    and ``recommendations`` (``id``, ``title``, ``score``, ``justification``, ``fields``).
    """

    def create_session(self, catalog: str | None = None) -> str: ...

    def send(self, session_id: str, text: str) -> dict[str, Any]: ...


@contextmanager
def _service_errors() -> Iterator[None]:
    """Raise the `Chatbot`'s known exceptions as the `RecchatError` the HTTP API would answer."""
    try:
        yield
    except Exception as exc:
        error = RecchatError.from_service(exc)
        if error is None:
            raise
        raise error from exc


class RecommendationClient:
    """In-process backend: a `Chatbot` in this process. Sessions are created and used as ``owner``.

    >>> client = RecommendationClient(Chatbot(settings), owner="support-bot", catalog="products")  # doctest: +SKIP
    """

    def __init__(self, chatbot: Chatbot, owner: str = "langchain", catalog: str | None = None) -> None:
        self.chatbot = chatbot
        self.owner = owner
        self.catalog = catalog

    def create_session(self, catalog: str | None = None) -> str:
        """Start a conversation on ``catalog`` (default: this client's, then the service's); its id."""
        with _service_errors():
            return self.chatbot.create_session(catalog or self.catalog, owner=self.owner).id

    def send(self, session_id: str, text: str) -> dict[str, Any]:
        """One user message; the reply as a dict (see `RecommendationBackend`)."""
        with _service_errors():
            return self.chatbot.send(session_id, text, owner=self.owner).as_dict()


class HttpRecommendationClient:
    """Remote backend: ``POST /v1/sessions`` and ``POST /v1/sessions/{id}/messages`` of the recchat HTTP API.

    Sessions belong to the API key's identity. Holds one connection pool: use it as a context manager or call
    `close`.

    >>> with HttpRecommendationClient("http://127.0.0.1:7860", "KEY", catalog="products") as client:  # doctest: +SKIP
    ...     reply = client.send(client.create_session(), "a rugged phone")
    """

    def __init__(self, base_url: str, api_key: str | None = None, catalog: str | None = None,
                 timeout: float = 120.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.catalog = catalog
        self._client = httpx.Client(base_url=self.base_url, headers=_headers(api_key), timeout=timeout)

    def __repr__(self) -> str:
        return f"HttpRecommendationClient(base_url={self.base_url!r}, catalog={self.catalog!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        try:
            response = self._client.post(path, json=body)
        except httpx.TransportError as exc:
            raise _unreachable(self.base_url, exc) from exc
        return _checked(response)

    def create_session(self, catalog: str | None = None) -> str:
        """Start a conversation on ``catalog`` (default: this client's, then the server's); its id."""
        name = catalog or self.catalog
        return str(self._post("/v1/sessions", {"catalog": name} if name else {})["id"])

    def send(self, session_id: str, text: str) -> dict[str, Any]:
        """One user message; the reply as a dict (see `RecommendationBackend`)."""
        return self._post(f"/v1/sessions/{quote(session_id, safe='')}/messages", {"text": text})


class RecommendationRequest(BaseModel):
    """The recommendation tool's arguments."""

    model_config = ConfigDict(extra="forbid")

    message: str = Field(description="The customer's request in their own words, e.g. 'a waterproof phone "
                                     "under $300, not Samsung'.")
    session_id: str | None = Field(default=None, description="The session_id an earlier call returned, to "
                                                             "continue that conversation; omit it to start one.")


def make_recommendation_tool(
    backend: RecommendationBackend,
    *,
    catalog: str | None = None,
    name: str = DEFAULT_TOOL_NAME,
    description: str = DEFAULT_TOOL_DESCRIPTION,
) -> BaseTool:
    """A LangChain tool that gets recommendations for a customer from ``backend``.

    Arguments (`RecommendationRequest`): ``message`` and an optional ``session_id``; without one the tool starts
    a session on ``catalog`` (None: the backend's default). It returns a JSON string: ``session_id``,
    ``reply``, ``act`` and ``recommendations`` (``id``, ``title``, ``justification``). An unknown session or an
    empty or too long message comes back as the tool's output (an error the model can act on); other
    failures, such as a wrong API key, raise `RecchatError`.

    >>> tool = make_recommendation_tool(HttpRecommendationClient(url, key, catalog="products"))  # doctest: +SKIP
    >>> json.loads(tool.invoke({"message": "a rugged phone"}))["session_id"]  # doctest: +SKIP
    '3f2c...'
    """

    def recommend(message: str, session_id: str | None = None) -> str:
        if not message.strip():
            raise ToolException("the message is empty: pass the customer's request as `message`")
        try:
            sid = session_id or backend.create_session(catalog)
            reply = backend.send(sid, message)
        except RecchatError as exc:
            if exc.code == "session_not_found":
                raise ToolException(f"no session {session_id!r}: omit session_id to start a new one") from exc
            if exc.code in _AGENT_FIXABLE:
                raise ToolException(exc.message) from exc
            raise
        summary = {
            "session_id": reply["session_id"],
            "reply": reply["reply"],
            "act": reply["act"],
            "recommendations": [{"id": r["id"], "title": r["title"], "justification": r["justification"]}
                                for r in reply["recommendations"]],
        }
        return json.dumps(summary, ensure_ascii=False)

    return StructuredTool.from_function(func=recommend, name=name, description=description,
                                        args_schema=RecommendationRequest, handle_tool_error=True)
