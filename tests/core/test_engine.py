"""The batching engine: fair rounds, batch plans, admission in items and tokens, cancellation,
and model calls that fail without taking the engine down."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from compat_api.core.engine import BatchEngine, BatchStats, Limits
from compat_api.core.errors import LimitExceeded, ModelFailure, ModelNotReady, Overloaded
from compat_api.core.models.base import EncodeOptions, Encoding, Item, Scorer, Step
from compat_api.core.models.cross_encoder import CrossEncoderScorer
from compat_api.core.ranking import Normalization, normalize
from compat_api.core.scheduling import Queue, plan_batches, round_budget, select_round

CHUNKED = EncodeOptions(mode="chunk", max_chunks=1000, overlap=0)


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


def test_within_a_length_bucket_earlier_arrivals_go_first() -> None:
    lengths = [130, 128, 131, 129, 127, 132, 126, 133]  # request A: items 0-3, request B: items 4-7
    batches = plan_batches(lengths, max_tokens=10_000, max_size=4)
    assert sorted(batches[0]) == [0, 1, 2, 3] and sorted(batches[1]) == [4, 5, 6, 7]


def queue(seq: int, lengths: list[int], priority: bool = False) -> Queue:
    q = Queue(seq, priority=priority)
    for i, length in enumerate(lengths):
        q.push(i, length)
    return q


def test_a_small_request_fits_in_the_next_round_behind_a_huge_one() -> None:
    big = queue(0, [80] * 1000)
    small = queue(1, [30] * 4)
    taken = select_round([big, small], max_tokens=2048, max_items=32)
    assert sum(1 for q, _, _ in taken if q is small) == 4, "all of the small request in one round"
    assert any(q is big for q, _, _ in taken), "the big one still progresses"
    assert sum(length for _, _, length in taken) <= 2048


def test_rounds_share_the_model_fairly_and_never_starve_anyone() -> None:
    big = queue(0, [80] * 1000)
    smalls = [queue(i + 1, [30] * 4) for i in range(8)]
    served_big = 0
    for _ in range(20):
        for q in smalls:  # closed-loop small clients: always a fresh request waiting
            while len(q) < 4:
                q.push(0, 30)
        taken = select_round([big, *smalls], max_tokens=2048, max_items=32)
        served_big += sum(1 for q, _, _ in taken if q is big)
    assert served_big >= 20, "the big request gets at least an item every round"


def test_equal_requests_finish_in_arrival_order_not_all_at_once() -> None:
    queues = [queue(i, [100] * 8) for i in range(4)]
    finished: list[int] = []
    for _ in range(10):
        select_round(queues, max_tokens=1000, max_items=32)
        finished += [q.seq for q in queues if not q.items and q.seq not in finished]
    assert finished[:2] == [0, 1]


def test_probes_go_first_and_an_item_over_the_budget_still_runs() -> None:
    probe = queue(5, [10, 10], priority=True)
    huge = queue(0, [5000])
    taken = select_round([huge, probe], max_tokens=100, max_items=8)
    assert [q for q, _, _ in taken] == [probe, probe]
    assert [q for q, _, _ in select_round([huge], max_tokens=100, max_items=8)] == [huge]


def test_an_item_longer_than_a_round_is_served_while_other_requests_keep_coming() -> None:
    """A window past the round budget (bge-m3's 8,192 tokens on a CPU's 2,048-token calls): its
    credit saves up to its length, so it runs in a round of its own instead of waiting until no
    other request has anything queued."""
    budget = round_budget(2048)
    long = queue(0, [budget + 57])
    smalls = [queue(i + 1, [100] * 4) for i in range(3)]
    for round_no in range(40):
        for q in smalls:  # closed-loop small clients: always a request waiting
            while len(q) < 4:
                q.push(0, 100)
        order = [long, *smalls]
        k = round_no % len(order)  # the engine rotates who goes first
        taken = select_round(order[k:] + order[:k], max_tokens=budget, max_items=32)
        if any(q is long for q, _, _ in taken):
            assert [q for q, _, _ in taken] == [long], "alone: it fills the round by itself"
            return
    raise AssertionError("the long item never ran while small requests kept coming")


class Gated(Scorer):
    """Wraps a real scorer; its forward waits on a gate so tests can hold the model busy."""

    def __init__(self, inner: Scorer) -> None:
        self.inner = inner
        self.info = inner.info
        self.gate = threading.Event()
        self.gate.set()
        self.batches: list[int] = []
        self.seen: list[str] = []

    def steps(self, query: str, documents: Sequence[str], options: EncodeOptions, encoding: Encoding) -> Iterator[Step]:
        return self.inner.steps(query, documents, options, encoding)

    def forward(self, items: Sequence[Item]) -> list[Any]:
        self.gate.wait(timeout=30)
        self.batches.append(len(items))
        return self.inner.forward(items)

    def finish(self, encoding: Encoding, outputs: Sequence[Any]) -> list[float]:
        return self.inner.finish(encoding, outputs)


@pytest.fixture(scope="module")
def tiny_scorer(tiny_reranker_dir: Path) -> CrossEncoderScorer:
    return CrossEncoderScorer(str(tiny_reranker_dir), name="tiny", max_length=64)


WORDS = ("paris berlin capital france germany cats dogs bread flour water yeast python serverless").split()  # noqa: SIM905


def docs_for(i: int) -> list[str]:
    return [" ".join(WORDS[(i + k) % len(WORDS)] for k in range(1 + (i + j) % 9)) for j in range(1 + i % 4)]


def engine_for(scorer: Scorer, **limits: Any) -> BatchEngine:
    return BatchEngine(scorer, max_batch_tokens=limits.pop("tokens", 4096), max_batch_size=limits.pop("size", 64),
                       limits=Limits(**limits))  # fmt: skip


def test_concurrent_requests_get_their_own_scores_equal_to_flagembedding(
    tiny_scorer: CrossEncoderScorer, tiny_reranker_dir: Path
) -> None:
    from FlagEmbedding import FlagReranker

    gated = Gated(tiny_scorer)
    stats: list[BatchStats] = []

    async def run() -> list[list[float]]:
        engine = engine_for(gated, tokens=2048, max_queue_items=10_000)
        engine.observers.append(stats.append)
        engine.start()
        gated.gate.clear()  # hold the model so that requests pile up and get merged
        tasks = [asyncio.create_task(engine.score(f"query {WORDS[i % len(WORDS)]}", docs_for(i))) for i in range(100)]
        await asyncio.sleep(0.3)
        gated.gate.set()
        results = await asyncio.gather(*tasks)
        await engine.close()
        return [raw for raw, _ in results]

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


def test_a_small_request_overtakes_a_huge_queued_one(tiny_scorer: CrossEncoderScorer) -> None:
    gated = Gated(tiny_scorer)

    async def run() -> tuple[int, int]:
        engine = engine_for(gated, tokens=256, size=16, max_queue_items=10_000)
        engine.start()
        gated.gate.clear()
        big = asyncio.create_task(engine.score("q", [f"{WORDS[i % 13]} {WORDS[(i + 3) % 13]}" for i in range(600)]))
        await asyncio.sleep(0.3)  # tokenized and waiting behind the held model
        small = asyncio.create_task(engine.score("capital", ["paris", "berlin"]))
        await asyncio.sleep(0.1)
        gated.gate.set()
        await small
        calls_for_small = len(gated.batches)
        await big
        total = len(gated.batches)
        await engine.close()
        return calls_for_small, total

    calls_for_small, total = asyncio.run(run())
    assert calls_for_small <= 4 < total, f"the small request waited {calls_for_small} of {total} model calls"


def test_admission_counts_chunks_not_documents(tiny_scorer: CrossEncoderScorer) -> None:
    """One document that becomes many chunks (each with the query) is charged as what it is."""
    gated = Gated(tiny_scorer)
    long_doc = " ".join(WORDS * 80)  # ~1040 tokens: about 18 chunks of a 64-token window

    async def run() -> None:
        engine = engine_for(gated, max_queue_items=20)
        engine.start()
        gated.gate.clear()
        first = asyncio.create_task(engine.score("q", [long_doc], CHUNKED))
        await asyncio.sleep(0.2)
        assert engine.queued_items >= 10, "charged for its chunks"
        with pytest.raises(Overloaded) as refused:
            await engine.score("q", [long_doc], CHUNKED)  # 2 items by documents, ~12 by chunks
        assert refused.value.retry_after >= 1
        gated.gate.set()
        assert len((await first)[0]) == 1
        assert engine.queued_items == 0
        await engine.close()

    asyncio.run(run())


def test_a_request_over_the_item_or_token_cap_is_refused_before_its_chunks_are_built(
    tiny_scorer: CrossEncoderScorer,
) -> None:
    long_doc = " ".join(WORDS * 40)

    async def run() -> None:
        engine = engine_for(tiny_scorer, max_request_items=5, max_request_tokens=10_000)
        engine.start()
        with pytest.raises(LimitExceeded, match="RERANK_MAX_REQUEST_ITEMS") as info:
            await engine.score("q", [long_doc], CHUNKED)
        assert info.value.field == "documents"
        assert engine.batches_run == 0 and engine.queued_items == 0
        engine.limits = Limits(max_request_tokens=100)
        with pytest.raises(LimitExceeded, match="RERANK_MAX_REQUEST_TOKENS"):
            await engine.score("q", [long_doc], CHUNKED)
        assert engine.batches_run == 0
        await engine.close()

    asyncio.run(run())


def test_full_queue_is_overloaded_at_once_and_admitted_work_completes(tiny_scorer: CrossEncoderScorer) -> None:
    gated = Gated(tiny_scorer)

    async def run() -> tuple[int, int]:
        engine = engine_for(gated, max_queue_items=12)
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
        return len(done[0][0]), len(done[1][0])

    assert asyncio.run(run()) == (5, 5)


def test_a_probe_is_never_refused_and_goes_first(tiny_scorer: CrossEncoderScorer) -> None:
    gated = Gated(tiny_scorer)

    async def run() -> None:
        engine = engine_for(gated, max_queue_items=4, size=2)
        engine.start()
        gated.gate.clear()
        busy = [asyncio.create_task(engine.score("q", ["a", "b", "c"])) for _ in range(1)]
        await asyncio.sleep(0.1)
        with pytest.raises(Overloaded):
            await engine.score("q", ["x"])
        probe = asyncio.create_task(engine.score("q", ["probe"], priority=True))
        await asyncio.sleep(0.1)
        gated.gate.set()
        await probe
        assert not all(task.done() for task in busy), "the probe did not wait for the queued request"
        await asyncio.gather(*busy)
        await engine.close()

    asyncio.run(run())


class Sized(Gated):
    """Items of the lengths the documents name ("126" is one item of 126 tokens); outputs 0."""

    def steps(self, query: str, documents: Sequence[str], options: EncodeOptions, encoding: Encoding) -> Iterator[Step]:
        yield [Item(int(doc), {}) for doc in documents]

    def forward(self, items: Sequence[Item]) -> list[Any]:
        self.batches.append(len(items))
        return [0.0] * len(items)

    def finish(self, encoding: Encoding, outputs: Sequence[Any]) -> list[float]:
        return [float(x) for x in outputs]


def call_sizes(scorer: CrossEncoderScorer, lengths: list[int]) -> list[int]:
    """The sizes of the model calls one request of items of `lengths` runs as (2,048-token budget)."""
    sized = Sized(scorer)

    async def run() -> None:
        engine = BatchEngine(sized, max_batch_tokens=2048, max_batch_size=64)
        engine.start()
        scores, _ = await asyncio.wait_for(engine.score("q", [str(n) for n in lengths]), 10)
        assert len(scores) == len(lengths)
        await engine.close()

    asyncio.run(run())
    return sized.batches


def test_a_round_fits_its_padded_calls_so_no_item_spills_into_a_call_of_its_own(
    tiny_scorer: CrossEncoderScorer,
) -> None:
    """16 items of 126-130 tokens fit a 2,048-token budget unpadded but not padded to 130: a
    round sized by the padded budget's real tokens made calls of 15 and then 1, twice. Calls
    stay within the budget, and only the request's own remainder is a small call."""
    sizes = call_sizes(tiny_scorer, ([126] * 15 + [130]) * 2)
    assert sizes == [14, 14, 4]
    assert all(size * 130 <= 2048 for size in sizes)


