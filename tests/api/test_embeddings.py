"""The OpenAI-shaped and the original template's embedding routes: shapes, token arrays, base64,
dimensions, usage, model resolution, discovery, parity across routes and bad input as a table."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from compat_api.api.embed.openai import OpenAIEmbeddingResponse
from compat_api.api.embed.sibling import EmbeddingResponse, SimilarityResponse
from compat_api.api.errors import ErrorBody, OpenAIErrorBody
from compat_api.api.models import ClusterAuth, ModelCard, ModelList
from compat_api.api.rerank.cohere import CohereRerankResponse
from compat_api.core.tokens import ENCODING

TEXTS = ["what is function compute", "function compute is alibaba cloud serverless computing service", "hello"]


def cl100k(text: str) -> list[int]:
    import tiktoken

    return list(tiktoken.get_encoding(ENCODING).encode_ordinary(text))


def vectors(response: Any) -> np.ndarray:
    assert response.status_code == 200, response.text
    parsed = OpenAIEmbeddingResponse.model_validate(response.json())
    assert [d.index for d in parsed.data] == list(range(len(parsed.data)))
    rows = []
    for item in parsed.data:
        if isinstance(item.embedding, str):
            rows.append(np.frombuffer(base64.b64decode(item.embedding), dtype="<f4"))
        else:
            rows.append(np.asarray(item.embedding, dtype=np.float32))
    return np.stack(rows)


def post(client: TestClient, body: dict[str, Any], path: str = "/v1/embeddings") -> Any:
    return client.post(path, json=body)


def test_the_bundled_model_embeds_with_no_configuration(bundled_client: TestClient) -> None:
    got = vectors(post(bundled_client, {"input": TEXTS}))
    assert got.shape == (3, 384)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    related, unrelated = float(got[0] @ got[1]), float(got[0] @ got[2])
    assert related > unrelated  # real all-MiniLM-L6-v2 weights


@pytest.mark.parametrize("path", ["/v1/embeddings", "/embeddings"])
def test_every_input_shape_gives_the_texts_vectors(stack_client: TestClient, path: str) -> None:
    want = vectors(post(stack_client, {"input": TEXTS, "model": "text-embedding-ada-002"}, path))
    assert want.shape == (3, 32)
    assert np.allclose(vectors(post(stack_client, {"input": TEXTS[0]}, path))[0], want[0], atol=1e-6)
    items = vectors(post(stack_client, {"input": [{"text": t} for t in TEXTS], "model": "jina-embeddings-v4"}, path))
    assert np.allclose(items, want, atol=1e-6)
    one_array = vectors(post(stack_client, {"input": cl100k(TEXTS[1])}, path))
    assert np.allclose(one_array[0], want[1], atol=1e-6)
    arrays = vectors(post(stack_client, {"input": [cl100k(t) for t in TEXTS]}, path))
    assert np.allclose(arrays, want, atol=1e-6)


def test_base64_is_little_endian_float32_equal_to_the_float_answer(stack_client: TestClient) -> None:
    floats = post(stack_client, {"input": TEXTS, "encoding_format": "float"})
    encoded = post(stack_client, {"input": TEXTS, "encoding_format": "base64"})
    assert all(isinstance(d["embedding"], str) for d in encoded.json()["data"])
    assert all(isinstance(d["embedding"], list) for d in floats.json()["data"])
    assert np.array_equal(vectors(floats), vectors(encoded))


def test_dimensions_keep_the_first_values_renormalized(stack_client: TestClient) -> None:
    full = vectors(post(stack_client, {"input": TEXTS}))
    for k in (0, 32):
        assert np.allclose(vectors(post(stack_client, {"input": TEXTS, "dimensions": k})), full, atol=1e-6)
    cut = vectors(post(stack_client, {"input": TEXTS, "dimensions": 8}))
    assert cut.shape == (3, 8)
    assert np.allclose(np.linalg.norm(cut, axis=1), 1.0, atol=1e-5)
    assert np.allclose(cut, full[:, :8] / np.linalg.norm(full[:, :8], axis=1, keepdims=True), atol=1e-6)


def test_usage_counts_the_models_tokens_and_model_is_echoed(stack_client: TestClient) -> None:
    response = post(stack_client, {"input": ["hello", "hello hello"], "model": "my-name"})
    parsed = OpenAIEmbeddingResponse.model_validate(response.json())
    assert parsed.model == "my-name"
    # <s> hello </s> and <s> hello hello </s> with the model's own tokenizer
    assert parsed.usage.prompt_tokens == parsed.usage.total_tokens == 3 + 4
    unnamed = OpenAIEmbeddingResponse.model_validate(post(stack_client, {"input": "hello"}).json())
    assert unnamed.model == "tiny-bge-m3"


def test_one_text_gives_one_vector_on_every_route(stack_client: TestClient) -> None:
    text = TEXTS[1]
    openai = vectors(post(stack_client, {"input": [text]}))[0]
    plain = vectors(post(stack_client, {"input": [text]}, "/embeddings"))[0]
    tokens = vectors(post(stack_client, {"input": cl100k(text)}))[0]
    sibling = EmbeddingResponse.model_validate(stack_client.post("/embedding", json={"input": text}).json())
    assert np.allclose(openai, plain, atol=0) and np.allclose(openai, tokens, atol=1e-6)
    assert np.allclose(openai, np.asarray(sibling.data[0].embedding, dtype=np.float32), atol=1e-6)


def test_the_original_templates_routes(stack_client: TestClient) -> None:
    one = EmbeddingResponse.model_validate(stack_client.post("/embedding", json={"input": "hello"}).json())
    assert one.object == "list" and len(one.data) == 1 and one.data[0].object == "embedding"
    many = EmbeddingResponse.model_validate(stack_client.post("/embedding", json={"input": TEXTS}).json())
    assert [d.index for d in many.data] == [0, 1, 2]
    full = vectors(post(stack_client, {"input": TEXTS}))
    similar = SimilarityResponse.model_validate(stack_client.post("/similarity", json={"input": TEXTS}).json())
    assert [(p.sentence1, p.sentence2) for p in similar.score] == [
        (TEXTS[0], TEXTS[1]), (TEXTS[0], TEXTS[2]), (TEXTS[1], TEXTS[2])]  # fmt: skip
    assert similar.score[0].score == pytest.approx(float(full[0] @ full[1]), abs=1e-5)


def test_each_family_resolves_on_its_own_routes(stack_client: TestClient) -> None:
    reranked = stack_client.post("/v1/rerank", json={"model": "whatever", "query": "q", "documents": ["a", "b"]})
    assert CohereRerankResponse.model_validate(reranked.json()).model == "tiny-bge-reranker"
    wrong = post(stack_client, {"input": "a", "model": "tiny-bge-reranker"})
    assert wrong.status_code == 400
    error = OpenAIErrorBody.model_validate(wrong.json())
    assert error.error.param == "model" and "is a reranker" in error.error.message
    backwards = stack_client.post("/v1/rerank", json={"model": "tiny-bge-m3", "query": "q", "documents": ["a"]})
    assert backwards.status_code == 400
    assert "is an embedding model" in ErrorBody.model_validate(backwards.json()).message


def test_discovery_lists_both_families(stack_client: TestClient) -> None:
    listing = ModelList.model_validate(stack_client.get("/v1/models").json())
    assert {(c.id, c.model_type) for c in listing.data} == {("tiny-bge-reranker", "rerank"),
                                                            ("tiny-bge-m3", "embedding")}  # fmt: skip
    for uid, family in (("tiny-bge-m3", "embedding"), ("my-embedding-uid", "embedding"),
                        ("tiny-bge-reranker", "rerank"), ("my-reranker-uid", "rerank")):  # fmt: skip
        card = ModelCard.model_validate(stack_client.get(f"/v1/models/{uid}").json())
        assert card.model_type == family and card.max_tokens > 0
    assert ClusterAuth.model_validate(stack_client.get("/v1/cluster/auth").json()).auth is False


def test_the_bundled_model_is_both_families_alone(bundled_client: TestClient) -> None:
    [card] = ModelList.model_validate(bundled_client.get("/v1/models").json()).data
    assert card.model_type == "embedding" and card.model_ability == ["embed", "rerank"]
    asked = ModelCard.model_validate(bundled_client.get("/v1/models/bge-reranker-v2-m3").json())
    assert asked.model_type == "rerank"


BAD: list[tuple[str, Any, int, str]] = [
    ("empty list", {"input": []}, 400, "input"),
    ("empty string", {"input": ""}, 400, "input"),
    ("an empty string in a list", {"input": ["a", ""]}, 400, "input[1]"),
    ("empty token array", {"input": [[]]}, 422, "input[0]"),
    ("negative id", {"input": [-1]}, 422, "input"),
    ("unassigned id", {"input": [100256]}, 422, "input"),
    ("id beyond cl100k_base", {"input": [[1, 2], [10**9]]}, 422, "input[1]"),
    ("mixed array", {"input": ["a", 1]}, 422, "input"),
    ("a number", {"input": 123}, 422, "input"),
    ("an object", {"input": {"text": "a"}}, 422, "input"),
    ("no input", {"model": "m"}, 422, "input"),
    ("booleans", {"input": [True, False]}, 422, "input"),
    ("encoding_format", {"input": "a", "encoding_format": "hex"}, 422, "encoding_format"),
    ("negative dimensions", {"input": "a", "dimensions": -1}, 422, "dimensions"),
    ("fractional dimensions", {"input": "a", "dimensions": 1.5}, 422, "dimensions"),
    ("too many dimensions", {"input": "a", "dimensions": 33}, 422, "dimensions"),
    ("too many inputs", {"input": ["a"] * 1001}, 413, "input"),
    ("too long an input", {"input": ["a" * 200_001]}, 413, "input"),
    ("too long a second input", {"input": ["a", "a" * 200_001]}, 413, "input[1]"),
    ("not JSON", "{", 400, "body"),
]


@pytest.mark.parametrize(("case", "body", "status", "field"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_4xx_openai_error_naming_the_field(
    stack_client: TestClient, case: str, body: Any, status: int, field: str
) -> None:
    if isinstance(body, str):
        response = stack_client.post("/v1/embeddings", content=body, headers={"Content-Type": "application/json"})
    else:
        response = post(stack_client, body)
    assert response.status_code == status, response.text
    error = OpenAIErrorBody.model_validate(response.json())
    assert error.detail == error.error.message and field in error.error.message
    assert error.error.param == field
    assert len(response.content) < 2048


@pytest.mark.parametrize(("path", "body"), [("/embedding", {"input": []}), ("/embedding", {"input": 5}),
                                            ("/similarity", {"input": []}), ("/similarity", {"input": "a"}),
                                            ("/similarity", {"input": ["a"] * 101})])  # fmt: skip
def test_bad_input_on_the_templates_routes_is_a_4xx(stack_client: TestClient, path: str, body: Any) -> None:
    response = stack_client.post(path, json=body)
    assert 400 <= response.status_code < 500
    assert ErrorBody.model_validate(response.json()).field == "input"


def test_the_embedding_model_hot_swaps_and_reports_its_health(
    tiny_reranker_dir: Path, tiny_embedder_dir: Path, tmp_path: Path
) -> None:
    from compat_api.api.app import create_app
    from compat_api.api.health import HealthResponse
    from tests.conftest import make_settings
    from tests.tiny_models import build_tiny_xlmr_embedder

    served = tmp_path / "bge-m3"
    shutil.copytree(tiny_embedder_dir, served)
    settings = make_settings(model_path=str(tiny_reranker_dir), embedding_model_path=str(served),
                             reload_interval=0, admin_key="adm")  # fmt: skip
    with TestClient(create_app(settings)) as client:
        health = HealthResponse.model_validate(client.get("/health").json())
        assert health.models is not None
        assert [(m.name, m.kind, m.ready) for m in health.models] == [
            ("tiny-bge-reranker", "cross-encoder", True), ("bge-m3", "embedding", True)]  # fmt: skip
        before = vectors(post(client, {"input": TEXTS}))
        build_tiny_xlmr_embedder(tmp_path / "v2", seed=7)
        shutil.copy(tmp_path / "v2" / "model.safetensors", served / "model.safetensors")
        reloaded = client.post("/admin/models/bge-m3/reload", headers={"Authorization": "Bearer adm"})
        assert reloaded.status_code == 200, reloaded.text
        after = vectors(post(client, {"input": TEXTS}))
        assert after.shape == before.shape and not np.allclose(after, before, atol=1e-3)
        assert len(vectors(post(client, {"input": TEXTS}, "/embeddings"))) == 3


def test_one_long_token_array_is_one_input(stack_client: TestClient) -> None:
    """OpenAI's cookbook sends a long text as one array of up to 8,191 ids: one input, not 1,500."""
    ids = cl100k("hello world " * 750)
    assert len(ids) > 1000
    response = post(stack_client, {"input": ids})
    assert response.status_code == 200, response.text
    assert len(vectors(response)) == 1


def test_a_bad_id_in_a_nested_token_array_is_named_by_both_indices(stack_client: TestClient) -> None:
    response = post(stack_client, {"input": [[5, -1]]})
    assert response.status_code == 422
    error = OpenAIErrorBody.model_validate(response.json()).error
    assert error.message.startswith("input[0][1]: -1 is not a cl100k_base token id") and error.param == "input[0]"
    flat = OpenAIErrorBody.model_validate(post(stack_client, {"input": [5, -1]}).json()).error
    assert flat.message.startswith("input[1]: -1 is not") and flat.param == "input"
