"""The batching engine: batch plans, cross-request batching, admission and cancellation."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from compat_api.core.engine import BatchEngine, BatchStats, plan_batches
from compat_api.core.errors import Overloaded
from compat_api.core.ranking import Normalization, normalize
from compat_api.core.scorers import DEFAULT_OPTIONS, CrossEncoderScorer, Encoded, EncodeOptions, Item, Scorer


def test_plan_respects_token_budget_and_size_and_groups_lengths() -> None:
    lengths = [5, 100, 7, 98, 6, 99, 50, 51]
    batches = plan_batches(lengths, max_tokens=210, max_size=3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 3
        assert len(batch) * max(lengths[i] for i in batch) <= 210 or len(batch) == 1
    # long items travel together, short ones together, and no batch is more than 10% padding
    assert {lengths[i] for i in batches[0]} <= {100, 99, 98}
    assert any({lengths[i] for i in b} == {50, 51} for b in batches)
    for batch in batches:
        padded = len(batch) * max(lengths[i] for i in batch)
        assert padded - sum(lengths[i] for i in batch) <= 0.1 * padded


def test_an_item_larger_than_the_budget_gets_its_own_batch() -> None:
    assert plan_batches([1000, 3, 3], max_tokens=64, max_size=8) == [[0], [1, 2]]


class Gated(Scorer):
    """Wraps a real scorer; its forward waits on a gate so tests can hold the model busy."""

    def __init__(self, inner: Scorer) -> None:
        self.inner = inner
        self.info = inner.info
        self.gate = threading.Event()
        self.gate.set()
        self.batches: list[int] = []

    def encode(self, query: str, documents: Sequence[str], options: EncodeOptions = DEFAULT_OPTIONS) -> Encoded:
        return self.inner.encode(query, documents, options)

    def forward(self, items: Sequence[Item]) -> list[Any]:
        self.gate.wait(timeout=30)
        self.batches.append(len(items))
        return self.inner.forward(items)

    def finish(self, encoded: Encoded, outputs: Sequence[Any]) -> list[float]:
        return self.inner.finish(encoded, outputs)


@pytest.fixture(scope="module")
def tiny_scorer(tiny_reranker_dir: Path) -> CrossEncoderScorer:
    return CrossEncoderScorer(str(tiny_reranker_dir), name="tiny", device="cpu", fp16=False, max_length=64)


WORDS = ("paris berlin capital france germany cats dogs bread flour water yeast python serverless").split()  # noqa: SIM905


def docs_for(i: int) -> list[str]:
    return [" ".join(WORDS[(i + k) % len(WORDS)] for k in range(1 + (i + j) % 9)) for j in range(1 + i % 4)]


def test_concurrent_requests_get_their_own_scores_equal_to_flagembedding(
    tiny_scorer: CrossEncoderScorer, tiny_reranker_dir: Path
) -> None:
    from FlagEmbedding import FlagReranker

    gated = Gated(tiny_scorer)
    stats: list[BatchStats] = []

    async def run() -> list[list[float]]:
        engine = BatchEngine(gated, max_batch_tokens=2048, max_batch_size=64, max_queue_items=10_000)
        engine.observers.append(stats.append)
        engine.start()
        gated.gate.clear()  # hold the model so that requests pile up and get merged
        tasks = [asyncio.create_task(engine.score(f"query {WORDS[i % len(WORDS)]}", docs_for(i))) for i in range(100)]
        await asyncio.sleep(0.3)
        gated.gate.set()
        results = await asyncio.gather(*tasks)
        await engine.close()
        return [r.raw for r in results]

    merged = asyncio.run(run())
    assert max(gated.batches) > 4, "concurrent requests must share model calls"
    assert all(s.padded_tokens <= 2048 or s.size == 1 for s in stats)
    reference = FlagReranker(str(tiny_reranker_dir), use_fp16=False, devices=["cpu"], max_length=64)
    for i, raw in enumerate(merged):
        query, docs = f"query {WORDS[i % len(WORDS)]}", docs_for(i)
        assert raw == pytest.approx(tiny_scorer.score(query, docs), abs=1e-4)
        expected = reference.compute_score([[query, d] for d in docs], normalize=True)
        expected = expected if isinstance(expected, list) else [expected]
        assert normalize(raw, Normalization.SIGMOID) == pytest.approx(expected, abs=1e-4)


def test_full_queue_is_overloaded_at_once_and_admitted_work_completes(tiny_scorer: CrossEncoderScorer) -> None:
    gated = Gated(tiny_scorer)

    async def run() -> tuple[int, int]:
        engine = BatchEngine(gated, max_batch_tokens=4096, max_batch_size=64, max_queue_items=12)
        engine.start()
        gated.gate.clear()
        first = asyncio.create_task(engine.score("q", ["a", "b", "c", "d", "e"]))  # 6 items admitted
        await asyncio.sleep(0.1)
        second = asyncio.create_task(engine.score("q", ["a", "b", "c", "d", "e"]))  # 12 admitted
        await asyncio.sleep(0.1)
        with pytest.raises(Overloaded) as info:
            await engine.score("q", ["x"])
        assert info.value.retry_after >= 1
        gated.gate.set()
        done = await asyncio.gather(first, second)
        await engine.close()
        return len(done[0].raw), len(done[1].raw)

    assert asyncio.run(run()) == (5, 5)


def test_cancelled_request_items_never_reach_the_model(tiny_scorer: CrossEncoderScorer) -> None:
    gated = Gated(tiny_scorer)

    async def run() -> None:
        engine = BatchEngine(gated, max_batch_tokens=4096, max_batch_size=64, max_queue_items=1000)
        engine.start()
        gated.gate.clear()
        busy = asyncio.create_task(engine.score("q", ["first"]))
        await asyncio.sleep(0.2)  # "first" is now inside the model call
        doomed = asyncio.create_task(engine.score("q", [f"doc {i}" for i in range(20)]))
        await asyncio.sleep(0.2)
        doomed.cancel()
        await asyncio.sleep(0.05)
        gated.gate.set()
        await busy
        after = await engine.score("q", ["after"])
        assert len(after.raw) == 1
        assert engine.queued_items == 0
        await engine.close()

    asyncio.run(run())
    assert gated.batches == [1, 1], "the cancelled request's 20 items must be dropped"


def test_within_a_length_bucket_earlier_arrivals_go_first() -> None:
    # two requests of similar lengths: the first one's items fill the first batch
    lengths = [130, 128, 131, 129, 127, 132, 126, 133]  # request A: items 0-3, request B: items 4-7
    batches = plan_batches(lengths, max_tokens=10_000, max_size=4)
    assert sorted(batches[0]) == [0, 1, 2, 3] and sorted(batches[1]) == [4, 5, 6, 7]
    waste = sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)
    assert waste / sum(lengths) < 0.1