def test_a_request_waits_longest_first_so_its_rounds_run_as_few_full_calls(tiny_scorer: CrossEncoderScorer) -> None:
    """32 items of 100 and 50 tokens, interleaved. Waiting in arrival order, every round held
    both lengths and the padding rule split it: calls of 15, 9, 5 and 3. Longest first, the
    request runs as two calls, each within the budget and the padding rule."""
    assert call_sizes(tiny_scorer, [100, 50] * 16) == [20, 12]


def test_queue_hands_out_a_steps_items_longest_first_and_keeps_their_indices() -> None:
    queue = Queue(0)
    queue.extend(5, [30, 90, 60])
    assert [queue.pop() for _ in range(3)] == [(6, 90), (7, 60), (5, 30)]


def test_cancelled_request_items_never_reach_the_model(tiny_scorer: CrossEncoderScorer) -> None:
    gated = Gated(tiny_scorer)

    async def run() -> None:
        engine = engine_for(gated, max_queue_items=1000)
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
        after, _ = await engine.score("q", ["after"])
        assert len(after) == 1
        assert engine.queued_items == 0
        await engine.close()

    asyncio.run(run())
    assert gated.batches == [1, 1], "the cancelled request's 20 items must be dropped"


class Broken(Gated):
    """A model that misbehaves on demand: raises, returns too many outputs, or NaN."""

    mode = ""

    def forward(self, items: Sequence[Item]) -> list[Any]:
        outputs = super().forward(items)
        if self.mode == "raise":
            raise RuntimeError("out of memory")
        if self.mode == "extra":
            return [*outputs, 0.5]  # a 2-label head flattened into twice the outputs, say
        if self.mode == "nan":
            return [float("nan")] * len(outputs)
        if self.mode == "inf-one":
            return [float("inf"), *outputs[1:]]
        return outputs


