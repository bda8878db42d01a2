"""The batching engine: one lane per model, bounded admission, batches merged across requests.

A request is tokenized on the model's tokenizer thread, its items join the pending pool, and
the batcher task forms batches from everything pending: items sorted by length, packed up to a
token budget (padded tokens) and a size cap, run one at a time on the model's single thread.
Results go back to their requests. A cancelled request (client gone, deadline) has its
pending items dropped before they reach the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from compat_api.core.cache import CachedScore, ScoreCache
from compat_api.core.errors import LimitExceeded, ModelFailure, ModelNotReady, Overloaded
from compat_api.core.scorers import DEFAULT_OPTIONS, Encoded, EncodeOptions, Item, Scorer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoreResult:
    """Raw scores in document order and the tokens the request was billed for."""

    raw: list[float]
    tokens: int
    cached: int = 0


class _Job:
    """One request's items in flight; completes its future when every item has an output."""

    __slots__ = ("cancelled", "encoded", "future", "outputs", "remaining")

    def __init__(self, encoded: Encoded, future: asyncio.Future[list[Any]]) -> None:
        self.encoded = encoded
        self.outputs: list[Any] = [None] * len(encoded.items)
        self.remaining = len(encoded.items)
        self.future = future
        self.cancelled = False


@dataclass(frozen=True)
class _Slot:
    job: _Job
    index: int

    @property
    def item(self) -> Item:
        return self.job.encoded.items[self.index]


@dataclass
class EngineTotals:
    """Running totals since start-up (health, metrics, benchmarks)."""

    batches: int = 0
    items: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    model_seconds: float = 0.0

    @property
    def padding_waste(self) -> float:
        """Share of the model's token slots that were padding."""
        return 1 - self.real_tokens / self.padded_tokens if self.padded_tokens else 0.0


@dataclass(frozen=True)
class BatchStats:
    """Counters a batch reports to observers (metrics, tests)."""

    size: int
    real_tokens: int
    padded_tokens: int
    seconds: float


LENGTH_BUCKET_RATIO = 1.25
MAX_BATCH_PADDING = 0.1  # a batch never grows past 10% padding


def length_bucket(length: int) -> int:
    """Lengths within about 25% of each other share a bucket (the padding rule splits finer)."""
    return math.floor(math.log(max(1, length)) / math.log(LENGTH_BUCKET_RATIO))


def plan_batches(lengths: Sequence[int], max_tokens: int, max_size: int) -> list[list[int]]:
    """Group item indices (given in arrival order) into batches of similar length.

    Items are ordered by length bucket (longest first) and, within a bucket, by arrival, so that
    padding stays small and earlier requests finish first; then they are packed greedily while
    the padded cost (batch size x longest item) stays within `max_tokens`, the count within
    `max_size` and the padding within 10%. An item longer than the budget on its own still gets
    a batch of one.
    """
    order = sorted(range(len(lengths)), key=lambda i: -length_bucket(lengths[i]))  # stable: arrival order
    batches: list[list[int]] = []
    current: list[int] = []
    longest = real = 0
    for i in order:
        length = max(1, lengths[i])
        width = max(longest, length)
        padded = width * (len(current) + 1)
        too_much_padding = padded - (real + length) > MAX_BATCH_PADDING * padded
        if current and (padded > max_tokens or len(current) >= max_size or too_much_padding):
            batches.append(current)
            current, width, real = [], length, 0
        current.append(i)
        longest, real = width, real + length
    if current:
        batches.append(current)
    return batches


