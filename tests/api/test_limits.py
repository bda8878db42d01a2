"""Limits: checked before any model work; over a limit is 413 naming the limit and the value,
and no error body ever echoes the input back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from compat_api.api.app import create_app
from compat_api.api.errors import ErrorBody, OpenAIErrorBody, TeiErrorBody
from tests.conftest import make_settings

MARK = "ECHO-CANARY-"


@pytest.fixture(scope="module")
def limited(tiny_reranker_dir: Path) -> Iterator[TestClient]:
    settings = make_settings(model_path=str(tiny_reranker_dir), max_body_bytes=4096, max_query_chars=50,
                             max_document_chars=300, max_documents=5, max_request_tokens=200)  # fmt: skip
    with TestClient(create_app(settings)) as client:
        yield client


def batches(client: TestClient) -> int:
    return int(client.app.state.registry.models[0].engine.batches_run)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"query": MARK * 10, "documents": ["a"]}, "query", "120 characters exceed the limit of 50"),
        ({"query": "q", "documents": ["a", MARK * 30]}, "documents[1]", "360 characters exceed the limit of 300"),
        ({"query": "q", "documents": [MARK] * 6}, "documents", "documents: 6 items exceed the limit of 5"),
        ({"query": "q", "documents": [MARK + "x " * 140, MARK + "y " * 140]}, "documents", "over the limit of 200"),
    ],
)
def test_over_a_limit_is_413_naming_it_without_echoing(
    limited: TestClient, body: dict[str, object], field: str, words: str
) -> None:
    before = batches(limited)
    response = limited.post("/v1/rerank", json=body)
    assert response.status_code == 413
    parsed = ErrorBody.model_validate(response.json())
    assert parsed.field == field and words in parsed.message
    assert "(RERANK_MAX_" in parsed.message, "the message names the setting behind the limit"
    assert MARK not in response.text
    assert batches(limited) == before, "no model work for a request over a limit"


def test_body_over_the_byte_limit_is_refused_before_parsing(limited: TestClient) -> None:
    raw = json.dumps({"query": "q", "documents": [MARK * 100] * 5}).encode()
    response = limited.post("/v1/rerank", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert "exceed the limit of 4096 bytes (RERANK_MAX_BODY_BYTES)" in response.json()["message"]
    assert MARK not in response.text


def test_chunked_body_over_the_byte_limit_is_refused(limited: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"query": "q", "documents": ["'
        for _ in range(100):
            yield MARK.encode() * 10
        yield b'"]}'

    response = limited.post("/v1/rerank", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert MARK not in response.text


def test_validation_errors_never_echo_the_input(limited: TestClient) -> None:
    bodies: list[dict[str, object]] = [
        {"query": {"x": MARK}, "documents": ["a"]},
        {"query": "q", "documents": [{"text": [MARK]}]},
        {"query": "q", "documents": ["a"], "top_n": MARK},
        {"query": "q", "texts": [1, MARK], "raw_scores": MARK},
    ]
    for body in bodies:
        response = limited.post("/rerank" if "texts" in body else "/v1/rerank", json=body)
        assert 400 <= response.status_code < 500
        assert MARK not in response.text, response.text


def test_the_per_request_item_cap_names_each_dialects_document_list(tiny_reranker_dir: Path) -> None:
    settings = make_settings(model_path=str(tiny_reranker_dir), max_request_items=4, max_length=32, cache_mb=0)
    long = [f"{word} " + "paris " * 60 for word in "abc"]  # 3 documents of several chunks: over 4 items
    with TestClient(create_app(settings)) as client:
        legacy = client.post("/rerank", json={"query": "q", "compare_to": long})
        assert legacy.status_code == 413
        parsed = ErrorBody.model_validate(legacy.json())
        assert parsed.field == "compare_to" and "send fewer compare_to" in parsed.message
        tei = client.post("/rerank", json={"query": "q", "texts": long})
        assert tei.status_code == 413
        assert "send fewer texts" in TeiErrorBody.model_validate(tei.json()).error


@pytest.fixture(scope="module")
def small_bodies(tiny_reranker_dir: Path, tiny_embedder_dir: Path) -> Iterator[TestClient]:
    settings = make_settings(model_path=str(tiny_reranker_dir), embedding_model_path=str(tiny_embedder_dir),
                             max_body_bytes=4096, api_keys="sk-right", reload_interval=0)  # fmt: skip
    with TestClient(create_app(settings)) as client:
        yield client


BIG = json.dumps({"inputs": ["a " * 3000]}).encode()
KEY = {"authorization": "Bearer sk-right", "content-type": "application/json"}


@pytest.mark.parametrize("path", ["/embed_sparse", "/decode", "/tei/any-model/embed", "/tei/any-model/rerank"])
def test_a_tei_route_refused_before_routing_gets_teis_error_body(small_bodies: TestClient, path: str) -> None:
    too_large = small_bodies.post(path, content=BIG, headers=KEY)
    assert too_large.status_code == 413
    assert "RERANK_MAX_BODY_BYTES" in TeiErrorBody.model_validate(too_large.json()).error
    no_key = small_bodies.post(path, json={"inputs": "a"})
    assert no_key.status_code == 401 and no_key.headers["www-authenticate"] == "Bearer"
    assert TeiErrorBody.model_validate(no_key.json()).error_type == "unauthorized"


@pytest.mark.parametrize("path", ["/v1/embeddings", "/embeddings", "/tei/any-model/v1/embeddings"])
def test_an_openai_route_refused_before_routing_gets_openais_error_body(small_bodies: TestClient, path: str) -> None:
    too_large = small_bodies.post(path, content=json.dumps({"input": ["a " * 3000]}).encode(), headers=KEY)
    assert too_large.status_code == 413
    error = OpenAIErrorBody.model_validate(too_large.json()).error
    assert error.code == "too_large" and error.param == "body" and "RERANK_MAX_BODY_BYTES" in error.message
    no_key = small_bodies.post(path, json={"input": "a"}, headers={"authorization": "Bearer sk-wrong"})
    assert no_key.status_code == 401
    assert OpenAIErrorBody.model_validate(no_key.json()).error.code == "unauthorized"


def test_a_shared_path_refused_before_routing_gets_the_common_error_body(small_bodies: TestClient) -> None:
    response = small_bodies.post("/rerank", content=BIG, headers=KEY)  # TEI, Cohere or the original API: unknown
    assert response.status_code == 413 and response.headers["connection"] == "close"
    assert ErrorBody.model_validate(response.json()).field == "body"
