"""The score cache: LRU by memory, keyed by model, options, query and document."""

from __future__ import annotations

import asyncio
from pathlib import Path

from compat_api.core.cache import ENTRY_BYTES, CachedScore, ScoreCache
from compat_api.core.engine import BatchEngine
from compat_api.core.scorers import CrossEncoderScorer, EncodeOptions


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
    scorer = CrossEncoderScorer(str(tiny_reranker_dir), name="tiny", device="cpu", fp16=False, max_length=64)

    async def run() -> None:
        engine = BatchEngine(scorer, max_batch_tokens=4096, max_batch_size=32, max_queue_items=100,
                             cache=ScoreCache(1 << 20))  # fmt: skip
        engine.start()
        first = await engine.score("q", ["a", "b", "c"])
        batches = engine.batches_run
        again = await engine.score("q", ["c", "a", "b"])
        assert engine.batches_run == batches, "a fully cached request never reaches the model"
        assert again.cached == 3 and again.raw == [first.raw[2], first.raw[0], first.raw[1]]
        assert again.tokens == first.tokens
        mixed = await engine.score("q", ["a", "new"])
        assert mixed.cached == 1 and engine.batches_run == batches + 1
        other_options = await engine.score("q", ["a"], EncodeOptions(mode="chunk", max_chunks=2))
        assert other_options.cached == 0
        probe = await engine.score("q", ["a"], use_cache=False)
        assert probe.cached == 0 and engine.batches_run == batches + 3
        await engine.close()

    asyncio.run(run())
