"""The TEI dialect: `/rerank {query, texts}` → a top-level sorted array, `/info`, TEI error bodies."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import TypeAdapter

from compat_api.api.app import create_app
from compat_api.api.errors import TeiErrorBody
from compat_api.api.rerank.tei import TeiInfo, TeiRank
from compat_api.core.ranking import sigmoid
from tests.conftest import make_settings

RANKS = TypeAdapter(list[TeiRank])
QUERY = "what is the capital of france"
TEXTS = ["paris is the capital of france", "cats", "berlin is the capital of germany", "how do i bake bread"]


def tei(client: TestClient, **body: object) -> list[TeiRank]:
    response = client.post("/rerank", json={"query": QUERY, "texts": TEXTS, **body})
    assert response.status_code == 200, response.text
    assert isinstance(response.json(), list)
    return RANKS.validate_python(response.json())


def test_top_level_array_sorted_highest_first(tiny_client: TestClient) -> None:
    ranks = tei(tiny_client)
    assert [r.score for r in ranks] == sorted((r.score for r in ranks), reverse=True)
    assert sorted(r.index for r in ranks) == list(range(len(TEXTS)))
    assert all(0 <= r.score <= 1 for r in ranks)
    assert all("text" not in raw for raw in tiny_client.post("/rerank", json={"query": QUERY, "texts": TEXTS}).json())


def test_return_text(tiny_client: TestClient) -> None:
    assert all(r.text == TEXTS[r.index] for r in tei(tiny_client, return_text=True))


def test_raw_scores_are_the_logits_behind_the_sigmoid(tiny_client: TestClient) -> None:
    normal = {r.index: r.score for r in tei(tiny_client)}
    raw = {r.index: r.score for r in tei(tiny_client, raw_scores=True)}
    assert any(not 0 <= s <= 1 for s in raw.values()), "the tiny model's logits leave [0, 1]"
    for i, logit in raw.items():
        assert sigmoid(logit) == pytest.approx(normal[i], abs=1e-6)


def test_nulls_and_truncate_flags_are_accepted(tiny_client: TestClient) -> None:
    ranks = tei(tiny_client, raw_scores=None, return_text=None, truncate=True, truncation_direction="Right")
    assert len(ranks) == len(TEXTS)


@pytest.fixture(scope="module")
def narrow_client(tiny_reranker_dir: Path) -> Iterator[TestClient]:
    """A 16-token window, so that truncation is visible."""
    with TestClient(create_app(make_settings(model_path=str(tiny_reranker_dir), max_length=16))) as client:
        yield client


def test_truncation_direction_picks_the_kept_end(narrow_client: TestClient) -> None:
    head, tail = "paris is the capital of france", "cats dogs bread flour water yeast salt oven"
    long_text = f"{head} {tail} {tail}"

    def score(text: str, direction: str) -> float:
        [rank] = tei_one(narrow_client, text, direction)
        return rank.score

    # Right truncation keeps the head, left keeps the tail.
    assert score(long_text, "Right") == pytest.approx(score(head + " " + tail, "Right"), abs=1e-6)
    assert score(long_text, "Left") != pytest.approx(score(long_text, "Right"), abs=1e-6)
    assert score(long_text, "Left") == pytest.approx(score(f"{tail} {tail} {tail}", "Left"), abs=1e-6)


def tei_one(client: TestClient, text: str, direction: str) -> list[TeiRank]:
    body = {"query": "capital", "texts": [text], "truncation_direction": direction, "truncate": True}
    response = client.post("/rerank", json=body)
    assert response.status_code == 200, response.text
    return RANKS.validate_python(response.json())


def test_no_length_causes_an_error(narrow_client: TestClient) -> None:
    assert len(tei_one(narrow_client, "word " * 20_000, "Left")) == 1
    assert len(tei_one(narrow_client, "word " * 20_000, "Right")) == 1


@pytest.mark.parametrize(
    ("body", "status", "error_type", "words"),
    [
        ({"query": QUERY, "texts": []}, 400, "empty", "must not be empty"),
        ({"query": QUERY, "texts": [1]}, 422, "validation", "texts[0]"),
        ({"query": QUERY, "texts": ["a"], "raw_scores": "perhaps"}, 422, "validation", "raw_scores"),
        ({"query": QUERY, "texts": ["a"], "truncation_direction": "Up"}, 422, "validation", "truncation_direction"),
        ({"texts": ["a"]}, 422, "validation", "query"),
    ],
)
def test_errors_use_tei_bodies_and_codes(
    tiny_client: TestClient, body: dict[str, object], status: int, error_type: str, words: str
) -> None:
    response = tiny_client.post("/rerank", json=body)
    assert response.status_code == status
    parsed = TeiErrorBody.model_validate(response.json())
    assert set(response.json()) == {"error", "error_type"}
    assert parsed.error_type == error_type
    assert words in parsed.error


def test_too_many_texts_is_413(tiny_reranker_dir: Path) -> None:
    with TestClient(create_app(make_settings(model_path=str(tiny_reranker_dir), max_documents=3))) as client:
        response = client.post("/rerank", json={"query": "q", "texts": ["a", "b", "c", "d"]})
        assert response.status_code == 413
        assert "limit of 3" in TeiErrorBody.model_validate(response.json()).error
        cohere = client.post("/v1/rerank", json={"query": "q", "documents": ["a", "b", "c", "d"]})
        assert cohere.status_code == 413 and cohere.json()["field"] == "documents"


def test_info_has_the_fields_dify_reads(tiny_client: TestClient) -> None:
    response = tiny_client.get("/info")
    assert response.status_code == 200
    info = TeiInfo.model_validate(response.json())
    assert "reranker" in info.model_type
    assert info.model_id == "tiny-bge-reranker"
    assert info.max_input_length == 512
    assert info.max_client_batch_size == 1000
    assert info.model_dtype == "float32"


def test_the_root_info_is_the_rerank_url_even_for_an_embedding_model(bundled_client: TestClient) -> None:
    """Dify's TEI provider accepts a rerank URL only if `/info` says reranker: the bundled
    embedding model reranks by cosine at the root URL and embeds at its own TEI base URL."""
    root = TeiInfo.model_validate(bundled_client.get("/info").json())
    assert "reranker" in root.model_type
    own = TeiInfo.model_validate(bundled_client.get(f"/tei/{root.model_id}/info").json())
    assert "embedding" in own.model_type and own.model_id == root.model_id
    body = {"query": "capital of France", "texts": ["cats", "Paris is in France"]}
    ranked = TypeAdapter(list[TeiRank]).validate_python(bundled_client.post("/rerank", json=body).json())
    assert ranked[0].index == 1
