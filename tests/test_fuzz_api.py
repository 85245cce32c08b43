"""Fuzzing the HTTP API with schemathesis, from the app's own OpenAPI document: no 500, responses as documented.

A real uvicorn server (`live_server`) runs `create_app` over a real `Chatbot` (no language model) and the small
``movies_small`` catalog; schemathesis loads ``/openapi.json`` from it and, for every operation, sends a fixed
number of generated requests: schema-conforming ones (positive) and schema-violating ones (negative). Each
response must not be a server error (``not_a_server_error``), must have a documented status code and content
type, and must match the documented response schema.

Operations under ``/v1/sessions/{session_id}`` are fuzzed twice: with generated session ids (404 territory) and
with a real session's id, so that message, feedback and belief bodies reach the dialogue manager. Catalog reads
are likewise fuzzed on the real catalog as well. Catalog uploads take part in the generic fuzz (with a small
upload limit) and get a few targeted malformed uploads of their own (`test_malformed_catalog_uploads`).

Stateful too: sequences of linked calls (`run_stateful`), cheap here (a few seconds).

Bounded and reproducible: ``derandomize=True``, a fixed number of examples per operation, no deadline.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from chatbot.api import ApiConfig, create_app
from chatbot.service import Chatbot
from retrieval.catalog import Catalog
from retrieval.index import Library
from retrieval.settings import Settings
from tests.conftest import live_server

ADMIN_KEY = "fuzz-admin-key-5e1d"
CLIENT_KEY = "fuzz-client-key-90ab"
EXAMPLES = 25  # per operation, generation mode and path-parameter variant
STATEFUL_SCENARIOS = 30  # sequences of up to 6 linked calls
CHECKS = [schemathesis.checks.not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


def _fuzz_settings() -> settings:
    # No shrinking: a failure is reported with the request that caused it (and a curl line), which is enough,
    # and shrinking a 500 against a live server could take long.
    return settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                    phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))


@pytest.fixture
def fuzz_library(library: Library, movies_small: Catalog, tmp_path: Path) -> Library:
    """The library with ``movies_small`` indexed, and no bundled catalog: a fuzzed request that names the bundled
    ``movies`` catalog would otherwise index 6,924 movies on first use (minutes), which is not what is tested."""
    library.bundled_dir = tmp_path / "no-bundled-catalogs"
    library.bundled_dir.mkdir()
    return library


def _serve(settings_: Settings, library: Library, config: ApiConfig) -> Any:  # noqa: ANN401 - a context manager
    def factory() -> Chatbot:
        return Chatbot(settings_, library, use_lm=False)

    return live_server(create_app(factory, settings_, config=config, ui=False))


def _fuzz(url: str, headers: dict[str, str]) -> tuple[list[str], dict[str, Counter[int]]]:
    """Fuzz every operation of the server's OpenAPI document: the failures (a block each) and the status codes
    each operation answered."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    failures: list[str] = []
    statuses: dict[str, Counter[int]] = defaultdict(Counter)

    def run(label: str, strategy: Any) -> None:  # noqa: ANN401 - a hypothesis strategy of Cases
        @_fuzz_settings()
        @given(case=strategy)
        def check(case: schemathesis.Case) -> None:
            response = case.call(base_url=url, headers=headers, timeout=60)
            statuses[case.operation.label][response.status_code] += 1
            case.validate_response(response, checks=CHECKS, headers=headers)

        try:
            check()
        except Unsatisfiable:  # negative mode on an operation without parameters or body: nothing to violate
            pass
        except (Exception, BaseExceptionGroup) as exc:  # collect every operation's failures, report them all
            failures.append(f"{label}: {exc}")

    run_stateful(schema, url, headers, failures)
    for result in schema.get_all_operations():
        operation = result.ok()
        for fixed in ({}, {"session_id": ""}, {"name": "movies_small"}):
            if any(f"{{{name}}}" not in operation.path for name in fixed):
                continue
            if fixed.get("name") and operation.method.upper() != "GET":
                continue  # uploading over or deleting the default catalog is covered by the generated names
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                if "session_id" in fixed:  # a fresh session each time: the DELETE variant deletes its session
                    fixed = {"session_id": _new_session(url, headers)}
                label = f"{operation.label} [{mode.value}{', ' + str(fixed) if fixed else ''}]"
                run(label, operation.as_strategy(mode, path_parameters=fixed or None))
    return failures, statuses


