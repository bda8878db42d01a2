"""Real clients against a real uvicorn on 127.0.0.1: the cohere SDK (v1 and v2), LangChain's
CohereRerank and LlamaIndex's Cohere and Jina rerank postprocessors, each with and without an
API key configured on the server."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import serving

# The SDKs and integrations open HTTP connections they never close; named, not hidden.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning"),
]

KEY = "sk-compat-api-test"
QUERY = "what is the capital of france"
DOCS = ["berlin is the capital of germany", "paris is the capital of france", "cats", "how do i bake bread"]


@pytest.fixture(scope="module", params=["no key", "key"])
def server(request: pytest.FixtureRequest, tiny_reranker_dir: Path) -> Iterator[tuple[str, str]]:
    """(base URL, the key a client sends). Without keys configured the SDKs still need some token."""
    import os

    configured = request.param == "key"
    env = {**os.environ, "RERANK_API_KEYS": KEY if configured else ""}
    with serving(["--model-path", str(tiny_reranker_dir)], env=env) as url:
        yield url, (KEY if configured else "any-token")
    gc.collect()  # let leaked client sockets go while this module's warning filters apply


def expected_order(url: str, key: str) -> list[int]:
    import httpx

    response = httpx.post(url + "/rerank", json={"query": QUERY, "compare_to": DOCS},
                          headers={"Authorization": f"Bearer {key}"}, timeout=30)  # fmt: skip
    scores = response.json()["data"]
    return sorted(range(len(DOCS)), key=lambda i: -scores[i])


def test_server_rejects_the_wrong_key_when_configured(server: tuple[str, str]) -> None:
    import cohere

    url, key = server
    client = cohere.Client(api_key="wrong-key", base_url=url)
    if key == KEY:
        with pytest.raises(cohere.core.ApiError) as info:
            client.rerank(model="m", query=QUERY, documents=DOCS)
        assert info.value.status_code == 401
    else:
        assert len(client.rerank(model="m", query=QUERY, documents=DOCS).results) == len(DOCS)


@pytest.mark.parametrize("client_class", ["ClientV1", "Client"])
@pytest.mark.parametrize("return_documents", [False, True])
def test_cohere_sdk_v1(server: tuple[str, str], client_class: str, return_documents: bool) -> None:
    import cohere

    if not hasattr(cohere, client_class):
        pytest.skip(f"cohere {cohere.__version__} has no {client_class} (langchain-cohere pins cohere<6; Client is v1)")
    url, key = server
    client = getattr(cohere, client_class)(api_key=key, base_url=url)
    response = client.rerank(model="rerank-english-v3.0", query=QUERY, documents=DOCS, top_n=3,
                             return_documents=return_documents)  # fmt: skip
    assert [r.index for r in response.results] == expected_order(url, key)[:3]
    scores = [r.relevance_score for r in response.results]
    assert scores == sorted(scores, reverse=True)
    for result in response.results:
        if return_documents:
            assert result.document is not None and result.document.text == DOCS[result.index]
        else:
            assert result.document is None
    assert response.meta is not None and response.meta.billed_units is not None
    assert response.meta.billed_units.search_units == 1


def test_cohere_sdk_v2(server: tuple[str, str]) -> None:
    import cohere

    url, key = server
    client = cohere.ClientV2(api_key=key, base_url=url)
    response = client.rerank(model="rerank-v3.5", query=QUERY, documents=DOCS, top_n=2, max_tokens_per_doc=512)
    assert [r.index for r in response.results] == expected_order(url, key)[:2]


def test_langchain_cohere_rerank(server: tuple[str, str]) -> None:
    from langchain_cohere import CohereRerank
    from langchain_core.documents import Document

    url, key = server
    reranker = CohereRerank(cohere_api_key=key, base_url=url, model="rerank-v3.5", top_n=2)
    kept = reranker.compress_documents([Document(page_content=d) for d in DOCS], QUERY)
    order = expected_order(url, key)
    assert [d.page_content for d in kept] == [DOCS[i] for i in order[:2]]
    assert all("relevance_score" in d.metadata for d in kept)


def nodes() -> list[object]:
    from llama_index.core.schema import NodeWithScore, TextNode

    return [NodeWithScore(node=TextNode(text=d), score=0.0) for d in DOCS]


def test_llama_index_cohere_rerank(server: tuple[str, str]) -> None:
    from llama_index.postprocessor.cohere_rerank import CohereRerank

    url, key = server
    reranker = CohereRerank(api_key=key, base_url=url, top_n=2, model="rerank-v3.5")
    kept = reranker.postprocess_nodes(nodes(), query_str=QUERY)
    assert [n.node.get_content() for n in kept] == [DOCS[i] for i in expected_order(url, key)[:2]]


def test_llama_index_jina_rerank(server: tuple[str, str]) -> None:
    from llama_index.postprocessor.jinaai_rerank import JinaRerank

    url, key = server
    reranker = JinaRerank(api_key=key, base_url=url + "/v1", top_n=3, model="jina-reranker-v2-base-multilingual")
    kept = reranker.postprocess_nodes(nodes(), query_str=QUERY)
    assert [n.node.get_content() for n in kept] == [DOCS[i] for i in expected_order(url, key)[:3]]
    scores = [n.score for n in kept]
    assert scores == sorted(scores, reverse=True)
