"""Dialects only reshape: the same query and documents give the same scores and order everywhere."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pydantic import TypeAdapter

from compat_api.api.rerank.cohere import CohereRerankResponse
from compat_api.api.rerank.legacy import LegacyRerankResponse
from compat_api.api.rerank.tei import TeiRank

QUERY = "什么是函数计算"
DOCS = ["你好", "函数计算是阿里云Serverless计算服务，提供专业的Serverless架构服务托管", "今天天气怎么样",
        "the capital of france is paris"]  # fmt: skip


def cohere_scores(client: TestClient, path: str) -> tuple[list[float], list[int]]:
    body = CohereRerankResponse.model_validate(client.post(path, json={"query": QUERY, "documents": DOCS}).json())
    by_index = {r.index: r.relevance_score for r in body.results}
    return [by_index[i] for i in range(len(DOCS))], [r.index for r in body.results]


@pytest.mark.parametrize("client_name", ["tiny_client", "bundled_client"])
def test_legacy_tei_v1_v2_and_shared_route_agree(client_name: str, request: pytest.FixtureRequest) -> None:
    client: TestClient = request.getfixturevalue(client_name)
    legacy = LegacyRerankResponse.model_validate(
        client.post("/rerank", json={"query": QUERY, "compare_to": DOCS}).json()
    ).data
    order = sorted(range(len(DOCS)), key=lambda i: -legacy[i])
    ranks = TypeAdapter(list[TeiRank]).validate_python(
        client.post("/rerank", json={"query": QUERY, "texts": DOCS}).json()
    )
    assert [r.index for r in ranks] == order
    assert {r.index: r.score for r in ranks} == dict(enumerate(legacy))
    for path in ("/v1/rerank", "/v2/rerank", "/rerank"):
        scores, ranked = cohere_scores(client, path)
        assert scores == legacy, path
        assert ranked == order, path
