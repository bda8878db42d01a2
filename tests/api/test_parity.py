"""Dialects only reshape: the same query and documents give the same scores everywhere."""

from __future__ import annotations

from fastapi.testclient import TestClient

from compat_api.api.cohere import CohereRerankResponse
from compat_api.api.legacy import LegacyRerankResponse

QUERY = "什么是函数计算"
DOCS = [
    "你好",
    "函数计算是阿里云Serverless计算服务，提供专业的Serverless架构服务托管",
    "今天天气怎么样",
    "the capital of france is paris",
]


def test_legacy_and_v1_agree_on_scores_and_order(tiny_client: TestClient) -> None:
    legacy = LegacyRerankResponse.model_validate(
        tiny_client.post("/rerank", json={"query": QUERY, "compare_to": DOCS}).json()
    )
    v1 = CohereRerankResponse.model_validate(
        tiny_client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS}).json()
    )
    by_index = {r.index: r.relevance_score for r in v1.results}
    assert [by_index[i] for i in range(len(DOCS))] == legacy.data
    assert [r.index for r in v1.results] == sorted(range(len(DOCS)), key=lambda i: -legacy.data[i])
