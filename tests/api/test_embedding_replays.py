"""Replays of the embedding calls in shared/api/embeddings.md: FastGPT's and Dify's OpenAI-compatible,
Jina, LocalAI and Xinference providers (discovery included), with and without an API key.

Each replay sends the client's URL, headers and body and asserts only what that client reads.
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
TEXTS = ["what is function compute", "hello"]


@pytest.fixture(scope="module", params=["no key", "key"])
def setup(request: pytest.FixtureRequest, tiny_reranker_dir: Path,
          tiny_embedder_dir: Path) -> Iterator[tuple[TestClient, str | None]]:  # fmt: skip
    key = KEY if request.param == "key" else None
    settings = make_settings(model_path=str(tiny_reranker_dir), embedding_model_path=str(tiny_embedder_dir),
                             api_keys=key or "", reload_interval=0)  # fmt: skip
    with TestClient(create_app(settings)) as client:
        yield client, key


def assert_embedded(body: dict[str, Any], count: int) -> None:
    data = body["data"]
    assert len(data) == count and all(isinstance(d["embedding"], list) and d["embedding"] for d in data)
    assert all(float(x) == x for d in data for x in d["embedding"][:3])
    assert int(body["usage"]["total_tokens"]) > 0 and body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"]


def test_fastgpt(setup: tuple[TestClient, str | None]) -> None:
    client, key = setup
    body = {"dimensions": 32, "model": "bge-m3", "input": [TEXTS[0]], "encoding_format": "float"}
    response = client.post("/v1/embeddings", json=body, headers={"Authorization": f"Bearer {key or 'aiproxy'}"})
    assert response.status_code == 200
    assert response.json()["data"][0]["embedding"]
    assert_embedded(response.json(), 1)


@pytest.mark.parametrize("path", ["/v1/embeddings", "/embeddings"])
def test_dify_openai_compatible(setup: tuple[TestClient, str | None], path: str) -> None:
    client, key = setup
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}" if key else ""}
    validate = client.post(path, json={"model": "bge-m3", "input": ["ping"]}, headers=headers)
    assert validate.status_code == 200
    response = client.post(path, json={"model": "bge-m3", "input": TEXTS}, headers=headers)
    response.raise_for_status()
    assert_embedded(response.json(), 2)


@pytest.mark.parametrize("model", ["jina-embeddings-v3", "jina-embeddings-v4"])
def test_dify_jina(setup: tuple[TestClient, str | None], model: str) -> None:
    client, key = setup
    items: list[Any] = [{"text": t} for t in TEXTS] if model.endswith("v4") else TEXTS
    body = {"model": model, "input": items, "task": "retrieval.passage"}
    response = client.post("/v1/embeddings", json=body, headers={"Authorization": f"Bearer {key or 'jina_x'}"})
    assert response.status_code == 200
    assert_embedded(response.json(), 2)
    empty = client.post("/v1/embeddings", json={"model": model, "input": []},
                        headers={"Authorization": f"Bearer {key or 'jina_x'}"})  # fmt: skip
    assert empty.status_code == 400 and "input" in empty.json()["detail"]


def test_dify_localai(setup: tuple[TestClient, str | None]) -> None:
    client, key = setup
    for path in ("/embeddings", "/v1/embeddings"):
        response = client.post(
            path, json={"model": "bge-m3", "input": TEXTS[0]}, headers={"Authorization": "Bearer 123"}
        )
        if key:  # LocalAI's plugin hard-codes its key: with keys configured it cannot authenticate
            assert response.status_code == 401
            continue
        assert response.status_code == 200
        assert_embedded(response.json(), 1)
    bad = client.post("/embeddings", json={"model": "bge-m3", "input": ""},
                      headers={"Authorization": f"Bearer {key or '123'}"})  # fmt: skip
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] and bad.json()["error"]["message"]


def test_dify_xinference(setup: tuple[TestClient, str | None]) -> None:
    client, key = setup
    auth = client.get("/v1/cluster/auth").json()["auth"]
    assert auth is (key is not None)
    discovery = {"Authorization": f"Bearer {key}"} if auth else {}
    for uid in ("tiny-bge-m3", "bge-m3-uid"):
        described = client.get(f"/v1/models/{uid}", headers=discovery)
        assert described.status_code == 200
        assert described.json()["model_type"] == "embedding" and described.json()["max_tokens"] > 0
        response = client.post("/v1/embeddings", json={"model": uid, "input": TEXTS},
                               headers={"Authorization": f"Bearer {key}"} if key else {})  # fmt: skip
        assert response.status_code == 200
        assert_embedded(response.json(), 2)
    wrong = client.post("/v1/embeddings", json={"model": "tiny-bge-reranker", "input": TEXTS},
                        headers={"Authorization": f"Bearer {key}"} if key else {})  # fmt: skip
    assert wrong.status_code == 400 and "reranker" in wrong.json()["detail"]