@pytest.mark.parametrize(("mode", "words"), [("raise", "out of memory"), ("extra", "outputs for a batch"),
                                             ("nan", "non-finite"), ("inf-one", "non-finite")])  # fmt: skip
def test_a_failing_model_call_fails_its_requests_and_the_engine_keeps_serving(
    tiny_scorer: CrossEncoderScorer, mode: str, words: str
) -> None:
    broken = Broken(tiny_scorer)

    async def run() -> None:
        engine = engine_for(broken)
        engine.start()
        broken.mode = mode
        with pytest.raises(ModelFailure, match=words):
            await asyncio.wait_for(engine.score("q", ["a", "b"]), 10)
        broken.mode = ""
        raw, _ = await asyncio.wait_for(engine.score("q", ["a", "b"]), 10)
        assert raw == pytest.approx(tiny_scorer.score("q", ["a", "b"]), abs=1e-6)
        assert engine.queued_items == 0
        await engine.close()

    asyncio.run(run())


def test_a_failed_request_stops_tokenizing_its_remaining_documents(tiny_scorer: CrossEncoderScorer) -> None:
    """Once a model call has failed a request, its other steps are not tokenized: the tokenizing
    thread goes to other requests and the client hears of the failure at once."""
    broken = Broken(tiny_scorer)
    broken.mode = "raise"
    tokenized = [0]

    def slow_steps(query: str, documents: Sequence[str], options: EncodeOptions, encoding: Encoding) -> Iterator[Step]:
        for step in tiny_scorer.steps(query, documents, options, encoding):
            tokenized[0] += 1
            time.sleep(0.02)
            yield step

    broken.steps = slow_steps  # type: ignore[method-assign]
    documents = [f"document {i} " + " ".join(WORDS[: 1 + i % 9]) for i in range(2000)]
    total = sum(1 for _ in tiny_scorer.steps("q", documents, EncodeOptions(), Encoding(len(documents))))

    async def run() -> None:
        engine = engine_for(broken, tokens=512, size=8, max_request_items=5000)
        engine.start()
        with pytest.raises(ModelFailure, match="out of memory"):
            await asyncio.wait_for(engine.score("q", documents), 60)
        assert engine.queued_items == 0
        await engine.close()

    asyncio.run(run())
    assert total > 10 and tokenized[0] < total / 2, (tokenized[0], total)


