"""Limits: checked before any model work; over a limit is 413 naming the limit and the value,
and no error body ever echoes the input back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from compat_api.api.app import create_app
from compat_api.api.errors import ErrorBody
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
