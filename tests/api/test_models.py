"""Model discovery: `/v1/models` and `/v1/models/{id}` as OpenAI and Dify's Xinference provider read them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from compat_api.api.app import create_app
from compat_api.api.errors import ErrorBody
from compat_api.api.models import ModelCard, ModelList
from compat_api.api.rerank.cohere import CohereRerankResponse
from tests.conftest import make_settings


@pytest.fixture(scope="module")
def named_client(tiny_reranker_dir: Path) -> Iterator[TestClient]:
    settings = make_settings(model_path=str(tiny_reranker_dir), model_name="bge-reranker-v2-m3",
                             model_aliases="bge-reranker, rerank-multilingual-v3.0")  # fmt: skip
    with TestClient(create_app(settings)) as client:
        yield client


def test_list_is_openai_shaped(named_client: TestClient) -> None:
    listing = ModelList.model_validate(named_client.get("/v1/models").json())
    assert listing.object == "list"
    [card] = listing.data
    assert (card.id, card.object, card.model_type) == ("bge-reranker-v2-m3", "model", "rerank")
    assert card.aliases == ["bge-reranker", "rerank-multilingual-v3.0"]
    assert card.created > 0


@pytest.mark.parametrize("name", ["bge-reranker-v2-m3", "bge-reranker", "rerank-multilingual-v3.0"])
def test_get_by_name_or_alias_says_rerank(named_client: TestClient, name: str) -> None:
    response = named_client.get(f"/v1/models/{name}")
    assert response.status_code == 200
    card = ModelCard.model_validate(response.json())
    assert card.model_type == "rerank" and card.id == "bge-reranker-v2-m3"


def test_any_uid_describes_the_only_reranker(named_client: TestClient) -> None:
    """Dify's Xinference provider checks the UID the user typed: with one reranker, any UID is it."""
    card = ModelCard.model_validate(named_client.get("/v1/models/my-xinference-uid").json())
    assert card.model_type == "rerank" and card.id == "bge-reranker-v2-m3"


def test_unknown_model_id_among_several_is_a_404_json_error(two_models: TestClient) -> None:
    response = two_models.get("/v1/models/gpt-4")
    assert response.status_code == 404
    body = ErrorBody.model_validate(response.json())
    assert "gpt-4" in body.message and "alpha" in body.message and "beta" in body.message


def test_rerank_accepts_any_model_name_and_reports_the_served_one(named_client: TestClient) -> None:
    for name in ("bge-reranker", "jina-reranker-v2-base-multilingual", "whatever"):
        response = named_client.post("/v1/rerank", json={"model": name, "query": "q", "documents": ["a", "b"]})
        assert CohereRerankResponse.model_validate(response.json()).model == "bge-reranker-v2-m3"
