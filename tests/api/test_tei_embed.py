"""TEI's embedding routes and the paths they share: /embed (TEI inputs | Cohere texts), /similarity
(TEI | the original template), /tokenize (TEI | Cohere), /decode, and a TEI base URL per model
(Dify's TEI provider: /info, then /v1/embeddings without a model)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from compat_api.api.app import create_app
from compat_api.api.embed.openai import OpenAIEmbeddingResponse
from compat_api.api.embed.sibling import SimilarityResponse
from compat_api.api.embed.tei import TeiToken
from compat_api.api.errors import TeiErrorBody
from compat_api.api.rerank.tei import TeiInfo, TeiRank
from tests.conftest import make_settings

TEXTS = ["what is function compute", "function compute is alibaba cloud serverless computing service", "hello"]


def reference(client: TestClient, texts: list[str]) -> np.ndarray:
    parsed = OpenAIEmbeddingResponse.model_validate(client.post("/v1/embeddings", json={"input": texts}).json())
    return np.asarray([d.embedding for d in parsed.data], dtype=np.float32)


def test_embed_by_its_keys(stack_client: TestClient) -> None:
    want = reference(stack_client, TEXTS)
    tei = stack_client.post("/embed", json={"inputs": TEXTS, "normalize": True, "truncate": True})
    assert tei.status_code == 200 and np.allclose(np.asarray(tei.json()), want, atol=1e-6)
    one = stack_client.post("/embed", json={"inputs": TEXTS[0]}).json()
    assert len(one) == 1 and np.allclose(one[0], want[0], atol=1e-6)
    raw = np.asarray(stack_client.post("/embed", json={"inputs": TEXTS, "normalize": False}).json())
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-3)
    assert np.allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), want, atol=1e-5)
    cut = np.asarray(stack_client.post("/embed", json={"inputs": TEXTS, "dimensions": 8}).json())
    assert cut.shape == (3, 8)
    cohere = stack_client.post("/embed", json={"texts": TEXTS}).json()
    assert cohere["response_type"] == "embeddings_floats" and np.allclose(cohere["embeddings"], want, atol=1e-6)


def test_similarity_by_its_keys(stack_client: TestClient) -> None:
    want = reference(stack_client, TEXTS)
    body = {"inputs": {"source_sentence": TEXTS[0], "sentences": TEXTS[1:]}}
    tei = stack_client.post("/similarity", json=body).json()
    assert tei == pytest.approx([float(want[0] @ want[1]), float(want[0] @ want[2])], abs=1e-5)
    sibling = SimilarityResponse.model_validate(stack_client.post("/similarity", json={"input": TEXTS}).json())
    assert sibling.score[0].score == pytest.approx(tei[0], abs=1e-5)


def test_tokenize_and_decode(stack_client: TestClient) -> None:
    [framed] = stack_client.post("/tokenize", json={"inputs": "hello paris"}).json()
    specials = [TeiToken.model_validate(t) for t in framed if t["special"]]
    assert [(t.text, t.start) for t in specials] == [("<s>", None), ("</s>", None)]
    [tokens] = stack_client.post("/tokenize", json={"inputs": "hello paris", "add_special_tokens": False}).json()
    parsed = [TeiToken.model_validate(t) for t in tokens]
    assert len(parsed) == len(framed) - 2 and not any(t.special for t in parsed)
    assert "".join(t.text.strip() for t in parsed) == "helloparis"
    assert all("hello paris"[t.start : t.stop] == t.text for t in parsed if t.start is not None)
    cohere = stack_client.post("/tokenize", json={"text": "hello paris"}).json()
    assert cohere["tokens"] == [t.id for t in parsed]
    decoded = stack_client.post("/decode", json={"ids": [t.id for t in parsed]}).json()
    assert [d.strip() for d in decoded] == ["hello paris"]


def test_a_tei_base_url_per_model_for_difys_provider(stack_client: TestClient) -> None:
    embedder = TeiInfo.model_validate(stack_client.get("/tei/tiny-bge-m3/info").json())
    assert next(iter(embedder.model_type)) == "embedding" and embedder.model_type["embedding"]["pooling"] == "cls"
    reranker = TeiInfo.model_validate(stack_client.get("/tei/tiny-bge-reranker/info").json())
    assert next(iter(reranker.model_type)) == "reranker"
    embedded = stack_client.post("/tei/tiny-bge-m3/v1/embeddings", json={"input": TEXTS})  # no model: Dify's TEI
    assert np.allclose([d["embedding"] for d in embedded.json()["data"]], reference(stack_client, TEXTS), atol=1e-6)
    ranked = stack_client.post("/tei/tiny-bge-reranker/rerank", json={"query": "q", "texts": ["a", "b"]})
    assert len([TeiRank.model_validate(r) for r in ranked.json()]) == 2
    assert stack_client.post("/tei/tiny-bge-m3/embed", json={"inputs": "hello"}).status_code == 200
    wrong = stack_client.post("/tei/tiny-bge-reranker/embed", json={"inputs": "hello"})
    assert wrong.status_code == 400 and "is a reranker" in TeiErrorBody.model_validate(wrong.json()).error
    missing = stack_client.get("/tei/nope/info")
    assert missing.status_code == 404 and TeiErrorBody.model_validate(missing.json()).error_type == "model_not_found"


BAD: list[tuple[str, Any, int]] = [
    ("/embed", {"inputs": []}, 400),
    ("/embed", {"inputs": ""}, 400),
    ("/embed", {"inputs": 5}, 422),
    ("/embed", {"inputs": ["a"], "dimensions": 999}, 422),
    ("/similarity", {"inputs": {"source_sentence": "a", "sentences": []}}, 400),
    ("/similarity", {"inputs": {"sentences": ["a"]}}, 422),
    ("/tokenize", {"inputs": ""}, 400),
    ("/decode", {"ids": [10**9]}, 422),
    ("/tei/tiny-bge-m3/embed", {"inputs": []}, 400),
]


@pytest.mark.parametrize(("path", "body", "status"), BAD)
def test_bad_input_is_a_tei_error(stack_client: TestClient, path: str, body: Any, status: int) -> None:
    response = stack_client.post(path, json=body)
    assert response.status_code == status, response.text
    assert TeiErrorBody.model_validate(response.json()).error


def test_sparse_and_multi_vector_outputs_over_tei(tmp_path: Path, tiny_embedder_dir: Path) -> None:
    """bge-m3's lexical weights on /embed_sparse equal FlagEmbedding's; /embed_all gives its ColBERT
    vectors; a model without the heads answers TEI's model error (424), not a 500."""
    from FlagEmbedding import BGEM3FlagModel

    from compat_api.api.embed.tei import SparseValue
    from tests.tiny_models import build_tiny_xlmr_embedder

    m3 = build_tiny_xlmr_embedder(tmp_path / "bge-m3", heads=True)
    want = BGEM3FlagModel(str(m3), use_fp16=False, devices="cpu").encode(
        TEXTS, max_length=128, return_sparse=True, return_colbert_vecs=True)  # fmt: skip
    settings = make_settings(embedding_model_path=str(m3), models=f"plain={tiny_embedder_dir}", max_length=128,
                             reload_interval=0)  # fmt: skip
    with TestClient(create_app(settings)) as client:
        sparse = client.post("/embed_sparse", json={"inputs": TEXTS, "model": "ignored"})
        assert sparse.status_code == 200, sparse.text
        for got, lexical in zip(sparse.json(), want["lexical_weights"], strict=True):
            values = {str(v.index): v.value for v in (SparseValue.model_validate(x) for x in got)}
            assert set(values) == set(lexical)
            assert all(abs(values[k] - float(w)) <= 1e-4 for k, w in lexical.items())
        vectors = client.post("/embed_all", json={"inputs": TEXTS}).json()
        for got, colbert in zip(vectors, want["colbert_vecs"], strict=True):
            assert np.abs(np.asarray(got) - np.asarray(colbert)).max() <= 1e-4
        failed = client.post("/tei/plain/embed_sparse", json={"inputs": "hello"})
        assert failed.status_code == 424
        assert "no sparse and multi-vector heads" in TeiErrorBody.model_validate(failed.json()).error
        per_token = client.post("/tei/plain/embed_all", json={"inputs": "hello"}).json()
        assert len(per_token) == 1 and len(per_token[0][0]) == 32