class BatchEngine:
    """Serializes one model's work on its own threads and batches across concurrent requests."""

    def __init__(
        self,
        scorer: Scorer,
        *,
        max_batch_tokens: int,
        max_batch_size: int,
        max_queue_items: int,
        cache: ScoreCache | None = None,
        max_request_tokens: int | None = None,
    ) -> None:
        self.max_request_tokens = max_request_tokens
        self.scorer = scorer
        self.cache = cache
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.max_queue_items = max_queue_items
        name = scorer.info.name[:20]
        self._tokenizer_thread = ThreadPoolExecutor(1, thread_name_prefix=f"tok-{name}")
        self._model_thread = ThreadPoolExecutor(1, thread_name_prefix=f"model-{name}")
        self._pending: list[_Slot] = []
        self._admitted = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.last_success: float = 0.0
        self.totals = EngineTotals()
        self.observers: list[Any] = []

    @property
    def batches_run(self) -> int:
        return self.totals.batches

    @property
    def queued_items(self) -> int:
        """Items admitted and not yet finished (tokenizing, pending or in the model)."""
        return self._admitted

    def start(self) -> None:
        if self._task is None:
            self._wakeup = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.scorer.info.name}")

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for slot in self._pending:
            if not slot.job.future.done():
                slot.job.future.set_exception(ModelNotReady("the model is shutting down"))
        self._pending.clear()
        self._tokenizer_thread.shutdown(wait=False, cancel_futures=True)
        self._model_thread.shutdown(wait=True, cancel_futures=True)

    def _retry_after(self) -> int:
        return 1

    async def score(
        self,
        query: str,
        documents: Sequence[str],
        options: EncodeOptions = DEFAULT_OPTIONS,
        *,
        use_cache: bool = True,
    ) -> ScoreResult:
        """Score one request's documents against its query; raw scores in input order.

        Documents found in the score cache skip tokenization and the model (`use_cache=False`
        forces a model call, as the health probe needs).
        """
        if self._closed or self._task is None:
            raise ModelNotReady(f"model {self.scorer.info.name!r} is not running")
        raw: list[float | None] = [None] * len(documents)
        tokens = [0] * len(documents)
        keys: list[bytes] = []
        cache = self.cache if use_cache else None
        if cache is not None:
            namespace = f"{self.scorer.info.name}|{self.scorer.info.path}|{options!r}"
            keys = [cache.key(namespace, query, doc) for doc in documents]
            for i, key in enumerate(keys):
                hit = cache.get(key)
                if hit is not None:
                    raw[i], tokens[i] = hit.raw, hit.tokens
        missing = [i for i, score in enumerate(raw) if score is None]
        extra_tokens = 0
        if missing:
            scored, encoded = await self._score_uncached(query, [documents[i] for i in missing], options)
            extra_tokens = encoded.tokens - sum(encoded.doc_tokens)  # e.g. an embedding model's query
            for j, i in enumerate(missing):
                raw[i], tokens[i] = scored[j], encoded.doc_tokens[j]
                if cache is not None:
                    cache.put(keys[i], CachedScore(scored[j], encoded.doc_tokens[j]))
        return ScoreResult(
            raw=[float(s) for s in raw if s is not None],
            tokens=sum(tokens) + extra_tokens,
            cached=len(documents) - len(missing),
        )

    async def _score_uncached(
        self, query: str, documents: Sequence[str], options: EncodeOptions
    ) -> tuple[list[float], Encoded]:
        # Admission is counted in documents + 1 (an embedding model's query is an item too),
        # before tokenization, so the bound covers every stage.
        cost = len(documents) + 1
        if self._admitted + cost > self.max_queue_items and self._admitted > 0:
            raise Overloaded(
                f"model {self.scorer.info.name!r} queue is full ({self._admitted} items waiting, "
                f"limit {self.max_queue_items}); retry shortly",
                retry_after=self._retry_after(),
            )
        self._admitted += cost
        loop = asyncio.get_running_loop()
        job: _Job | None = None
        try:
            encoded = await loop.run_in_executor(self._tokenizer_thread, self.scorer.encode, query, documents, options)
            if self.max_request_tokens is not None and encoded.tokens > self.max_request_tokens:
                raise LimitExceeded(
                    f"the request needs {encoded.tokens} tokens, over the limit of {self.max_request_tokens} "
                    "(RERANK_MAX_REQUEST_TOKENS)",
                    field="documents",
                )
            job = _Job(encoded, loop.create_future())
            self._pending.extend(_Slot(job, i) for i in range(len(encoded.items)))
            assert self._wakeup is not None
            self._wakeup.set()
            outputs = await job.future
            raw = await loop.run_in_executor(self._tokenizer_thread, self.scorer.finish, encoded, outputs)
            return raw, encoded
        finally:
            if job is not None:
                job.cancelled = True  # finished or abandoned: nothing of it may run any more
            self._admitted -= cost

    async def _run(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                snapshot = [s for s in self._pending if not s.job.cancelled]
                self._pending.clear()
                lengths = [s.item.length for s in snapshot]
                for batch_ids in plan_batches(lengths, self.max_batch_tokens, self.max_batch_size):
                    batch = [snapshot[i] for i in batch_ids if not snapshot[i].job.cancelled]
                    if batch:
                        await self._run_batch(loop, batch)

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: list[_Slot]) -> None:
        items = [s.item for s in batch]
        started = time.perf_counter()
        try:
            outputs = await loop.run_in_executor(self._model_thread, self.scorer.forward, items)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            log.exception("model %s failed on a batch of %d items", self.scorer.info.name, len(items))
            failure = ModelFailure(f"the model failed while scoring: {type(exc).__name__}: {exc}")
            for slot in batch:
                if not slot.job.future.done():
                    slot.job.future.set_exception(failure)
            return
        elapsed = time.perf_counter() - started
        self.last_success = time.monotonic()
        stats = BatchStats(
            size=len(items),
            real_tokens=sum(i.length for i in items),
            padded_tokens=len(items) * max(i.length for i in items),
            seconds=elapsed,
        )
        totals = self.totals
        totals.batches += 1
        totals.items += stats.size
        totals.real_tokens += stats.real_tokens
        totals.padded_tokens += stats.padded_tokens
        totals.model_seconds += elapsed
        for observer in self.observers:
            observer(stats)
        for slot, output in zip(batch, outputs, strict=True):
            job = slot.job
            job.outputs[slot.index] = output
            job.remaining -= 1
            if job.remaining == 0 and not job.future.done():
                job.future.set_result(job.outputs)
