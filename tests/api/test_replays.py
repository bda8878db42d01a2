"""Replays of the exact requests in shared/api/clients.md: Dify's six rerank providers and FastGPT.

Each replay sends the client's URL, headers and body (nulls included) and asserts only what that
client reads, with and without an API key configured.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from compat_api.api.app import create_app
from tests.conftest import make_settings

KEY = "sk-test-key"
QUERY = "what is the capital of france"
DOCS = ["berlin is the capital of germany", "paris is the capital of france", "cats"]


@pytest.fixture(scope="module", params=["no key", "key"])
def setup(request: pytest.FixtureRequest, tiny_reranker_dir: Path) -> Iterator[tuple[TestClient, str | None]]:
    key = KEY if request.param == "key" else None
    settings = make_settings(model_path=str(tiny_reranker_dir), api_keys=key or "")
    with TestClient(create_app(settings)) as client:
        yield client, key


def bearer(key: str | None, unset: str = "Bearer None") -> dict[str, str]:
    """What a client sends: its key, or (with none configured) its placeholder."""
    return {"Authorization": f"Bearer {key}" if key else unset}


def assert_ranked(results: list[dict[str, Any]], n: int = len(DOCS)) -> None:
    assert len(results) == n
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    indices = [r["index"] for r in results]
    assert len(set(indices)) == n and set(indices) <= set(range(len(DOCS)))


def document_text(document: str | dict[str, Any]) -> str:
    return document if isinstance(document, str) else document["text"]


@pytest.mark.parametrize("path", ["/v1/rerank", "/rerank"])
@pytest.mark.parametrize("legacy_dify", [False, True])
def test_dify_openai_compatible(setup: tuple[TestClient, str | None], path: str, legacy_dify: bool) -> None:
    client, key = setup
    body: dict[str, Any] = {"model": "bge-reranker-v2-m3", "query": QUERY, "documents": DOCS, "top_n": None}
    if legacy_dify:
        body["return_documents"] = True
    headers = {"Content-Type": "application/json", **(bearer(key) if key or legacy_dify else {})}
    response = client.post(path, json=body, headers=headers)
    assert response.status_code == 200
    results = response.json()["results"]
    assert_ranked(results)
    if legacy_dify:
        assert all(document_text(r["document"]) == DOCS[r["index"]] for r in results)


@pytest.mark.parametrize("top_n", [2, None])
def test_dify_jina(setup: tuple[TestClient, str | None], top_n: int | None) -> None:
    client, key = setup
    body = {"model": "jina-reranker-v2-base-multilingual", "query": QUERY, "documents": DOCS, "top_n": top_n,
            "return_documents": False}  # fmt: skip
    response = client.post("/v1/rerank", json=body, headers=bearer(key))
    assert response.status_code == 200
    results = response.json()["results"]
    assert_ranked(results, top_n or len(DOCS))
    assert all("document" not in r for r in results)


def test_dify_cohere(setup: tuple[TestClient, str | None]) -> None:
    client, key = setup
    headers = {**bearer(key, "Bearer placeholder"), "X-Fern-Language": "Python", "X-Fern-SDK-Name": "cohere",
               "X-Fern-SDK-Version": "5.2.5"}  # fmt: skip
    body = {"query": QUERY, "documents": DOCS, "model": "rerank-multilingual-v3.0", "top_n": None,
            "return_documents": True}  # fmt: skip
    response = client.post("/v1/rerank", json=body, headers=headers)
    assert response.status_code == 200
    results = response.json()["results"]
    assert_ranked(results)
    assert all(r["document"]["text"] == DOCS[r["index"]] for r in results)


def test_dify_xinference(setup: tuple[TestClient, str | None]) -> None:
    client, key = setup
    headers = bearer(key) if key else {}
    assert client.get("/v1/cluster/auth").json() == {"auth": key is not None}  # then the key goes on discovery
    described = client.get("/v1/models/tiny-bge-reranker", headers=headers)
    assert described.status_code == 200
    assert described.json()["model_type"] == "rerank"
    body = {"model": "tiny-bge-reranker", "documents": DOCS, "query": QUERY, "top_n": None, "max_chunks_per_doc": None,
            "return_documents": True, "return_len": None, "kwargs": "{}"}  # fmt: skip
    response = client.post("/v1/rerank", json=body, headers=headers)
    assert response.status_code == 200
    results = response.json()["results"]
    assert_ranked(results)
    assert all(document_text(r["document"]) == DOCS[r["index"]] for r in results)


def test_dify_xinference_reads_detail_on_errors(setup: tuple[TestClient, str | None]) -> None:
    client, key = setup
    response = client.post("/v1/rerank", json={"model": "x", "documents": [], "query": QUERY},
                           headers=bearer(key) if key else {})  # fmt: skip
    assert response.status_code == 400
    assert "must not be empty" in response.json()["detail"]


def test_dify_huggingface_tei(setup: tuple[TestClient, str | None]) -> None:
    client, key = setup
    headers = bearer(key) if key else {}
    info = client.get("/info", headers=headers).json()
    assert "reranker" in info["model_type"]
    assert info["max_input_length"] > 0
    response = client.post("/rerank", json={"query": QUERY, "texts": DOCS, "return_text": True}, headers=headers)
    assert response.status_code == 200
    ranks = response.json()
    assert isinstance(ranks, list) and len(ranks) == len(DOCS)
    assert [r["score"] for r in ranks] == sorted((r["score"] for r in ranks), reverse=True)
    assert all(r["text"] == DOCS[r["index"]] for r in ranks)


def test_dify_localai(setup: tuple[TestClient, str | None]) -> None:
    client, key = setup
    body = {"model": "bge-reranker-v2-m3", "query": QUERY, "documents": DOCS, "top_n": None}
    response = client.post("/rerank", json=body, headers=bearer(key))
    assert response.status_code == 200
    results = response.json()["results"]
    assert_ranked(results)
    assert all("document" not in r for r in results), "LocalAI reads document.text whenever the key exists"


@pytest.mark.parametrize("path", ["/v1/rerank", "/rerank"])
def test_fastgpt(setup: tuple[TestClient, str | None], path: str) -> None:
    client, key = setup
    body = {"model": "bge-reranker-v2-m3", "query": QUERY, "documents": DOCS}
    response = client.post(path, json=body, headers=bearer(key, "Bearer "))
    assert response.status_code == 200
    payload = response.json()
    assert "data" not in payload, "FastGPT rejects the legacy shape"
    assert_ranked(payload["results"])
    assert payload["meta"]["tokens"]["input_tokens"] > 0


def test_original_callers(setup: tuple[TestClient, str | None]) -> None:
    client, key = setup
    response = client.post("/rerank", json={"query": QUERY, "compare_to": DOCS[:1]}, headers=bearer(key) if key else {})
    assert response.status_code == 200
    payload = response.json()
    assert payload["object"] == "list" and len(payload["data"]) == 1
