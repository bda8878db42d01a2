"""The embedding family and use case: pooling as the model says, vectors equal to FlagEmbedding's
`encode` alone and batched with other requests, dimensions, limits, and family resolution."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from compat_api.core.embed import EmbedQuery, detokenize, embed, pairwise, shape, tokenize
from compat_api.core.errors import EmptyInput, InvalidInput, LimitExceeded, ModelLoadError, ModelNotFound, WrongFamily
from compat_api.core.models.embedder import Embedder, detect_pooling
from compat_api.core.registry import ModelRegistry, bundled_model_path
from compat_api.core.rerank import RerankQuery, rerank
from tests.conftest import make_settings
from tests.tiny_models import build_tiny_xlmr_embedder

T = TypeVar("T")

TEXTS = [
    "what is function compute",
    "function compute is alibaba cloud serverless computing service",
    "hello",
    "the capital of france is paris " * 20,
    "什么是函数计算",
    "cats are small domesticated animals dogs are loyal pets",
]


def flag_vectors(path: str, pooling: str, texts: list[str], max_length: int) -> np.ndarray:
    """FlagEmbedding's own vectors (the reference)."""
    from FlagEmbedding import FlagModel

    model = FlagModel(path, pooling_method=pooling, normalize_embeddings=True, use_fp16=False, devices="cpu")
    return np.asarray(model.encode(texts, max_length=max_length, batch_size=4), dtype=np.float32)


def assert_same_vectors(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    cosines = (got * want).sum(axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert cosines.min() >= 0.99999
    assert np.abs(got - want).max() <= 1e-4


def run_registry(settings_kwargs: dict[str, Any], body: Callable[[ModelRegistry], Awaitable[T]]) -> T:
    async def go() -> T:
        registry = ModelRegistry(make_settings(reload_interval=0, **settings_kwargs))
        await asyncio.to_thread(registry.load)
        registry.start()
        try:
            return await body(registry)
        finally:
            await registry.close()

    return asyncio.run(go())


def test_pooling_comes_from_the_directory(tmp_path: Path) -> None:
    assert detect_pooling(bundled_model_path()) == "mean"  # all-MiniLM-L6-v2's 1_Pooling
    assert detect_pooling(build_tiny_xlmr_embedder(tmp_path / "plain")) == "cls"  # FlagEmbedding's default
    assert detect_pooling(build_tiny_xlmr_embedder(tmp_path / "cls", pooling="cls")) == "cls"
    assert detect_pooling(build_tiny_xlmr_embedder(tmp_path / "mean", pooling="mean")) == "mean"
    with pytest.raises(ModelLoadError, match="pooling_mode_max_tokens"):
        detect_pooling(build_tiny_xlmr_embedder(tmp_path / "max", pooling="max"))


@pytest.mark.parametrize("which", ["tiny bge-m3-like (CLS)", "bundled all-MiniLM-L6-v2 (mean)"])
def test_vectors_equal_flagembedding_encode_alone_and_batched(which: str, tiny_embedder_dir: Path) -> None:
    path = str(tiny_embedder_dir) if which.startswith("tiny") else bundled_model_path()
    pooling = "cls" if which.startswith("tiny") else "mean"
    window = 128
    want = flag_vectors(path, pooling, TEXTS, window)

    async def body(registry: ModelRegistry) -> list[np.ndarray]:
        alone = [(await embed(registry, EmbedQuery(inputs=[text]))).vectors[0] for text in TEXTS]
        # every text again, in concurrent requests whose items share the engine's batches
        mixed = await asyncio.gather(*(embed(registry, EmbedQuery(inputs=TEXTS[i::2])) for i in range(2)))
        together = np.empty_like(np.stack(alone))
        together[0::2], together[1::2] = mixed[0].vectors, mixed[1].vectors
        return [np.stack(alone), together]

    alone, together = run_registry({"embedding_model_path": path, "max_length": window}, body)
    assert_same_vectors(alone, want)
    assert_same_vectors(together, want)


def test_dimensions_cut_and_renormalize() -> None:
    vectors = np.array([[3.0, 4.0, 12.0], [1.0, 0.0, 0.0]], dtype=np.float32)
    cut = shape(vectors, 2, True)
    assert cut.shape == (2, 2)
    assert np.allclose(np.linalg.norm(cut, axis=1), 1.0)
    assert np.allclose(cut[0], [0.6, 0.8])
    assert shape(vectors, 0, True).shape == (2, 3)
    assert shape(vectors, None, False)[0].tolist() == [3.0, 4.0, 12.0]


def test_pairwise_is_every_pair_in_order() -> None:
    unit = shape(np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32), None, True)
    pairs = pairwise(unit)
    assert [(i, j) for i, j, _ in pairs] == [(0, 1), (0, 2), (1, 2)]
    assert pairs[0][2] == pytest.approx(0.0) and pairs[1][2] == pytest.approx(2**-0.5)


def test_bad_requests_are_typed_errors(tiny_embedder_dir: Path) -> None:
    async def body(registry: ModelRegistry) -> list[type[Exception]]:
        raised: list[type[Exception]] = []
        for query in (
            EmbedQuery(inputs=[]),
            EmbedQuery(inputs=["ok", ""]),
            EmbedQuery(inputs=["x" * 300_000]),
            EmbedQuery(inputs=["ok"], dimensions=33),
            EmbedQuery(inputs=["ok"], dimensions=-1),
        ):
            with pytest.raises(InvalidInput) as info:
                await embed(registry, query)
            raised.append(type(info.value))
        return raised

    raised = run_registry({"embedding_model_path": str(tiny_embedder_dir)}, body)
    assert raised == [EmptyInput, EmptyInput, LimitExceeded, InvalidInput, InvalidInput]


def test_long_inputs_are_truncated_to_the_window(tiny_embedder_dir: Path) -> None:
    async def body(registry: ModelRegistry) -> tuple[int, int]:
        long = await embed(registry, EmbedQuery(inputs=["paris " * 5000]))
        return long.vectors.shape[0], long.tokens

    count, tokens = run_registry({"embedding_model_path": str(tiny_embedder_dir), "max_length": 64}, body)
    assert (count, tokens) == (1, 64)


def test_requests_resolve_within_their_family(tiny_reranker_dir: Path, tiny_embedder_dir: Path) -> None:
    async def body(registry: ModelRegistry) -> None:
        reranker, embedder = tiny_reranker_dir.name, tiny_embedder_dir.name
        for name in (None, "text-embedding-ada-002", "default/not-specified", "jina-embeddings-v3", embedder):
            assert registry.embedder(name).spec.name == embedder
        for name in (None, "rerank-english-v3.0", reranker):
            assert registry.reranker(name).spec.name == reranker
        with pytest.raises(WrongFamily, match="is a reranker"):
            registry.embedder(reranker)
        with pytest.raises(WrongFamily, match="is an embedding model"):
            await rerank(registry, RerankQuery(query="q", documents=["a"], model=embedder))
        assert registry.describe("any-uid-for-the-reranker")[0].spec.name == reranker
        assert registry.describe("my-embedder")[0].spec.name == embedder

    run_registry({"model_path": str(tiny_reranker_dir), "embedding_model_path": str(tiny_embedder_dir)}, body)


def test_a_server_without_an_embedding_model_says_so(tiny_reranker_dir: Path) -> None:
    async def body(registry: ModelRegistry) -> None:
        with pytest.raises(ModelNotFound, match="RERANK_EMBEDDING_MODEL_PATH"):
            await embed(registry, EmbedQuery(inputs=["a"]))

    run_registry({"model_path": str(tiny_reranker_dir)}, body)


def test_the_cosine_reranker_uses_the_same_pooling(tiny_embedder_dir: Path) -> None:
    model = Embedder(str(tiny_embedder_dir), name="m", max_length=128)
    vectors = shape(model.embed(["what is function compute", "hello", "function compute is a service"]), None, True)
    scores = model.score("what is function compute", ["hello", "function compute is a service"])
    assert scores == pytest.approx([float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])], abs=1e-6)


