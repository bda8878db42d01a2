"""The score cache: LRU by memory, keyed by model, options, query and document."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from pathlib import Path

from compat_api.core.cache import ENTRY_BYTES, CachedScore, ScoreCache
from compat_api.core.engine import BatchEngine
from compat_api.core.models.base import DEFAULT_OPTIONS, EncodeOptions
from compat_api.core.models.cross_encoder import CrossEncoderScorer
from compat_api.core.models.embedder import Embedder
from compat_api.core.registry import bundled_model_path
from compat_api.core.rerank import score_cached


def test_lru_evicts_the_least_recently_used_within_its_memory() -> None:
    cache = ScoreCache(3 * ENTRY_BYTES)
    keys = [ScoreCache.key("m", "q", f"d{i}") for i in range(4)]
    for i, key in enumerate(keys[:3]):
        cache.put(key, CachedScore(float(i), i))
    assert cache.get(keys[0]) is not None  # now most recent
    cache.put(keys[3], CachedScore(3.0, 3))
    assert len(cache) == 3
    assert cache.get(keys[1]) is None
    assert cache.get(keys[0]) == CachedScore(0.0, 0)
    assert (cache.hits, cache.misses) == (2, 1)


def test_keys_separate_fields_unambiguously() -> None:
    assert ScoreCache.key("m", "ab", "c") != ScoreCache.key("m", "a", "bc")
    assert ScoreCache.key("m", "q", "d") == ScoreCache.key("m", "q", "d")


def test_zero_memory_disables_the_cache() -> None:
    cache = ScoreCache(0)
    cache.put(b"k", CachedScore(1.0, 1))
    assert cache.get(b"k") is None


def test_repeated_pairs_skip_the_model(tiny_reranker_dir: Path) -> None:
    scorer = CrossEncoderScorer(str(tiny_reranker_dir), name="tiny", max_length=64)

    async def run() -> None:
        engine = BatchEngine(scorer, max_batch_tokens=4096, max_batch_size=32, cache=ScoreCache(1 << 20))
        engine.start()
        first = await score_cached(engine, "q", ["a", "b", "c"], DEFAULT_OPTIONS)
        batches = engine.batches_run
        again = await score_cached(engine, "q", ["c", "a", "b"], DEFAULT_OPTIONS)
        assert engine.batches_run == batches, "a fully cached request never reaches the model"
        assert again.cached == 3 and again.raw == [first.raw[2], first.raw[0], first.raw[1]]
        assert again.tokens == first.tokens
        mixed = await score_cached(engine, "q", ["a", "new"], DEFAULT_OPTIONS)
        assert mixed.cached == 1 and engine.batches_run == batches + 1
        other_options = await score_cached(engine, "q", ["a"], EncodeOptions(mode="chunk", max_chunks=2))
        assert other_options.cached == 0
        await engine.close()

    asyncio.run(run())


def test_usage_is_the_same_whether_documents_came_from_the_cache_or_not() -> None:
    """An embedding model bills its query once per request: cached documents must not drop it."""
    scorer = Embedder(bundled_model_path(), name="bundled", max_length=256)

    async def run() -> list[int]:
        engine = BatchEngine(scorer, max_batch_tokens=4096, max_batch_size=32, cache=ScoreCache(1 << 20))
        engine.start()
        counts = []
        for docs in (["alpha beta", "gamma"], ["alpha beta", "gamma"], ["gamma", "alpha beta"]):
            result = await score_cached(engine, "a query of some words", docs, DEFAULT_OPTIONS)
            counts.append(result.tokens)
        await engine.close()
        return counts

    first, again, reordered = asyncio.run(run())
    assert first == again == reordered
    uncached = asyncio.run(_uncached(scorer))
    assert first == uncached


async def _uncached(scorer: Embedder) -> int:
    engine = BatchEngine(scorer, max_batch_tokens=4096, max_batch_size=32)
    engine.start()
    result = await score_cached(engine, "a query of some words", ["alpha beta", "gamma"], DEFAULT_OPTIONS)
    await engine.close()
    return result.tokens


def test_a_full_cache_stays_within_its_memory_bound() -> None:
    """Measured, not estimated: the cache holding as many entries as its bound allows."""
    budget = 8 << 20
    gc.collect()
    tracemalloc.start()
    cache = ScoreCache(budget)
    for i in range(cache.capacity + 1000):
        cache.put(ScoreCache.key("m", "q", str(i)), CachedScore(i * 0.37, 300 + i % 1000))
    used, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(cache) == cache.capacity > 20_000
    assert used <= budget, f"{used / len(cache):.0f} bytes per entry, over {ENTRY_BYTES}"