def test_a_request_tokenizing_when_the_engine_closes_gets_model_not_ready(tiny_scorer: CrossEncoderScorer) -> None:
    """Shutdown (or a swapped-out version) closing the engine under a request that is still
    tokenizing: a 503 (ModelNotReady), not the executor's RuntimeError (a 500) or a hang."""
    gated = Gated(tiny_scorer)
    started = threading.Event()

    def slow_steps(query: str, documents: Sequence[str], options: EncodeOptions, encoding: Encoding) -> Iterator[Step]:
        for step in tiny_scorer.steps(query, documents, options, encoding):
            started.set()
            time.sleep(0.05)
            yield step

    gated.steps = slow_steps  # type: ignore[method-assign]
    documents = [f"document {i} " + " ".join(WORDS[: 1 + i % 9]) for i in range(2000)]

    async def run() -> None:
        engine = engine_for(gated, max_request_items=5000)
        engine.start()
        request = asyncio.create_task(engine.score("q", documents))
        while not started.is_set():
            await asyncio.sleep(0.01)
        await engine.close()
        with pytest.raises(ModelNotReady, match="shutting down"):
            await asyncio.wait_for(request, 10)

    asyncio.run(run())


def test_tokenization_of_a_huge_request_does_not_hold_back_a_small_one(tiny_scorer: CrossEncoderScorer) -> None:
    """Each request's tokenization runs in bounded steps on one thread; steps interleave."""
    order: list[str] = []

    class Recording(Gated):
        def steps(self, query: str, documents: Sequence[str], options: EncodeOptions,
                  encoding: Encoding) -> Iterator[Step]:  # fmt: skip
            for step in self.inner.steps(query, documents, options, encoding):
                order.append(query)
                yield step

    recording = Recording(tiny_scorer)
    long_doc = " ".join(WORDS * 400)  # ~120 chunks: several item steps

    async def run() -> None:
        engine = engine_for(recording, max_queue_items=100_000, max_request_items=100_000)
        engine.start()
        recording.gate.clear()
        big = asyncio.create_task(engine.score("big", [long_doc] * 20, CHUNKED))
        await asyncio.sleep(0)
        small = asyncio.create_task(engine.score("small", ["paris"]))
        await asyncio.sleep(0.5)
        recording.gate.set()
        await asyncio.gather(big, small)
        await engine.close()

    asyncio.run(run())
    first_small = order.index("small")
    assert first_small < len(order) - 5 and order[first_small:].count("big") > 5, "steps interleave"


