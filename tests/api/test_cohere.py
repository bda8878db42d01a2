"""The Cohere v1 / Jina `/v1/rerank` dialect, as the clients in shared/api/clients.md use it."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from compat_api.api.errors import ErrorBody
from compat_api.api.rerank.cohere import CohereRerankResponse

QUERY = "what is the capital of france"
DOCS = ["paris is the capital of france", "berlin is the capital of germany", "cats", "how do i bake bread"]


def rerank(client: TestClient, **body: Any) -> CohereRerankResponse:
    response = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, **body})
    assert response.status_code == 200, response.text
    return CohereRerankResponse.model_validate(response.json())


def test_results_sorted_highest_first_with_every_index(tiny_client: TestClient) -> None:
    body = rerank(tiny_client)
    scores = [r.relevance_score for r in body.results]
    assert scores == sorted(scores, reverse=True)
    assert sorted(r.index for r in body.results) == list(range(len(DOCS)))
    assert all(0.0 <= s <= 1.0 for s in scores)


@pytest.mark.parametrize("top_n", [None, 0, 4, 10])
def test_top_n_null_zero_or_too_large_returns_all(tiny_client: TestClient, top_n: int | None) -> None:
    assert len(rerank(tiny_client, top_n=top_n).results) == len(DOCS)


def test_top_n_absent_returns_all(tiny_client: TestClient) -> None:
    assert len(rerank(tiny_client).results) == len(DOCS)


@pytest.mark.parametrize("top_n", [1, 2, 3])
def test_top_n_cuts_the_ranking(tiny_client: TestClient, top_n: int) -> None:
    full = rerank(tiny_client)
    cut = rerank(tiny_client, top_n=top_n)
    assert [r.index for r in cut.results] == [r.index for r in full.results][:top_n]


def test_negative_top_n_is_422_naming_the_field(tiny_client: TestClient) -> None:
    response = tiny_client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "top_n": -1})
    assert response.status_code == 422
    assert response.json()["field"] == "top_n"
    assert "top_n" in response.json()["detail"] and "top_n" in response.json()["message"]


def test_document_only_when_asked_and_never_null(tiny_client: TestClient) -> None:
    for flag in (None, False):
        raw = tiny_client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "return_documents": flag}).json()
        assert all("document" not in r for r in raw["results"])
    asked = rerank(tiny_client, return_documents=True)
    for result in asked.results:
        assert result.document == {"text": DOCS[result.index]}


def test_object_documents_rank_on_text_and_come_back_whole(tiny_client: TestClient) -> None:
    objects = [{"text": d, "id": f"doc-{i}"} for i, d in enumerate(DOCS)]
    as_objects = tiny_client.post(
        "/v1/rerank", json={"query": QUERY, "documents": objects, "return_documents": True}
    ).json()
    as_strings = rerank(tiny_client)
    parsed = CohereRerankResponse.model_validate(as_objects)
    assert [r.index for r in parsed.results] == [r.index for r in as_strings.results]
    assert [r.relevance_score for r in parsed.results] == [r.relevance_score for r in as_strings.results]
    assert all(r.document == objects[r.index] for r in parsed.results)


def test_rank_fields_pick_what_is_ranked(tiny_client: TestClient) -> None:
    docs = [{"title": "cats", "body": d} for d in DOCS]
    by_body = tiny_client.post("/v1/rerank", json={"query": QUERY, "documents": docs, "rank_fields": ["body"]})
    by_title = tiny_client.post("/v1/rerank", json={"query": QUERY, "documents": docs, "rank_fields": ["title"]})
    assert by_body.status_code == by_title.status_code == 200
    title_scores = {r["relevance_score"] for r in by_title.json()["results"]}
    assert len(title_scores) == 1, "identical rank fields give identical scores"
    assert len({r["relevance_score"] for r in by_body.json()["results"]}) == len(DOCS)


def test_object_without_the_ranked_field_is_422_naming_it(tiny_client: TestClient) -> None:
    response = tiny_client.post("/v1/rerank", json={"query": QUERY, "documents": ["ok", {"title": "x"}]})
    assert response.status_code == 422
    assert response.json()["field"] == "documents[1].text"


def test_nulls_and_unknown_fields_are_accepted(tiny_client: TestClient) -> None:
    response = tiny_client.post(
        "/v1/rerank",
        json={
            "model": None,
            "query": QUERY,
            "documents": DOCS,
            "top_n": None,
            "return_documents": None,
            "rank_fields": None,
            "max_chunks_per_doc": None,
            "return_len": None,
            "kwargs": "{}",
            "whatever": [1],
        },
    )
    assert response.status_code == 200
    assert len(CohereRerankResponse.model_validate(response.json()).results) == len(DOCS)


def test_any_model_name_is_answered_by_the_served_model(tiny_client: TestClient) -> None:
    body = rerank(tiny_client, model="rerank-english-v3.0")
    assert body.model == "tiny-bge-reranker"


def test_usage_counts_tokens_from_the_model_tokenizer(tiny_client: TestClient) -> None:
    short = rerank(tiny_client)
    longer = tiny_client.post("/v1/rerank", json={"query": QUERY, "documents": [d + " " + d for d in DOCS]}).json()
    tokens = short.meta.tokens.input_tokens
    assert tokens > len(DOCS) * 3  # at least the special tokens of every pair
    assert short.usage.prompt_tokens == short.usage.total_tokens == tokens
    assert longer["meta"]["tokens"]["input_tokens"] > tokens
    assert short.meta.billed_units.search_units == 1
    assert short.meta.api_version.version == "1"
    assert short.id


def test_usage_matches_the_tokenizer_exactly(tiny_client: TestClient, tiny_reranker_dir: Any) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_reranker_dir))
    expected = sum(len(tok(QUERY, d, truncation="only_second", max_length=512)["input_ids"]) for d in DOCS)
    assert rerank(tiny_client).meta.tokens.input_tokens == expected


def test_integral_floats_are_integers_as_json_schema_says(tiny_client: TestClient) -> None:
    assert len(rerank(tiny_client, top_n=2.0).results) == 2
    assert tiny_client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "top_n": 2.5}).status_code == 422


def test_rank_fields_skip_fields_a_document_lacks(tiny_client: TestClient) -> None:
    docs = [{"title": "paris", "body": "capital of france"}, {"title": "cats"}]
    response = tiny_client.post(
        "/v1/rerank", json={"query": QUERY, "documents": docs, "rank_fields": ["title", "body"]}
    )
    assert response.status_code == 200
    assert len(response.json()["results"]) == 2


def test_a_document_with_none_of_the_rank_fields_is_ranked_on_its_text_or_refused(tiny_client: TestClient) -> None:
    docs = [{"title": "paris"}, {"x": "hello"}]
    response = tiny_client.post("/v1/rerank", json={"query": QUERY, "documents": docs, "rank_fields": ["title", "a"]})
    assert response.status_code == 422
    parsed = ErrorBody.model_validate(response.json())
    assert parsed.field == "documents[1]" and "none of the rank_fields ('title', 'a') and no text" in parsed.message
    with_text = [{"title": "cats"}, {"text": "paris is the capital of france"}]
    ranked = tiny_client.post("/v1/rerank", json={"query": QUERY, "documents": with_text, "rank_fields": ["title"]})
    plain = tiny_client.post("/v1/rerank", json={"query": QUERY, "documents": ["paris is the capital of france"]})
    score = next(r["relevance_score"] for r in ranked.json()["results"] if r["index"] == 1)
    assert score == pytest.approx(plain.json()["results"][0]["relevance_score"], abs=1e-6)


def test_rank_fields_naming_only_text_rank_as_without_rank_fields(tiny_client: TestClient) -> None:
    """Cohere's default rank field is `text`: naming it must not change the score."""
    docs = [{"text": "paris is the capital of france"}, {"text": "cats"}]
    named = tiny_client.post("/v1/rerank", json={"query": QUERY, "documents": docs, "rank_fields": ["text"]})
    default = tiny_client.post("/v1/rerank", json={"query": QUERY, "documents": docs})
    scores = [
        {r.index: r.relevance_score for r in CohereRerankResponse.model_validate(x.json()).results}
        for x in (named, default)
    ]
    assert scores[0] == pytest.approx(scores[1], abs=1e-6)


def test_rank_field_values_are_written_as_json(tiny_client: TestClient) -> None:
    """A boolean field reads `true` (as the document wrote it), not Python's `True`."""
    docs = [{"title": "paris", "open": True}, {"title": "paris", "open": "true"}]
    response = tiny_client.post(
        "/v1/rerank", json={"query": QUERY, "documents": docs, "rank_fields": ["title", "open"]}
    )
    scores = {r.index: r.relevance_score for r in CohereRerankResponse.model_validate(response.json()).results}
    assert scores[0] == pytest.approx(scores[1], abs=1e-6)
