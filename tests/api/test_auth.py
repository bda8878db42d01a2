"""API keys: ignored when none are configured; required on scoring and model routes when set."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from compat_api.api.app import create_app
from compat_api.api.errors import ErrorBody, TeiErrorBody
from tests.conftest import make_settings

PROTECTED = [
    ("POST", "/rerank", {"query": "q", "compare_to": ["a"]}),
    ("POST", "/rerank", {"query": "q", "texts": ["a"]}),
    ("POST", "/rerank", {"query": "q", "documents": ["a"]}),
    ("POST", "/v1/rerank", {"query": "q", "documents": ["a"]}),
    ("POST", "/v2/rerank", {"query": "q", "documents": ["a"]}),
    ("GET", "/info", None),
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/tiny-bge-reranker", None),
]

IGNORED_HEADERS = [{}, {"Authorization": "Bearer None"}, {"Authorization": "Bearer "}, {"Authorization": "Bearer x"},
                   {"Authorization": "Basic Zm9vOmJhcg=="}, {"Authorization": "garbage"}]  # fmt: skip


@pytest.mark.parametrize("headers", IGNORED_HEADERS)
@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
def test_without_keys_authorization_is_ignored(
    tiny_client: TestClient, method: str, path: str, body: object, headers: dict[str, str]
) -> None:
    assert tiny_client.request(method, path, json=body, headers=headers).status_code == 200


@pytest.fixture(scope="module")
def keyed_client(tiny_reranker_dir: Path) -> Iterator[TestClient]:
    settings = make_settings(model_path=str(tiny_reranker_dir), api_keys="key-one, key-two")
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer None"}, {"Authorization": "Bearer "}, {"Authorization": "Bearer key-three"},
     {"Authorization": "Bearer key-one-and-more"}, {"Authorization": "key-one"}],
)  # fmt: skip
@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
def test_with_keys_every_protected_route_needs_one(
    keyed_client: TestClient, method: str, path: str, body: object, headers: dict[str, str]
) -> None:
    response = keyed_client.request(method, path, json=body, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    if path == "/info":  # TEI's route: TEI's error body
        tei = TeiErrorBody.model_validate(response.json())
        assert tei.error_type == "unauthorized" and "API key" in tei.error
        return
    parsed = ErrorBody.model_validate(response.json())
    assert parsed.type == "unauthorized" and "API key" in parsed.message


@pytest.mark.parametrize("key", ["key-one", "key-two"])
@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
def test_with_keys_a_right_key_passes(keyed_client: TestClient, method: str, path: str, body: object, key: str) -> None:
    response = keyed_client.request(method, path, json=body, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200


def test_health_and_docs_stay_open(keyed_client: TestClient) -> None:
    assert keyed_client.get("/health").status_code == 200
    assert keyed_client.get("/docs").status_code == 200
    assert keyed_client.get("/openapi.json").status_code == 200


def test_swagger_ui_knows_the_bearer_scheme(keyed_client: TestClient) -> None:
    spec = keyed_client.get("/openapi.json").json()
    scheme = spec["components"]["securitySchemes"]["apiKey"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert {"apiKey": []} in spec["paths"]["/v1/rerank"]["post"]["security"]
    assert "security" not in spec["paths"]["/health"]["get"]