def test_token_id_inputs_are_the_models_own(stack_client: TestClient) -> None:
    """TEI's `/embed` reads token arrays as the model's ids: the ids of a text (specials included) embed as it."""
    [tokens] = stack_client.post("/tokenize", json={"inputs": TEXTS[1]}).json()
    ids = [t["id"] for t in tokens]  # <s> … </s> included, as the tokenizer frames a text
    by_ids = stack_client.post("/embed", json={"inputs": [ids]})
    assert by_ids.status_code == 200, by_ids.text
    assert np.allclose(by_ids.json()[0], reference(stack_client, [TEXTS[1]])[0], atol=1e-6)
    one = stack_client.post("/embed", json={"inputs": ids}).json()  # a single input as ids
    assert len(one) == 1 and np.allclose(one[0], by_ids.json()[0], atol=1e-6)
    bad_inputs: list[list[list[int]]] = [[[]], [[10**9]], [[1, -1]]]
    for bad in bad_inputs:
        response = stack_client.post("/embed", json={"inputs": bad})
        assert 400 <= response.status_code < 500 and TeiErrorBody.model_validate(response.json()).error


def test_texts_and_token_ids_mixed_in_one_request(stack_client: TestClient) -> None:
    """TEI's `Input` is a list of `InputType`s: texts and id arrays side by side, each vector in its
    place, equal to the same input sent alone; usage counts both."""
    [tokens] = stack_client.post("/tokenize", json={"inputs": TEXTS[1]}).json()
    ids = [t["id"] for t in tokens]
    mixed = stack_client.post("/embed", json={"inputs": [TEXTS[0], ids, TEXTS[2], ids]})
    assert mixed.status_code == 200, mixed.text
    want = reference(stack_client, TEXTS)
    got = np.asarray(mixed.json())
    assert got.shape == (4, want.shape[1])
    assert np.allclose(got[[0, 1, 2]], want, atol=1e-6) and np.allclose(got[3], want[1], atol=1e-6)
    wrong = stack_client.post("/embed", json={"inputs": ["a", [1, 10**9]]})
    assert wrong.status_code == 422 and "inputs[1][1]" in TeiErrorBody.model_validate(wrong.json()).error
    empty = stack_client.post("/embed", json={"inputs": ["a", []]})
    assert empty.status_code == 400 and "inputs[1]" in TeiErrorBody.model_validate(empty.json()).error


