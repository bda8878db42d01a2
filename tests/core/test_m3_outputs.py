"""bge-m3's three outputs: dense, sparse (lexical weights) and multi-vector (ColBERT), equal to
FlagEmbedding's `BGEM3FlagModel.encode(return_sparse=True, return_colbert_vecs=True)`, alone and
batched with other requests; a model without the heads is a model error."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from compat_api.core.embed import EmbedQuery, TokenOutcome, embed, embed_tokens
from compat_api.core.errors import ModelFailure
from compat_api.core.registry import ModelRegistry
from tests.conftest import make_settings
from tests.tiny_models import build_tiny_xlmr_embedder

TEXTS = ["what is function compute", "hello", "the capital of france is paris", "什么是函数计算"]


@pytest.fixture(scope="module")
def m3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_xlmr_embedder(tmp_path_factory.mktemp("models") / "tiny-m3", heads=True)


def run(path: Path, outputs: str) -> tuple[TokenOutcome, TokenOutcome, np.ndarray]:
    async def go() -> tuple[TokenOutcome, TokenOutcome, np.ndarray]:
        registry = ModelRegistry(make_settings(embedding_model_path=str(path), reload_interval=0, max_length=128))
        await asyncio.to_thread(registry.load)
        registry.start()
        try:
            alone = await embed_tokens(registry, EmbedQuery(inputs=TEXTS), outputs)  # type: ignore[arg-type]
            halves = await asyncio.gather(*(embed_tokens(registry, EmbedQuery(inputs=TEXTS[i::2]), outputs)  # type: ignore[arg-type]
                                            for i in range(2)))  # fmt: skip
            mixed: list[Any] = [None] * len(TEXTS)
            mixed[0::2], mixed[1::2] = halves[0].outputs, halves[1].outputs
            dense = (await embed(registry, EmbedQuery(inputs=TEXTS))).vectors
            return alone, TokenOutcome(alone.model, mixed, alone.tokens), dense
        finally:
            await registry.close()

    return asyncio.run(go())


def test_outputs_equal_bgem3flagmodel(m3_dir: Path) -> None:
    from FlagEmbedding import BGEM3FlagModel

    reference = BGEM3FlagModel(str(m3_dir), use_fp16=False, devices="cpu")
    want = reference.encode(TEXTS, max_length=128, return_dense=True, return_sparse=True, return_colbert_vecs=True)
    alone, mixed, dense = run(m3_dir, "m3")
    assert np.abs(dense - np.asarray(want["dense_vecs"])).max() <= 1e-4
    for outcome in (alone, mixed):
        for got, lexical, colbert in zip(outcome.outputs, want["lexical_weights"], want["colbert_vecs"], strict=True):
            assert {str(k) for k in got["sparse"]} == set(lexical)
            assert all(abs(got["sparse"][int(k)] - float(v)) <= 1e-4 for k, v in lexical.items())
            assert got["colbert"].shape == np.asarray(colbert).shape
            assert np.abs(got["colbert"] - np.asarray(colbert)).max() <= 1e-4


def test_a_model_without_heads_is_a_model_error(tiny_embedder_dir: Path) -> None:
    with pytest.raises(ModelFailure, match="no sparse and multi-vector heads"):
        run(tiny_embedder_dir, "m3")


def test_token_vectors_of_a_model_without_heads(tiny_embedder_dir: Path) -> None:
    alone, mixed, _ = run(tiny_embedder_dir, "tokens")
    lengths = [out["tokens"].shape[0] for out in alone.outputs]
    assert lengths[1] < lengths[0] and all(out["tokens"].shape[1] == 32 for out in alone.outputs)
    for a, b in zip(alone.outputs, mixed.outputs, strict=True):
        assert np.abs(a["tokens"] - b["tokens"]).max() <= 1e-4