def test_a_cosine_rerank_gives_its_query_the_query_instruction(tiny_embedder_dir: Path) -> None:
    """An embedding model reranks as FlagModel retrieves: `encode_queries` (the instruction, e.g.
    bge-*-v1.5's) for the query, `encode_corpus` for the documents."""
    from FlagEmbedding import FlagModel

    instruction = "represent the query: "
    query, docs = "what is function compute", ["hello", "function compute is a service", "the capital of france"]
    model = FlagModel(str(tiny_embedder_dir), pooling_method="cls", normalize_embeddings=True, use_fp16=False,
                      devices="cpu", query_instruction_for_retrieval=instruction)  # fmt: skip
    want = (model.encode_queries([query]) @ model.encode_corpus(docs).T)[0]

    async def body(registry: ModelRegistry) -> list[float]:
        outcome = await rerank(registry, RerankQuery(query=query, documents=docs))
        return outcome.raw_scores

    got = run_registry({"model_path": str(tiny_embedder_dir), "embedding_query_instruction": instruction}, body)
    assert got == pytest.approx([float(s) for s in want], abs=1e-4)
    plain = run_registry({"model_path": str(tiny_embedder_dir)}, body)
    assert plain != pytest.approx(got, abs=1e-4), "the instruction changes the query's vector"


def test_tokenize_and_decode_share_the_tokenizing_thread_with_requests(tiny_embedder_dir: Path) -> None:
    """A fast tokenizer keeps its truncation setting between calls: `/tokenize` on a second thread
    beside an embedding request returned truncated ids, and the request encoded untruncated."""
    seen: dict[str, set[str]] = {"steps": set(), "tokenize": set(), "decode": set()}

    def on_thread(kind: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            seen[kind].add(threading.current_thread().name)
            return fn(*args, **kwargs)

        return wrapped

    async def body(registry: ModelRegistry) -> None:
        model = registry.embedder(None).engine.scorer
        assert isinstance(model, Embedder)
        real_steps = model.embed_steps

        def steps(*args: Any, **kwargs: Any) -> Iterator[Any]:
            inner = real_steps(*args, **kwargs)
            while True:
                step = on_thread("steps", next)(inner, None)
                if step is None:
                    return
                yield step

        model.embed_steps, model.token_offsets, model.decode = (  # type: ignore[method-assign]
            steps,
            on_thread("tokenize", model.token_offsets),
            on_thread("decode", model.decode),
        )
        tokens = await tokenize(registry, "paris is the capital of france")
        await asyncio.gather(embed(registry, EmbedQuery(inputs=["paris " * 300] * 4)), detokenize(registry, tokens.ids))

    run_registry({"embedding_model_path": str(tiny_embedder_dir)}, body)
    assert len(seen["steps"]) == 1 and seen["tokenize"] == seen["decode"] == seen["steps"], seen
