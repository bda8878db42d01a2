"""A hostile client's requests, from the review of 2026-11-25: each is answered quickly, small
and as JSON, never at anyone else's expense.

Rows: 1 (a million bad items), 10 (metric label cardinality), 11 (auth before the body),
14 (log forging through the path), 15 (echoed names), 16 (a bug's 500), 17 (what keys
protect), 21 (deep nesting, huge numbers), 22 (JSON whatever the content type).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from compat_api.api.app import create_app
from compat_api.api.errors import ErrorBody, TeiErrorBody
from compat_api.api.health import HealthResponse
from compat_api.api.observability import RequestIdFilter
from tests.api.test_observability import metric
from tests.conftest import make_settings

MILLION = b"1," * (1024 * 1024 - 30) + b"1"

ROUTES = [  # (path, the body around a million non-string items)
    ("/rerank", b'{"query": "q", "compare_to": [%s]}'),
    ("/rerank", b'{"query": "q", "texts": [%s]}'),
    ("/rerank", b'{"query": "q", "documents": [%s]}'),
    ("/v1/rerank", b'{"query": "q", "documents": [%s]}'),
    ("/v2/rerank", b'{"query": "q", "documents": [%s]}'),
    ("/v1/rerank", b'{"query": "q", "documents": ["a"], "rank_fields": [%s]}'),
]


@pytest.mark.parametrize(("path", "template"), ROUTES)
def test_a_million_bad_items_get_a_small_error_at_once(tiny_client: TestClient, path: str, template: bytes) -> None:
    body = template % MILLION
    assert len(body) < 2 * 1024 * 1024
    response = tiny_client.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code in (413, 422), response.text[:500]
    assert len(response.content) < 4096
    message = response.json().get("message") or response.json().get("error")
    assert "exceed the limit" in message or "at most" in message


def test_many_bad_items_within_the_limit_name_only_the_first_few(tiny_client: TestClient) -> None:
    response = tiny_client.post("/v1/rerank", json={"query": "q", "documents": [1] * 900})
    assert response.status_code == 422
    body = ErrorBody.model_validate(response.json())
    assert body.message.count("documents[") == 5 and body.message.endswith("and 895 more")
    assert body.field == "documents[0]" and len(response.content) < 2048


@pytest.fixture(scope="module")
def keyed(tiny_reranker_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(model_path=str(tiny_reranker_dir), api_keys="k1,k2"))) as client:
        yield client


@pytest.mark.parametrize("body", [b"{not json", b"[" + MILLION + b"]", b'{"query": "q", "documents": ["a"]}'])
def test_without_a_key_nothing_is_parsed(keyed: TestClient, body: bytes) -> None:
    """401 comes from the headers alone: a malformed or huge body is never read or parsed."""
    response = keyed.post("/v1/rerank", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 401
    assert ErrorBody.model_validate(response.json()).type == "unauthorized"
    assert response.headers["connection"] == "close"


def test_with_keys_metrics_and_health_detail_need_one(keyed: TestClient) -> None:
    assert keyed.get("/metrics").status_code == 401
    assert keyed.get("/metrics", headers={"Authorization": "Bearer k2"}).status_code == 200
    bare = keyed.get("/health")
    assert bare.status_code == 200 and bare.json() == {"status": "ok"}, "status only: no paths, no errors"
    detailed = HealthResponse.model_validate(keyed.get("/health", headers={"Authorization": "Bearer k1"}).json())
    assert detailed.models is not None and detailed.models[0].path


def test_an_unknown_method_is_counted_as_other(tiny_client: TestClient) -> None:
    for i in range(20):
        tiny_client.request(f"XMETHOD{i}ABCDEFGHIJKLMNOP", "/v1/rerank")
    text = tiny_client.get("/metrics").text
    assert "XMETHOD" not in text
    assert metric(text, "compat_api_requests_total", route="/v1/rerank", method="other", status="405") >= 20


def test_the_log_cannot_be_forged_through_the_path(tiny_client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    forged = "/x%0a2026-11-25%2000:00:00,000%20INFO%20compat_api.access%20[admin]%20POST%20/admin%0d%1b[31m"
    with caplog.at_level(logging.INFO, logger="compat_api.access"):
        tiny_client.get(forged)
        tiny_client.get("/" + "a" * 60_000)
    lines = [r.getMessage() for r in caplog.records if r.name == "compat_api.access"]
    assert len(lines) == 2
    assert all("\n" not in line and "\r" not in line and "\x1b" not in line for line in lines)
    assert "\\x0a2026-11-25" in lines[0]
    assert len(lines[1]) < 400


def test_an_unknown_model_name_is_not_echoed_whole(two_models: TestClient) -> None:
    response = two_models.post("/v1/rerank", json={"model": "Z" * 1_500_000, "query": "q", "documents": ["a"]})
    assert response.status_code == 404 and len(response.content) < 1024
    assert "1500000 characters" in response.json()["message"]
    card = two_models.get("/v1/models/" + "Y" * 60_000)
    assert card.status_code == 404 and len(card.content) < 1024


def test_a_bug_is_a_json_500_with_the_request_id_logged_once(
    tiny_reranker_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with TestClient(create_app(make_settings(model_path=str(tiny_reranker_dir)))) as client:
        registry = client.app.state.registry  # type: ignore[attr-defined]

        def broken(name: str | None = None) -> None:
            raise RuntimeError("a bug")

        registry.reranker = broken
        caplog.handler.addFilter(RequestIdFilter())  # as the server's own handler stamps records
        with caplog.at_level(logging.ERROR):
            for path, body in (("/v1/rerank", {"query": "q", "documents": ["a"]}),
                               ("/rerank", {"query": "q", "texts": ["a"]})):  # fmt: skip
                response = client.post(path, json=body, headers={"X-Request-ID": "bug-1"})
                assert response.status_code == 500
                assert response.headers["x-request-id"] == "bug-1"
                parsed = (ErrorBody if "message" in response.json() else TeiErrorBody).model_validate(response.json())
                assert "internal error" in str(parsed)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2, [r.getMessage() for r in errors]
    assert all(r.exc_info and r.request_id == "bug-1" for r in errors)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b'{"query": "q", "documents": [{"text": "a", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}]}",
         "nested too deeply"),
        (b'{"query": "q", "documents": ["a"], "top_n": ' + b"9" * 5000 + b"}", "number is too large"),
    ],
)  # fmt: skip
def test_deep_nesting_and_huge_numbers_say_so(tiny_client: TestClient, body: bytes, words: str) -> None:
    response = tiny_client.post("/v1/rerank", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert words in ErrorBody.model_validate(response.json()).message


@pytest.mark.parametrize("ctype", ["application/notjson", "text/jsonp", "application/json; charset=utf-8",
                                   "application/vnd.api+json"])  # fmt: skip
def test_json_is_json_whatever_the_content_type(tiny_client: TestClient, ctype: str) -> None:
    response = tiny_client.post("/v1/rerank", content=b'{"query": "q", "documents": ["a"]}',
                                headers={"content-type": ctype})  # fmt: skip
    assert response.status_code == 200, response.text
