"""Cohere's embedding dialect: the real cohere SDK (v1 with and without embedding_types, v2,
tokenize) and LangChain's CohereEmbeddings against uvicorn, a replay of Dify's Cohere provider
(tokenize, chunk, embed), parity with the OpenAI route, quantized types, and bad input."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from compat_api.api.embed.cohere import CohereEmbedResponse, TokenizeResponse
from compat_api.api.embed.openai import OpenAIEmbeddingResponse
from compat_api.api.errors import ErrorBody
from compat_api.core.embed import quantize
from tests.servers import serving

pytestmark = [
    pytest.mark.filterwarnings("ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning"),
    # cohere's own embed-response code reads model_fields on an instance (pydantic 2.11 deprecation)
    pytest.mark.filterwarnings("ignore:Accessing the 'model_fields' attribute on the instance:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The `parse_obj` method is deprecated:DeprecationWarning"),
]

TEXTS = ["what is function compute", "function compute is alibaba cloud serverless computing service", "hello"]


def openai_vectors(client: TestClient, texts: list[str]) -> np.ndarray:
    parsed = OpenAIEmbeddingResponse.model_validate(client.post("/v1/embeddings", json={"input": texts}).json())
    return np.asarray([d.embedding for d in parsed.data], dtype=np.float32)


def test_v1_without_types_is_a_float_list_equal_to_the_openai_route(stack_client: TestClient) -> None:
    response = stack_client.post("/v1/embed", json={"texts": TEXTS, "model": "embed-multilingual-v3.0",
                                                    "input_type": "search_document"})  # fmt: skip
    parsed = CohereEmbedResponse.model_validate(response.json())
    assert parsed.response_type == "embeddings_floats" and parsed.id and parsed.texts == TEXTS
    assert parsed.meta.billed_units.input_tokens > 0
    assert isinstance(parsed.embeddings, list)
    assert np.allclose(np.asarray(parsed.embeddings), openai_vectors(stack_client, TEXTS), atol=1e-6)
    same = stack_client.post("/embed", json={"texts": TEXTS}).json()
    assert np.allclose(np.asarray(same["embeddings"]), np.asarray(parsed.embeddings), atol=1e-6)


def test_types_and_v2(stack_client: TestClient) -> None:
    types = ["float", "int8", "uint8", "binary", "ubinary"]
    v1 = CohereEmbedResponse.model_validate(
        stack_client.post("/v1/embed", json={"texts": TEXTS, "embedding_types": types}).json())  # fmt: skip
    assert v1.response_type == "embeddings_by_type" and isinstance(v1.embeddings, dict)
    assert set(v1.embeddings) == set(types)
    floats = np.asarray(v1.embeddings["float"], dtype=np.float32)
    assert np.array_equal(np.asarray(v1.embeddings["int8"]), quantize(floats, "int8"))
    assert np.asarray(v1.embeddings["int8"]).max() <= 127 and np.asarray(v1.embeddings["uint8"]).min() >= 0
    assert np.asarray(v1.embeddings["binary"]).shape == (3, 32 // 8)
    v2 = CohereEmbedResponse.model_validate(
        stack_client.post("/v2/embed", json={"texts": TEXTS, "input_type": "search_query",
                                             "output_dimension": 8}).json())  # fmt: skip
    assert isinstance(v2.embeddings, dict) and list(v2.embeddings) == ["float"]
    cut = np.asarray(v2.embeddings["float"])
    assert cut.shape == (3, 8) and np.allclose(np.linalg.norm(cut, axis=1), 1.0, atol=1e-5)
    inputs = [{"content": [{"type": "text", "text": t}]} for t in TEXTS]
    by_inputs = stack_client.post("/v2/embed", json={"inputs": inputs, "input_type": "search_document"}).json()
    assert np.allclose(np.asarray(by_inputs["embeddings"]["float"]), floats, atol=1e-6)


def test_tokenize_strings_join_back_to_the_text_and_detokenize(stack_client: TestClient) -> None:
    for text in ("what is function compute", "  leading and trailing  ", "什么是函数计算, hello!"):
        tokens = TokenizeResponse.model_validate(stack_client.post("/v1/tokenize", json={"text": text}).json())
        assert "".join(tokens.token_strings) == text and len(tokens.tokens) == len(tokens.token_strings)
    ids = stack_client.post("/v1/tokenize", json={"text": "hello paris"}).json()["tokens"]
    assert stack_client.post("/v1/detokenize", json={"tokens": ids}).json()["text"].strip() == "hello paris"


def test_dify_cohere_replay(stack_client: TestClient) -> None:
    """Dify's Cohere provider: tokenize, re-join the strings in chunks, embed; reads id, embeddings, tokens."""
    headers = {"Authorization": "Bearer placeholder", "X-Fern-Language": "Python", "X-Fern-SDK-Name": "cohere",
               "X-Fern-SDK-Version": "5.2.6"}  # fmt: skip
    text = "function compute is alibaba cloud serverless computing service " * 3
    tokenized = stack_client.post("/v1/tokenize", json={"text": text, "model": "embed-custom"}, headers=headers)
    strings = tokenized.json()["token_strings"]
    chunks = ["".join(strings[i : i + 8]) for i in range(0, len(strings), 8)]
    assert "".join(chunks) == text
    body = {"texts": chunks, "model": "embed-custom", "input_type": "search_document"}
    embedded = stack_client.post("/v1/embed", json=body, headers=headers).json()
    assert embedded["id"] and len(embedded["embeddings"]) == len(chunks)
    assert int(embedded["meta"]["billed_units"]["input_tokens"]) > 0


