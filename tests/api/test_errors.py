"""Bad input never gets a 500: a 4xx JSON body naming what was wrong and which field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from compat_api.api.app import create_app
from compat_api.api.errors import ErrorBody
from tests.conftest import make_settings

CASES = [
    # (path, raw body, content type, status, field, words in the message)
    ("/rerank", b'{"query": "a", "compare_to": ["b"', "application/json", 400, "body", "malformed JSON"),
    ("/v1/rerank", b"{bad", "application/json", 400, "body", "malformed JSON"),
    ("/rerank", b"\xff\xfe\x00", "application/json", 400, "body", "malformed JSON"),
    ("/rerank", b"", "application/json", 422, "body", "body is required"),
    ("/rerank", b"[1, 2]", "application/json", 422, "body", "one of the keys 'compare_to'"),
    ("/v1/rerank", b"[1, 2]", "application/json", 422, "body", "JSON object"),
    ("/rerank", b'{"compare_to": ["b"]}', "application/json", 422, "query", "Field required"),
    (
        "/rerank",
        b'{"query": "a"}',
        "application/json",
        422,
        "body",
        "one of the keys 'compare_to' (original API), 'texts' (TEI) or 'documents' (Cohere / Jina)",
    ),
    ("/rerank", b'{"query": 1, "compare_to": ["b"]}', "application/json", 422, "query", "valid string"),
    ("/rerank", b'{"query": "a", "compare_to": "b"}', "application/json", 422, "compare_to", "valid list"),
    ("/rerank", b'{"query": "a", "compare_to": [null]}', "application/json", 422, "compare_to[0]", "valid string"),
    ("/rerank", b'{"query": "a", "compare_to": []}', "application/json", 400, "compare_to", "must not be empty"),
    ("/rerank", b'{"query": NaN, "compare_to": ["b"]}', "application/json", 422, "query", "valid string"),
    (
        "/v1/rerank",
        b'{"query": "a", "documents": []}',
        "application/json",
        400,
        "documents",
        "list of documents must not be empty",
    ),
    ("/v1/rerank", b'{"documents": ["a"]}', "application/json", 422, "query", "Field required"),
    ("/v1/rerank", b'{"query": "a", "documents": [1]}', "application/json", 422, "documents[0]", "valid"),
    (
        "/v1/rerank",
        b'{"query": "a", "documents": ["x"], "top_n": "many"}',
        "application/json",
        422,
        "top_n",
        "valid integer",
    ),
    (
        "/v1/rerank",
        b'{"query": "a", "documents": ["x"], "top_n": -3}',
        "application/json",
        422,
        "top_n",
        "greater than or equal to 0",
    ),
    (
        "/v1/rerank",
        b'{"query": "a", "documents": ["x"], "return_documents": "perhaps"}',
        "application/json",
        422,
        "return_documents",
        "valid boolean",
    ),
    (
        "/v1/rerank",
        b'{"query": "a", "documents": [{"title": "t"}]}',
        "application/json",
        422,
        "documents[0].text",
        "no field 'text'",
    ),
    (
        "/v1/rerank",
        b'{"query": "a", "documents": ["x"], "max_chunks_per_doc": -1}',
        "application/json",
        422,
        "max_chunks_per_doc",
        "greater than or equal to 0",
    ),
]


@pytest.mark.parametrize(("path", "raw", "ctype", "status", "field", "words"), CASES)
def test_bad_input_gets_a_4xx_naming_the_field(
    tiny_client: TestClient, path: str, raw: bytes, ctype: str, status: int, field: str, words: str
) -> None:
    response = tiny_client.post(path, content=raw, headers={"content-type": ctype})
    assert response.status_code == status, response.text
    body = ErrorBody.model_validate(response.json())
    assert body.field == field
    assert body.detail == body.message
    assert words in body.message


@pytest.mark.parametrize("ctype", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_json_body_is_read_whatever_the_content_type(tiny_client: TestClient, ctype: str | None) -> None:
    headers = {"content-type": ctype} if ctype else {}
    response = tiny_client.post("/rerank", content=b'{"query": "a", "compare_to": ["b"]}', headers=headers)
    assert response.status_code == 200


def test_unknown_route_and_wrong_method_are_json(tiny_client: TestClient) -> None:
    missing = tiny_client.get("/nope")
    assert missing.status_code == 404
    assert ErrorBody.model_validate(missing.json()).type == "not_found"
    wrong = tiny_client.get("/rerank")
    assert wrong.status_code == 405
    assert ErrorBody.model_validate(wrong.json()).message == "Method Not Allowed"


MORE_BAD = [
    # NaN / Infinity literals where numbers or strings belong
    ("/v1/rerank", b'{"query": "a", "documents": ["x"], "top_n": NaN}', 422, "top_n", "valid integer"),
    ("/v1/rerank", b'{"query": "a", "documents": ["x"], "top_n": Infinity}', 422, "top_n", "valid integer"),
    ("/v1/rerank", b'{"query": "a", "documents": ["x"], "top_n": "3"}', 422, "top_n", "valid integer"),
    ("/v1/rerank", b'{"query": "a", "documents": ["x"], "return_documents": 1}', 422, "return_documents",
     "valid boolean"),
    ("/rerank", b'{"query": 5, "compare_to": ["x"]}', 422, "query", "valid string"),
    ("/v1/rerank", b'{"query": "a", "documents": ["x"], "top_n": 1.5}', 422, "top_n", "valid integer"),
    ("/v1/rerank", b'{"query": "a", "documents": ["x"], "max_chunks_per_doc": 100000}', 422, "max_chunks_per_doc",
     "less than or equal to 1000"),
    # nested nulls
    ("/v1/rerank", b'{"query": "a", "documents": [null]}', 422, "documents[0]", "valid"),
    ("/v1/rerank", b'{"query": "a", "documents": [{"text": null}]}', 422, "documents[0].text", "must be a string"),
    ("/v1/rerank", b'{"query": null, "documents": ["x"]}', 422, "query", "valid string"),
    ("/v1/rerank", b'{"query": "a", "documents": null}', 422, "documents", "valid list"),
    ("/rerank", b'{"query": "a", "texts": [null]}', 422, "texts[0]", "valid string"),
    ("/v1/rerank", b'{"query": "a", "documents": ["x"], "rank_fields": [null]}', 422, "rank_fields[0]", "valid string"),
    # wrong types at each field
    ("/v1/rerank", b'{"query": ["a"], "documents": ["x"]}', 422, "query", "valid string"),
    ("/v1/rerank", b'{"query": "a", "documents": {"0": "x"}}', 422, "documents", "valid list"),
    ("/v1/rerank", b'{"query": "a", "documents": [[1]]}', 422, "documents[0]", "valid"),
    ("/v2/rerank", b'{"query": "a", "documents": ["x"], "max_tokens_per_doc": "all"}', 422, "max_tokens_per_doc",
     "valid integer"),
    ("/rerank", b'{"query": "a", "texts": ["x"], "truncate": "sometimes"}', 422, "truncate", "valid boolean"),
    ("/v1/rerank", b'"just a string"', 422, "body", "JSON object"),
    ("/v1/rerank", b"null", 422, "body", "JSON object"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "raw", "status", "field", "words"), MORE_BAD)
def test_more_bad_input_is_a_4xx_naming_the_field(
    tiny_client: TestClient, path: str, raw: bytes, status: int, field: str, words: str
) -> None:
    response = tiny_client.post(path, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    body = response.json()
    message = body.get("message") or body.get("error")
    assert words in message
    if "field" in body:
        assert body["field"] == field


ANSWERED = [
    {"query": "a", "documents": ["x", "y"], "top_n": 10**30},
    {"query": "", "documents": ["", " "]},
    {"query": "   \t\n ", "documents": ["whitespace-only query"]},
    {"query": "control \x00\x01\x1b[31m chars", "documents": ["\x00\x07\x7f doc", "\u202e\ufeff bidi"]},
    {"query": "long word", "documents": ["x" * 100_000, "y"]},
    {"query": "emoji 🙂", "documents": ["😀" * 1000, "\ud7ff"]},
]


@pytest.mark.parametrize("body", ANSWERED)
def test_odd_but_valid_input_gets_a_correct_answer(tiny_client: TestClient, body: dict[str, object]) -> None:
    response = tiny_client.post("/v1/rerank", json=body)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert sorted(r["index"] for r in results) == list(range(len(body["documents"])))  # type: ignore[arg-type]


def test_duplicate_documents_get_identical_scores(tiny_client: TestClient) -> None:
    response = tiny_client.post("/rerank", json={"query": "q", "compare_to": ["same text", "other", "same text"]})
    data = response.json()["data"]
    assert data[0] == data[2]


def test_lone_surrogates_in_json_are_answered(tiny_client: TestClient) -> None:
    raw = b'{"query": "\\ud800 broken", "documents": ["\\udfff also broken", "fine"]}'
    response = tiny_client.post("/v1/rerank", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    assert len(response.json()["results"]) == 2


OBJECT_WITH_SURROGATES = (
    b'{"query": "q", "documents": [{"text": "\\ud800", "k\\udc00": ["\\udfff"]}, "b"], "return_documents": true}'
)


@pytest.mark.parametrize(
    ("path", "raw", "echoed"),
    [
        ("/v1/rerank", b'{"query": "q", "documents": ["\\udfff x", "fine"], "return_documents": true}', "document"),
        ("/v2/rerank", OBJECT_WITH_SURROGATES, "document"),
        ("/rerank", b'{"query": "q", "documents": ["\\udfff x", "fine"], "return_documents": true}', "document"),
        ("/rerank", b'{"query": "q", "texts": ["\\udfff x", "fine"], "return_text": true}', "text"),
    ],
)
def test_documents_sent_back_have_their_lone_surrogates_repaired(
    tiny_client: TestClient, path: str, raw: bytes, echoed: str
) -> None:
    response = tiny_client.post(path, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    results = response.json() if echoed == "text" else response.json()["results"]
    sent_back = json.dumps([r[echoed] for r in results], ensure_ascii=False)
    assert "\ufffd" in sent_back and "\\ud" not in sent_back


@pytest.mark.parametrize(
    ("document", "field", "words"),
    [
        (b'{"text": "a", "score": NaN}', "documents[0]", "score: nan is not a JSON number"),
        (b'{"text": "a", "meta": {"x": [1, -Infinity]}}', "documents[0]", "meta.x[1]: -inf is not a JSON number"),
        (b'{"text": "a", "big": 1e400}', "documents[0]", "big: inf is not a JSON number"),
        (b'{"text": "a", "x": ' + b"[" * 40 + b"]" * 40 + b"}", "documents[0]", "nested more than 32 levels deep"),
    ],
)
@pytest.mark.parametrize("path", ["/v1/rerank", "/v2/rerank"])
def test_an_object_document_that_cannot_be_sent_back_is_a_422_naming_it(
    tiny_client: TestClient, path: str, document: bytes, field: str, words: str
) -> None:
    raw = b'{"query": "q", "documents": [' + document + b', "b"], "return_documents": true}'
    response = tiny_client.post(path, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    parsed = ErrorBody.model_validate(response.json())
    assert parsed.field == field and words in parsed.message


def test_no_document_can_pose_as_the_querys_cached_token_count(tiny_reranker_dir: Path) -> None:
    impostor = "\x00query-tokens"  # once the key of the query's own token count in the score cache
    body = {"query": "cache probe", "documents": [impostor, "paris"]}
    scores = []
    for cache_mb in (64, 0):
        with TestClient(create_app(make_settings(model_path=str(tiny_reranker_dir), cache_mb=cache_mb))) as client:
            assert client.post("/v1/rerank", json={"query": "cache probe", "documents": ["x"]}).status_code == 200
            answer = client.post("/v1/rerank", json=body).json()
            assert answer["meta"]["tokens"]["input_tokens"] > 0
            scores.append(next(r["relevance_score"] for r in answer["results"] if r["index"] == 0))
    assert scores[0] == pytest.approx(scores[1], abs=1e-5), "the cached server scores the document like any other"