def run_stateful(schema: Any, url: str, headers: dict[str, str], failures: list[str]) -> None:  # noqa: ANN401
    """Sequences of calls linked by what earlier responses returned (links schemathesis infers from the
    ``Location`` header and from ids in bodies: create a session, then message it, give feedback, delete it)."""
    base = schema.as_state_machine()

    class Machine(base):  # type: ignore[misc, valid-type]
        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
            return {"base_url": url, "headers": headers, "timeout": 60}

        def validate_response(self, response: schemathesis.Response, case: schemathesis.Case,
                              additional_checks: Any = None, **kwargs: Any) -> None:  # noqa: ANN401
            case.validate_response(response, checks=CHECKS, headers=headers)

    try:
        Machine.run(settings=settings(max_examples=STATEFUL_SCENARIOS, stateful_step_count=6, derandomize=True,
                                      deadline=None, database=None, phases=[Phase.generate],
                                      suppress_health_check=list(HealthCheck)))
    except (Exception, BaseExceptionGroup) as exc:
        failures.append(f"stateful: {exc}")


def _new_session(url: str, headers: dict[str, str]) -> str:
    response = httpx.post(f"{url}/v1/sessions", json={"likes": ["Heat (1995)"]}, headers=headers, timeout=60)
    assert response.status_code == 201, response.text
    session_id: str = response.json()["id"]
    reply = httpx.post(f"{url}/v1/sessions/{session_id}/messages", json={"text": "a crime thriller"},
                       headers=headers, timeout=60)
    assert reply.status_code == 200, reply.text
    return session_id


@pytest.mark.parametrize("auth", ["off", "keys"])
def test_fuzz_every_operation(auth: str, settings: Settings, fuzz_library: Library) -> None:
    """Generated requests for every documented operation, auth off (the local admin) or with an admin key."""
    settings_ = settings.model_copy(update={"default_catalog": "movies_small"})
    if auth == "keys":
        config = ApiConfig(api_keys=f"{CLIENT_KEY}:client:fuzz-client,{ADMIN_KEY}:admin:fuzz-admin",
                           rate_limit_per_minute=0, max_upload_bytes=16 * 1024)
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    else:
        config = ApiConfig(rate_limit_per_minute=0, max_upload_bytes=16 * 1024)
        headers = {}
    with _serve(settings_, fuzz_library, config) as url:
        failures, statuses = _fuzz(url, headers)
    assert not failures, "\n\n".join(failures)
    # Not vacuous: the generated requests got past validation to the service, too.
    for label, success in (("POST /v1/sessions", 201), ("POST /v1/sessions/{session_id}/messages", 200),
                           ("POST /v1/sessions/{session_id}/messages/stream", 200),
                           ("GET /v1/catalogs/{name}/items", 200), ("GET /v1/sessions/{session_id}", 200)):
        assert statuses[label][success] > 0, (label, statuses[label])
    assert sum(sum(counts.values()) for counts in statuses.values()) > 500


MALFORMED_UPLOADS: list[tuple[str, dict[str, str], bytes | None, dict[str, Any] | None]] = [
    # (catalog name, query, raw body or None, multipart files or None)
    ("bad_bytes", {"format": "csv"}, b"\xff\xfe\x00garbage\x80\x81", None),
    ("bad_jsonl", {"format": "jsonl"}, b'{"title": null}\n[1, 2]\n"x"\n{"title": {"a": 1}}\n', None),
    ("bad_json", {"format": "json"}, b'{"items": 3}', None),
    ("bad_json_nested", {"format": "json"}, b"[" * 5000 + b"]" * 5000, None),
    ("bad_tsv", {"format": "tsv"}, b"title\tid\n\t\n\t\n", None),
    ("bad_csv_header", {"format": "csv"}, b",,,\n1,2,3\n", None),
    ("bad_multipart", {}, None, {"other": ("x.csv", b"title\nA\n", "text/csv")}),
    ("bad_filename", {}, None, {"file": ("../../etc/passwd", b"title\nA\n", "text/plain")}),
    ("bad_id_field", {"format": "csv", "id_field": "nope", "title_field": "nada"}, b"title,id\nA,1\n", None),
]


