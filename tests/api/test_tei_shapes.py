"""Every TEI route answers in the shapes TEI publishes: requests built from each variant of TEI's
`Input` (a text, one id array, a list of texts, of id arrays, or both mixed) and the answers and
error bodies checked with JSON Schema against TEI's documented component shapes.

The shapes below restate TEI 1.7.1's OpenAPI document (huggingface/text-embeddings-inference,
`docs/openapi.json`, components `Input`, `EmbedResponse`, `EmbedAllResponse`, `EmbedSparseResponse`,
`SimilarityResponse`, `TokenizeResponse`/`SimpleToken`, `DecodeResponse`, `RerankResponse`/`Rank`,
`Info`/`ModelType`, `ErrorResponse`): types and required fields, which is what a TEI client reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fastapi.testclient import TestClient

from compat_api.api.app import create_app
from tests.conftest import make_settings
from tests.tiny_models import build_tiny_xlmr_embedder

ID = {"type": "integer", "minimum": 0}
IDS = {"type": "array", "items": ID}
FLOATS = {"type": "array", "items": {"type": "number"}}
INPUT_TYPE = {"oneOf": [{"type": "string"}, IDS]}
INPUT = {"oneOf": [INPUT_TYPE, {"type": "array", "items": INPUT_TYPE}]}
TOKENIZE_INPUT = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
REQUESTS: dict[str, dict[str, Any]] = {
    "/embed": {"type": "object", "required": ["inputs"], "properties": {"inputs": INPUT}},
    "/embed_all": {"type": "object", "required": ["inputs"], "properties": {"inputs": INPUT}},
    "/embed_sparse": {"type": "object", "required": ["inputs"], "properties": {"inputs": INPUT}},
    "/tokenize": {"type": "object", "required": ["inputs"], "properties": {"inputs": TOKENIZE_INPUT}},
    "/decode": {"type": "object", "required": ["ids"],
                "properties": {"ids": {"oneOf": [IDS, {"type": "array", "items": IDS}]}}},
}  # fmt: skip
SIMPLE_TOKEN = {
    "type": "object",
    "required": ["id", "text", "special"],
    "properties": {"id": ID, "text": {"type": "string"}, "special": {"type": "boolean"},
                   "start": {"type": ["integer", "null"], "minimum": 0},
                   "stop": {"type": ["integer", "null"], "minimum": 0}},
}  # fmt: skip
SPARSE_VALUE = {
    "type": "object",
    "required": ["index", "value"],
    "properties": {"index": ID, "value": {"type": "number"}},
}
RANK = {"type": "object", "required": ["index", "score"],
        "properties": {"index": ID, "score": {"type": "number"}, "text": {"type": ["string", "null"]}}}  # fmt: skip
ANSWERS: dict[str, dict[str, Any]] = {
    "/embed": {"type": "array", "items": FLOATS},
    "/embed_all": {"type": "array", "items": {"type": "array", "items": FLOATS}},
    "/embed_sparse": {"type": "array", "items": {"type": "array", "items": SPARSE_VALUE}},
    "/similarity": {"type": "array", "items": {"type": "number"}},
    "/tokenize": {"type": "array", "items": {"type": "array", "items": SIMPLE_TOKEN}},
    "/decode": {"type": "array", "items": {"type": "string"}},
    "/rerank": {"type": "array", "items": RANK},
}
CLASSIFIER = {"type": "object", "required": ["id2label", "label2id"]}
INFO = {
    "type": "object",
    "required": ["model_id", "model_dtype", "model_type", "max_concurrent_requests", "max_input_length",
                 "max_batch_tokens", "max_client_batch_size", "auto_truncate", "tokenization_workers", "version"],
    "properties": {
        "model_type": {"oneOf": [
            {"type": "object", "required": ["classifier"], "properties": {"classifier": CLASSIFIER}},
            {"type": "object", "required": ["embedding"],
             "properties": {"embedding": {"type": "object", "required": ["pooling"],
                                          "properties": {"pooling": {"type": "string"}}}}},
            {"type": "object", "required": ["reranker"], "properties": {"reranker": CLASSIFIER}},
        ]},
        "max_input_length": ID, "max_batch_tokens": ID, "max_client_batch_size": ID,
        "auto_truncate": {"type": "boolean"},
    },
}  # fmt: skip
# TEI's error body; `error_type` is one of TEI's kinds (lowercase on the wire), or the model-routing
# kinds a server of several models adds.
ERROR = {"type": "object", "required": ["error", "error_type"],
         "properties": {"error": {"type": "string", "minLength": 1}, "error_type": {"type": "string"}}}  # fmt: skip
TEI_ERROR_TYPES = {"unhealthy", "backend", "overloaded", "validation", "tokenizer", "empty", "model_not_found"}

TEXT, OTHER = "what is function compute", "function compute is a serverless computing service"


@pytest.fixture(scope="module")
def m3_client(tmp_path_factory: pytest.TempPathFactory, tiny_reranker_dir: Path) -> Iterator[TestClient]:
    """A tiny bge-m3 (with its sparse and ColBERT heads) beside the tiny reranker."""
    m3 = build_tiny_xlmr_embedder(tmp_path_factory.mktemp("models") / "tiny-m3", heads=True)
    settings = make_settings(model_path=str(tiny_reranker_dir), embedding_model_path=str(m3), reload_interval=0)
    with TestClient(create_app(settings)) as client:
        yield client


def ids_of(client: TestClient, text: str) -> list[int]:
    [tokens] = client.post("/tokenize", json={"inputs": text}).json()
    return [t["id"] for t in tokens]


def variants(client: TestClient) -> list[Any]:
    """Every form TEI's `Input` takes."""
    ids = ids_of(client, OTHER)
    return [TEXT, ids, [TEXT, OTHER], [ids, ids], [TEXT, ids]]


