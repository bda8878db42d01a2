"""The original `/rerank {query, compare_to}` API, exactly as the seed template documents it."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from compat_api.api.rerank.legacy import SEED_EXAMPLE, LegacyRerankResponse


def test_seed_example_returns_three_scores_in_input_order(tiny_client: TestClient) -> None:
    response = tiny_client.post("/rerank", json=SEED_EXAMPLE)
    assert response.status_code == 200
    assert set(response.json()) == {"data", "object"}
    body = LegacyRerankResponse.model_validate(response.json())
    assert body.object == "list"
    assert len(body.data) == 3
    assert all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in body.data)
    assert len(set(body.data)) == 3


def test_scores_follow_input_order_not_rank(tiny_client: TestClient) -> None:
    docs = list(SEED_EXAMPLE["compare_to"])
    forward = LegacyRerankResponse.model_validate(
        tiny_client.post("/rerank", json={"query": SEED_EXAMPLE["query"], "compare_to": docs}).json()
    )
    backward = LegacyRerankResponse.model_validate(
        tiny_client.post("/rerank", json={"query": SEED_EXAMPLE["query"], "compare_to": docs[::-1]}).json()
    )
    # batch position may move the last float bits; the order and values stay
    assert backward.data == pytest.approx(forward.data[::-1], abs=1e-6)


def test_one_document_works(tiny_client: TestClient) -> None:
    response = tiny_client.post("/rerank", json={"query": "hello", "compare_to": ["hello world"]})
    assert response.status_code == 200
    assert len(LegacyRerankResponse.model_validate(response.json()).data) == 1


def test_scores_are_deterministic(tiny_client: TestClient) -> None:
    first = tiny_client.post("/rerank", json=SEED_EXAMPLE).json()
    second = tiny_client.post("/rerank", json=SEED_EXAMPLE).json()
    assert first == second


def test_bundled_model_answers_the_seed_example_and_english(bundled_client: TestClient) -> None:
    seed = LegacyRerankResponse.model_validate(bundled_client.post("/rerank", json=SEED_EXAMPLE).json())
    assert len(seed.data) == 3
    english = LegacyRerankResponse.model_validate(
        bundled_client.post(
            "/rerank",
            json={
                "query": "What is Function Compute?",
                "compare_to": [
                    "Hello",
                    "Function Compute is Alibaba Cloud's serverless compute service.",
                    "What is the weather like today?",
                ],
            },
        ).json()
    )
    assert max(range(3), key=lambda i: english.data[i]) == 1
