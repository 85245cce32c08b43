"""Errors shared by every layer: a dependency of the service (vector store, session store, LM server) is down.

The HTTP API answers these with 503 and the exception's ``code``, and the process stays up: the next
request tries the dependency again, so the service recovers on its own when the dependency returns.
"""

from __future__ import annotations


class DependencyUnavailable(RuntimeError):  # noqa: N818 - reads as a state
    """A service this process depends on cannot be reached (or timed out). Retrying later may succeed."""

    code = "dependency_unavailable"
    dependency = "dependency"


class VectorStoreUnavailable(DependencyUnavailable):
    """The Chroma server (or the embedded store) cannot be reached."""

    code = "vector_store_unavailable"
    dependency = "vector_store"


class SessionStoreUnavailable(DependencyUnavailable):
    """The session store (Redis, SQLite) cannot be reached."""

    code = "session_store_unavailable"
    dependency = "session_store"


class LanguageModelUnavailable(DependencyUnavailable):
    """The remote language-model server cannot be reached or answered with an error."""

    code = "lm_unavailable"
    dependency = "lm"
