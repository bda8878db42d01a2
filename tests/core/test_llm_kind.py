"""Decoder-only (LLM) rerankers: detected from config.json and served through FlagEmbedding's
FlagLLMReranker, with its own scores whether a request is scored alone or batched with others."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from compat_api.core.engine import BatchEngine
from compat_api.core.kinds import detect_kind
from compat_api.core.ranking import Normalization, normalize
from compat_api.core.registry import ModelSpec, load_scorer
from tests.conftest import make_settings
from tests.tiny_models import build_tiny_llama_reranker

QUERY = "what is the capital of france"
DOCS = ["paris is the capital of france", "cats are small", "", "berlin is the capital of germany " * 3]


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama_reranker(tmp_path_factory.mktemp("models") / "tiny-llm-reranker")


def test_llm_reranker_is_detected_and_scores_like_flagembedding(llm_dir: Path) -> None:
    from FlagEmbedding import FlagLLMReranker

    assert detect_kind(llm_dir) == "llm"
    scorer = load_scorer(ModelSpec("llm", str(llm_dir)), make_settings(max_length=256))
    assert scorer.info.kind == "llm"
    reference = FlagLLMReranker(str(llm_dir), use_fp16=False, devices=["cpu"], max_length=256)
    expected = reference.compute_score([[QUERY, d] for d in DOCS], normalize=True)
    ours = normalize(scorer.score(QUERY, DOCS), Normalization.SIGMOID)
    assert ours == pytest.approx(expected, abs=1e-4)
    assert len({round(s, 5) for s in ours}) > 2, "the tiny model must spread its scores"

    async def mixed() -> list[float]:
        engine = BatchEngine(scorer, max_batch_tokens=4096, max_batch_size=32)
        engine.start()
        others = [engine.score(f"other query {i}", [f"other document {i} " * (i + 1)]) for i in range(5)]
        (mine, _), *_ = await asyncio.gather(engine.score(QUERY, DOCS), *others)
        await engine.close()
        return mine

    assert normalize(asyncio.run(mixed()), Normalization.SIGMOID) == pytest.approx(expected, abs=1e-4)
