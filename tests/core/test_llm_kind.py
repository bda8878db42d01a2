"""Decoder-only (LLM) rerankers: detected from config.json and served through FlagEmbedding's
FlagLLMReranker, with its own scores whether a request is scored alone or batched with others."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from compat_api.core.engine import BatchEngine
from compat_api.core.kinds import detect_kind
from compat_api.core.models.base import EncodeOptions
from compat_api.core.models.llm import DEFAULT_PROMPTS
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


WORDS = "paris is the capital of france and berlin is the capital of germany cats dogs fox lazy".split()  # noqa: SIM905


def test_llm_documents_get_flagembeddings_room_and_usage_counts_what_the_model_reads(llm_dir: Path) -> None:
    """FlagLLMReranker cuts the query to 3/4 of the window and the passage to the window plus its
    prompt's length minus the query: a document that fits there is scored whole (not chunked, not
    cut shorter), and every token the model reads is billed (bos, separators, prompt)."""
    from FlagEmbedding import FlagLLMReranker

    window = 40
    scorer = load_scorer(ModelSpec("llm", str(llm_dir)), make_settings(max_length=window))
    reference = FlagLLMReranker(str(llm_dir), use_fp16=False, devices=["cpu"], max_length=window)
    tok = reference.tokenizer
    docs = [" ".join(WORDS[i % len(WORDS)] for i in range(n)) for n in (6, 25, 37, 44, 58)]
    queries = [QUERY, "what is the capital of france and germany and china " * 4]  # the second is cut to 30
    chunked = EncodeOptions(mode="chunk", max_chunks=10, overlap=0)
    for query in queries:
        expected = reference.compute_score([[query, d] for d in docs], normalize=True)
        truncated = normalize(scorer.score(query, docs), Normalization.SIGMOID)
        assert truncated == pytest.approx(expected, abs=1e-4), query
        encoding, items = scorer.encode(query, docs, chunked)
        fits = [i for i in range(len(docs)) if encoding.owners.count(i) == 1]
        assert 2 in fits, "a 37-token document fits a 40-token window beside a 6-token query and the prompt"
        whole = normalize(scorer.finish(encoding, scorer.forward(items)), Normalization.SIGMOID)
        assert [whole[i] for i in fits] == pytest.approx([expected[i] for i in fits], abs=1e-4)
        seen = []
        for d in docs:  # what FlagEmbedding feeds the model for this pair
            q = tok(query, add_special_tokens=False, truncation=True, max_length=window * 3 // 4)["input_ids"]
            p = tok(d, add_special_tokens=False, truncation=True, max_length=window)["input_ids"]
            sep = tok("\n", add_special_tokens=False)["input_ids"]
            prompt = tok(reference.prompt or DEFAULT_PROMPTS["llm"], add_special_tokens=False)["input_ids"]
            first = [tok.bos_token_id, *q] if tok.bos_token_id not in (None, tok.pad_token_id) else q
            room = window + len(sep) + len(prompt) - len(first) - len(sep)
            seen.append(len(first) + len(sep) + min(len(p), room) + len(sep) + len(prompt))
        _, cut = scorer.encode(query, docs)
        assert [item.length for item in cut] == seen