def test_tei_tokens_cover_their_own_span_as_teis_tokenizer_offsets_say(bundled_client: TestClient) -> None:
    """TEI's `text`, `start` and `stop` are the tokenizer's offsets: "Hello" is 0-5, not "Hello " 0-6."""
    [tokens] = bundled_client.post("/tokenize", json={"inputs": "Hello World", "add_special_tokens": False}).json()
    parsed = [TeiToken.model_validate(t) for t in tokens]
    assert [(t.text, t.start, t.stop) for t in parsed] == [("Hello", 0, 5), ("World", 6, 11)]
    cohere = bundled_client.post("/tokenize", json={"text": "Hello World"}).json()
    assert "".join(cohere["token_strings"]) == "Hello World", "Cohere's token strings still rebuild the text"
    for raw in (b'{"inputs": "a \\udfff b"}', b'{"text": "a \\udfff b"}'):  # TEI's, then Cohere's
        broken = bundled_client.post("/tokenize", content=raw, headers={"content-type": "application/json"})
        assert broken.status_code == 200, broken.text
    assert "".join(broken.json()["token_strings"]) == "a \ufffd b", "sent back as the model read it"


def test_one_long_token_array_is_one_input_not_a_document_list(stack_client: TestClient) -> None:
    """The document limit (1,000) counts inputs: 1,200 ids are one input, cut to the window."""
    [tokens] = stack_client.post("/tokenize", json={"inputs": "hello", "add_special_tokens": False}).json()
    ids = [tokens[0]["id"]] * 1200
    for body in ({"inputs": ids}, {"inputs": [ids]}):
        response = stack_client.post("/embed", json=body)
        assert response.status_code == 200, response.text
        assert len(response.json()) == 1
    decoded = stack_client.post("/decode", json={"ids": ids})
    assert decoded.status_code == 200 and decoded.json()[0].count("hello") == 1200
    cohere = stack_client.post("/v1/detokenize", json={"tokens": ids})
    assert cohere.status_code == 200 and cohere.json()["text"].count("hello") == 1200