@pytest.mark.parametrize("path", ["/embed", "/embed_all", "/embed_sparse"])
@pytest.mark.parametrize("prefix", ["", "/tei/tiny-m3"])
def test_embedding_routes_take_every_input_form(m3_client: TestClient, path: str, prefix: str) -> None:
    for inputs in variants(m3_client):
        body = {"inputs": inputs, "truncate": True, "truncation_direction": "Right"}
        jsonschema.validate(body, REQUESTS[path])
        response = m3_client.post(prefix + path, json=body)
        assert response.status_code == 200, (path, inputs, response.text)
        answer = response.json()
        jsonschema.validate(answer, ANSWERS[path])
        one = isinstance(inputs, str) or all(isinstance(v, int) for v in inputs)
        assert len(answer) == (1 if one else len(inputs))


def test_similarity_tokenize_decode_rerank_and_info(m3_client: TestClient) -> None:
    similarity = m3_client.post("/similarity", json={"inputs": {"source_sentence": TEXT, "sentences": [OTHER, TEXT]}})
    jsonschema.validate(similarity.json(), ANSWERS["/similarity"])
    for inputs in (TEXT, [TEXT, OTHER]):
        body: dict[str, Any] = {"inputs": inputs, "add_special_tokens": True}
        jsonschema.validate(body, REQUESTS["/tokenize"])
        jsonschema.validate(m3_client.post("/tokenize", json=body).json(), ANSWERS["/tokenize"])
    ids = ids_of(m3_client, TEXT)
    for given in (ids, [ids, ids]):
        body = {"ids": given, "skip_special_tokens": True}
        jsonschema.validate(body, REQUESTS["/decode"])
        jsonschema.validate(m3_client.post("/decode", json=body).json(), ANSWERS["/decode"])
    ranked = m3_client.post(
        "/tei/tiny-bge-reranker/rerank", json={"query": TEXT, "texts": [OTHER], "return_text": True}
    )
    jsonschema.validate(ranked.json(), ANSWERS["/rerank"])
    for model in ("tiny-m3", "tiny-bge-reranker"):
        jsonschema.validate(m3_client.get(f"/tei/{model}/info").json(), INFO)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/embed", {"inputs": []}),
        ("/embed", {"inputs": [TEXT, [10**9]]}),
        ("/embed", {"inputs": [TEXT, []]}),
        ("/embed", {"inputs": {"text": TEXT}}),
        ("/embed_sparse", {"inputs": [[-1]]}),
        ("/embed_all", {"inputs": ""}),
        ("/similarity", {"inputs": {"source_sentence": TEXT}}),
        ("/tokenize", {"inputs": [""]}),
        ("/decode", {"ids": "nope"}),
        ("/tei/nope/embed", {"inputs": TEXT}),
    ],
)
def test_errors_are_teis_body(m3_client: TestClient, path: str, body: dict[str, Any]) -> None:
    response = m3_client.post(path, json=body)
    assert 400 <= response.status_code < 500, response.text
    jsonschema.validate(response.json(), ERROR)
    assert response.json()["error_type"] in TEI_ERROR_TYPES
