"""Cohere v2 `/v2/rerank`: string documents and `max_tokens_per_doc` truncation."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from compat_api.api.rerank.cohere import CohereRerankResponse

QUERY = "what is the capital of france"
DOCS = ["paris is the capital of france", "cats", "berlin is the capital of germany"]


def v2(client: TestClient, **body: object) -> CohereRerankResponse:
    response = client.post("/v2/rerank", json={"model": "rerank-v3.5", "query": QUERY, "documents": DOCS, **body})
    assert response.status_code == 200, response.text
    return CohereRerankResponse.model_validate(response.json())


def test_v2_ranks_and_reports_version_2(tiny_client: TestClient) -> None:
    body = v2(tiny_client, top_n=2)
    assert len(body.results) == 2
    assert body.results[0].relevance_score >= body.results[1].relevance_score
    assert body.meta.api_version.version == "2"
    assert body.model == "tiny-bge-reranker"
    assert all(r.document is None for r in body.results)


def test_max_tokens_per_doc_truncates_each_document(tiny_client: TestClient) -> None:
    long_doc = "paris is the capital of france " + "cats dogs bread flour " * 30
    full = v2(tiny_client, documents=[long_doc])
    cut = v2(tiny_client, documents=[long_doc], max_tokens_per_doc=6)
    same = v2(tiny_client, documents=["paris is the capital of france"], max_tokens_per_doc=6)
    assert cut.meta.tokens.input_tokens < full.meta.tokens.input_tokens
    assert cut.results[0].relevance_score != pytest.approx(full.results[0].relevance_score, abs=1e-6)
    # the first six tokens are the whole short document
    assert cut.results[0].relevance_score == pytest.approx(same.results[0].relevance_score, abs=1e-6)


def test_v2_validation(tiny_client: TestClient) -> None:
    response = tiny_client.post("/v2/rerank", json={"query": QUERY, "documents": DOCS, "max_tokens_per_doc": 0})
    assert response.status_code == 422
    assert response.json()["field"] == "max_tokens_per_doc"
    empty = tiny_client.post("/v2/rerank", json={"query": QUERY, "documents": []})
    assert empty.status_code == 400
    assert empty.json()["message"] == "list of documents must not be empty"