def test_similarity_errors_name_the_sentence_at_fault(stack_client: TestClient) -> None:
    empty = stack_client.post("/similarity", json={"inputs": {"source_sentence": "a", "sentences": ["b", ""]}})
    assert empty.status_code == 400
    assert TeiErrorBody.model_validate(empty.json()).error.startswith("inputs.sentences[1] is an empty string")
    source = stack_client.post("/similarity", json={"inputs": {"source_sentence": "", "sentences": ["b"]}})
    assert TeiErrorBody.model_validate(source.json()).error.startswith("inputs.source_sentence is an empty string")


def test_texts_and_token_ids_in_one_request_share_its_caps(tiny_reranker_dir: Path, tiny_embedder_dir: Path) -> None:
    """A mixed request is one request to the engine: 6 texts and 6 id arrays of 5 tokens are 60
    tokens, over a cap of 40 (each half alone would pass), and nothing of it is left running."""
    settings = make_settings(model_path=str(tiny_reranker_dir), embedding_model_path=str(tiny_embedder_dir),
                             max_request_tokens=40, reload_interval=0)  # fmt: skip
    with TestClient(create_app(settings)) as client:
        [tokens] = client.post("/tokenize", json={"inputs": "hello paris berlin"}).json()
        ids = [t["id"] for t in tokens]
        assert len(ids) == 5  # <s> hello paris berlin </s>
        half = client.post("/embed", json={"inputs": ["hello paris berlin"] * 3 + [ids] * 3})
        assert half.status_code == 200 and len(half.json()) == 6
        over = client.post("/embed", json={"inputs": [f"hello paris {w}" for w in ("a", "b", "c", "d", "e", "f")]
                                           + [ids] * 6})  # fmt: skip
        assert over.status_code == 413, over.text
        assert "RERANK_MAX_REQUEST_TOKENS" in TeiErrorBody.model_validate(over.json()).error
        assert client.app.state.registry.embedder(None).engine.queued_items == 0  # type: ignore[attr-defined]


def test_too_many_inputs_are_a_413_whatever_their_shape(stack_client: TestClient) -> None:
    inputs: list[Any] = ["a"] * 600 + [[5, 6]] * 600
    response = stack_client.post("/embed", json={"inputs": inputs})
    assert response.status_code == 413
    assert TeiErrorBody.model_validate(response.json()).error.startswith("inputs: 1200 items exceed the limit of 1000")


def test_an_answer_of_per_token_vectors_has_a_size_limit_checked_before_the_model_runs(
    stack_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/embed_all answers a vector per token: a small request can ask for hundreds of MB, so its
    tokens are capped (413) before any model work. Here the cap is made small: 20 tokens."""
    import compat_api.core.embed as core_embed

    width = len(stack_client.post("/embed", json={"inputs": "hello"}).json()[0])
    monkeypatch.setattr(core_embed, "MAX_TOKEN_VECTOR_FLOATS", 20 * width)
    engine = stack_client.app.state.registry.embedder(None).engine  # type: ignore[attr-defined]
    before = engine.batches_run
    over = stack_client.post("/embed_all", json={"inputs": ["hello paris berlin"] * 5})  # 5 x 5 tokens
    assert over.status_code == 413
    assert "send fewer or shorter inputs" in TeiErrorBody.model_validate(over.json()).error
    assert engine.batches_run == before, "refused before the model ran"
    fits = stack_client.post("/embed_all", json={"inputs": ["hello paris berlin"] * 4})
    assert fits.status_code == 200 and [len(v) for v in fits.json()] == [5] * 4
    assert stack_client.post("/embed_sparse", json={"inputs": ["hello paris berlin"] * 5}).status_code != 413
