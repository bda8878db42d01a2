"""The OpenAPI document (what Swagger UI shows): every dialect's request and response shapes."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient


def spec(client: TestClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def refs(schema: dict[str, Any]) -> set[str]:
    return {item.get("$ref", "").rsplit("/", 1)[-1] or "array" for item in schema.get("oneOf", schema.get("anyOf", []))}


def test_shared_rerank_route_shows_all_three_shapes(tiny_client: TestClient) -> None:
    post = spec(tiny_client)["paths"]["/rerank"]["post"]
    body = post["requestBody"]["content"]["application/json"]
    assert refs(body["schema"]) == {"LegacyRerankRequest", "TeiRerankRequest", "CohereRerankRequest"}
    assert set(body["examples"]) == {"original", "tei", "cohere"}
    assert body["examples"]["original"]["value"]["query"] == "什么是函数计算"
    ok = post["responses"]["200"]["content"]["application/json"]["schema"]
    assert refs(ok) == {"LegacyRerankResponse", "array", "CohereRerankResponse"}
    assert refs(post["responses"]["422"]["content"]["application/json"]["schema"]) == {"ErrorBody", "TeiErrorBody"}
    v1 = spec(tiny_client)["paths"]["/v1/rerank"]["post"]
    assert v1["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")


def test_every_route_is_documented(tiny_client: TestClient) -> None:
    paths = spec(tiny_client)["paths"]
    for path in ("/rerank", "/v1/rerank", "/v2/rerank", "/info", "/v1/models", "/v1/models/{model_id}", "/health"):
        assert path in paths, path