BAD: list[tuple[str, dict[str, Any], int, str]] = [
    ("/v1/embed", {"texts": []}, 400, "texts"),
    ("/v1/embed", {"texts": ["a", ""]}, 400, "texts[1]"),
    ("/v1/embed", {"texts": "a"}, 422, "texts"),
    ("/v1/embed", {"texts": ["a"], "embedding_types": ["int4"]}, 422, "embedding_types"),
    ("/v2/embed", {"input_type": "search_query"}, 400, "inputs"),
    ("/v2/embed", {"texts": ["a"], "output_dimension": 999}, 422, "output_dimension"),
    ("/v1/tokenize", {"text": ""}, 400, "text"),
    ("/v1/detokenize", {"tokens": [10**9]}, 422, "tokens"),
    ("/v1/detokenize", {"tokens": []}, 422, "tokens"),
    ("/v1/detokenize", {"tokens": [-1]}, 422, "tokens"),
    ("/v1/embed", {"texts": ["a"], "model": "tiny-bge-reranker"}, 400, "model"),
]


@pytest.mark.parametrize(("path", "body", "status", "field"), BAD)
def test_bad_input_is_a_4xx_with_a_message(stack_client: TestClient, path: str, body: dict[str, Any], status: int,
                                           field: str) -> None:  # fmt: skip
    response = stack_client.post(path, json=body)
    assert response.status_code == status, response.text
    assert field in ErrorBody.model_validate(response.json()).message


@pytest.fixture(scope="module")
def server(tiny_reranker_dir: Path, tiny_embedder_dir: Path) -> Iterator[str]:
    args = ["--model-path", str(tiny_reranker_dir), "--embedding-model-path", str(tiny_embedder_dir)]
    with serving(args, env={**os.environ, "RERANK_API_KEYS": "key"}) as url:
        yield url
    gc.collect()