class Held(Gated):
    """Each model call waits on its own gate, in the order the calls start."""

    def __init__(self, inner: Scorer, calls: int) -> None:
        super().__init__(inner)
        self.gates = [threading.Event() for _ in range(calls)]
        self.started: list[float] = []
        self._lock = threading.Lock()

    def forward(self, items: Sequence[Item]) -> list[Any]:
        with self._lock:
            gate = self.gates[len(self.started)]
            self.started.append(time.monotonic())
        gate.wait(timeout=30)
        return self.inner.forward(items)


def test_busy_since_is_the_oldest_running_call_across_lanes(tiny_scorer: CrossEncoderScorer) -> None:
    """The health probe trusts a call running for under its timeout: with two lanes, the end of
    the younger call must not make the older, still running one look fresh."""
    held = Held(tiny_scorer, calls=2)

    async def run() -> tuple[float | None, float | None, float]:
        engine = BatchEngine(held, max_batch_tokens=4096, max_batch_size=64, limits=Limits(), lanes=2)
        engine.start()
        first = asyncio.create_task(engine.score("q", ["paris"]))
        while len(held.started) < 1:
            await asyncio.sleep(0.01)
        second = asyncio.create_task(engine.score("q", ["berlin"]))
        while len(held.started) < 2:
            await asyncio.sleep(0.01)
        held.gates[1].set()  # the younger call ends first
        await second
        while_older_runs = engine.busy_since
        held.gates[0].set()
        await first
        after = engine.busy_since
        await engine.close()
        return while_older_runs, after, held.started[0]

    while_older_runs, after, oldest = asyncio.run(run())
    assert while_older_runs is not None and abs(while_older_runs - oldest) < 0.05
    assert after is None