# Valid catalogs with odd field names and values: the index (Chroma metadata) must take whatever the loader keeps.
ODD_CSV = ("id,title,chroma:document,#document,$and,\u00e9t\u00e9,%s,,  title  ,price,tags\n"
           "o-1,Odd One,doc,hash,dollar,summer,long,blank,shadow,$1e3,a||b\n"
           "o-2,Odd Two,doc,hash,dollar,winter,long,blank,shadow,NaN,|\n") % ("k" * 300)
ODD_JSONL = ('{"title": "Odd Three", "n": 1e999, "m": -0.0, "big": 1%s, "flag": true, "nested": {"a": [1]},'
             ' "mixed": [1, "a", 2.5], "empty": [], "u": "\\u2028"}\n') % ("0" * 400)


@pytest.mark.parametrize("auth", ["keys"])
def test_odd_but_valid_catalog_uploads(auth: str, settings: Settings, fuzz_library: Library) -> None:
    """Odd field names (Chroma's reserved ``chroma:document``, ``#``/``$`` prefixes, empty, very long) and values
    (non-finite, huge, mixed lists) upload as 201, and the items can be read and searched."""
    settings_ = settings.model_copy(update={"default_catalog": "movies_small"})
    config = ApiConfig(api_keys=f"{ADMIN_KEY}:admin:fuzz-admin", rate_limit_per_minute=0)
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with _serve(settings_, fuzz_library, config) as url, httpx.Client(base_url=url, headers=headers,
                                                                       timeout=60) as c:
        for name, fmt, content, ids in (("odd_csv", "csv", ODD_CSV, ["o-1", "o-2"]),
                                        ("odd_jsonl", "jsonl", ODD_JSONL, ["Odd Three"])):
            response = c.post(f"/v1/catalogs/{name}", params={"format": fmt}, content=content.encode())
            assert response.status_code == 201, response.text
            assert response.json()["items"] == len(ids)
            for item_id in ids:
                assert c.get(f"/v1/catalogs/{name}/items/{item_id}").status_code == 200
            found = c.get(f"/v1/catalogs/{name}/items", params={"q": "odd"})
            assert found.status_code == 200 and {m["id"] for m in found.json()["items"]} == set(ids)
            session = c.post("/v1/sessions", json={"catalog": name}).json()["id"]
            reply = c.post(f"/v1/sessions/{session}/messages", json={"text": "something odd with tags a"})
            assert reply.status_code == 200, reply.text


@pytest.mark.parametrize("auth", ["keys"])
def test_malformed_catalog_uploads(auth: str, settings: Settings, fuzz_library: Library) -> None:
    """Targeted malformed uploads (raw and multipart): each is a 4xx with a JSON error, never a 500."""
    settings_ = settings.model_copy(update={"default_catalog": "movies_small"})
    config = ApiConfig(api_keys=f"{ADMIN_KEY}:admin:fuzz-admin", rate_limit_per_minute=0)
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with _serve(settings_, fuzz_library, config) as url, httpx.Client(base_url=url, headers=headers,
                                                                       timeout=60) as c:
        for name, query, content, files in MALFORMED_UPLOADS:
            response = c.post(f"/v1/catalogs/{name}", params=query, content=content, files=files)
            assert 400 <= response.status_code < 500, (name, response.status_code, response.text)
            assert response.json()["error"]["code"], name
        names = {c["name"] for c in c.get("/v1/catalogs").json()["catalogs"]}
        assert names == {"movies_small"}  # nothing malformed was installed