def test_the_cohere_sdk_and_langchain(server: str) -> None:
    import cohere
    from langchain_cohere import CohereEmbeddings

    client = cohere.Client(api_key="key", base_url=server)
    floats = client.embed(texts=TEXTS, model="embed-multilingual-v3.0", input_type="search_document")
    assert floats.response_type == "embeddings_floats" and len(floats.embeddings) == 3
    typed = client.embed(texts=TEXTS, model="m", input_type="search_document", embedding_types=["float", "int8"])
    assert typed.response_type == "embeddings_by_type"
    by_type = typed.embeddings
    assert not isinstance(by_type, list) and by_type.float_ is not None
    assert np.allclose(by_type.float_, floats.embeddings, atol=1e-6)
    tokens = client.tokenize(text="hello paris", model="m")
    assert "".join(tokens.token_strings) == "hello paris"
    v2 = cohere.ClientV2(api_key="key", base_url=server).embed(
        texts=TEXTS, model="m", input_type="search_document", embedding_types=["float"])  # fmt: skip
    assert v2.embeddings.float_ is not None
    assert np.allclose(v2.embeddings.float_, floats.embeddings, atol=1e-6)
    langchain = CohereEmbeddings(cohere_api_key="key", base_url=server, model="embed-multilingual-v3.0")  # type: ignore[call-arg]
    assert np.allclose(langchain.embed_documents(TEXTS), floats.embeddings, atol=1e-6)
    assert len(langchain.embed_query(TEXTS[0])) == 32


def test_truncate_end_start_and_none(stack_client: TestClient) -> None:
    long = "paris " * 400 + "berlin " * 400  # longer than the window at both ends

    def vector(body: dict[str, Any]) -> np.ndarray:
        response = stack_client.post("/v1/embed", json={"texts": [long], **body})
        assert response.status_code == 200, response.text
        return np.asarray(response.json()["embeddings"][0])

    end, start = vector({}), vector({"truncate": "START"})
    assert np.allclose(vector({"truncate": "END"}), end, atol=1e-6) and not np.allclose(start, end, atol=1e-3)
    tei_left = stack_client.post("/embed", json={"inputs": long, "truncation_direction": "Left"}).json()[0]
    assert np.allclose(tei_left, start, atol=1e-6)
    refused = stack_client.post("/v1/embed", json={"texts": ["short", long], "truncate": "NONE"})
    assert refused.status_code == 413 and "texts[1]" in ErrorBody.model_validate(refused.json()).message
    assert stack_client.post("/v1/embed", json={"texts": ["short"], "truncate": "NONE"}).status_code == 200


@pytest.mark.parametrize("max_tokens", [1, 2, 3])
def test_v2_max_tokens_below_the_special_tokens_keeps_one_token_of_text(
    stack_client: TestClient, max_tokens: int
) -> None:
    """A window of 1 or 2 tokens cannot hold <s>, a token and </s>: every such request reads
    those three (the tokenizer would otherwise refuse to cut and hand back the whole text)."""
    long = "hello world " * 400
    body: dict[str, Any] = {"texts": [long], "input_type": "search_document", "embedding_types": ["float"]}
    ends = []
    for truncate in ("END", "START", "NONE"):
        response = stack_client.post("/v2/embed", json={**body, "max_tokens": max_tokens, "truncate": truncate})
        if truncate == "NONE":
            assert response.status_code == 413 and "texts[0] has" in ErrorBody.model_validate(response.json()).message
            continue
        assert response.status_code == 200, response.text
        parsed = CohereEmbedResponse.model_validate(response.json())
        assert parsed.meta.billed_units.input_tokens == 3
        assert isinstance(parsed.embeddings, dict)
        ends.append(np.asarray(parsed.embeddings["float"]))
    one = stack_client.post("/v2/embed", json={**body, "texts": ["hello"]}).json()["embeddings"]["float"]
    assert np.allclose(ends[0], one, atol=1e-5), "END keeps the first token: the embedding of 'hello'"


def test_v2_errors_name_v2s_own_fields(stack_client: TestClient) -> None:
    too_wide = stack_client.post("/v2/embed", json={"texts": ["a"], "input_type": "search_document",
                                                    "output_dimension": 100_000})  # fmt: skip
    parsed = ErrorBody.model_validate(too_wide.json())
    assert too_wide.status_code == 422 and parsed.field == "output_dimension" and "output_dimension" in parsed.message
    item = {"content": [{"type": "text", "text": "hello world " * 400}]}
    refused = stack_client.post("/v2/embed", json={"inputs": [{"content": [{"type": "text", "text": "a"}]}, item],
                                                   "input_type": "search_document", "truncate": "NONE"})  # fmt: skip
    assert refused.status_code == 413 and ErrorBody.model_validate(refused.json()).field == "inputs[1]"
