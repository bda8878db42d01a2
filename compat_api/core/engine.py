"""The batching engine: bounded admission, fair tokenization, and one model shared by every request.

A request reaches the model in three stages:

- **admission**: it is charged an estimate (its documents) against the model's queue bound at
  once, then what its tokenization steps declare (items after chunking, and tokens) before
  those items are built; past a per-request cap it gets `LimitExceeded` (413), past the queue
  bound `Overloaded` (429, with a Retry-After from the measured throughput), while the health
  probe is never refused;
- **tokenization** on the model's tokenizer thread, one bounded step at a time, so that the
  steps of concurrent requests interleave and a huge request never holds the tokenizer;
- **scheduling**: between model calls each lane picks a fair round (compat_api/core/scheduling.py)
  and runs it as batches of similar length on its own thread; lanes share the model's weights.

A request that is cancelled (client gone, deadline) has its waiting items dropped before they
reach the model. A model call that raises, returns the wrong number of outputs or a non-finite
score fails the requests it served with `ModelFailure`, never the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from compat_api.core.errors import CoreError, LimitExceeded, ModelFailure, ModelNotReady, Overloaded
from compat_api.core.models.base import DEFAULT_OPTIONS, Cost, EncodeOptions, Encoding, Item, Scorer, Step
from compat_api.core.scheduling import Queue, plan_batches, round_budget, select_round

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class ScoreResult:
    """Raw scores in document order and the tokens the request was billed for."""

    raw: list[float]
    tokens: int
    cached: int = 0


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

    def __add__(self, other: EngineTotals) -> EngineTotals:
        return EngineTotals(self.batches + other.batches, self.items + other.items,
                            self.real_tokens + other.real_tokens, self.padded_tokens + other.padded_tokens,
                            self.model_seconds + other.model_seconds)  # fmt: skip


@dataclass(frozen=True)
class BatchStats:
    """Counters a batch reports to observers (metrics, tests)."""

    size: int
    real_tokens: int
    padded_tokens: int
    seconds: float


# The range the adaptive token budget moves in (an item longer than the budget still runs alone).
MIN_ADAPTIVE_TOKENS = 2048
MAX_ADAPTIVE_TOKENS = 16384


@dataclass(frozen=True)
class Limits:
    """What the engine admits: per request, and waiting in total (items and tokens)."""

    max_queue_items: int = 4096
    max_queue_tokens: int = 4_000_000
    max_request_items: int | None = None
    max_request_tokens: int | None = None


class _Job:
    """One request in the engine: its items, outputs, and what it has been charged."""

    __slots__ = ("charged_items", "charged_tokens", "declared_items", "declared_tokens", "done", "field", "future",
                 "items", "outputs", "queue", "sealed")  # fmt: skip

    def __init__(self, queue: Queue, future: asyncio.Future[list[Any]], field: str = "documents") -> None:
        self.queue = queue
        self.field = field
        self.future = future
        self.items: list[Item] = []
        self.outputs: list[Any] = []
        self.done = 0
        self.sealed = False
        self.declared_items = self.declared_tokens = 0
        self.charged_items = self.charged_tokens = 0

    @property
    def finished(self) -> bool:
        return self.future.done()

    def complete_if_ready(self) -> None:
        if self.sealed and self.done == len(self.items) and not self.future.done():
            self.future.set_result(self.outputs)

    def fail(self, exc: CoreError) -> None:
        if not self.future.done():
            self.future.set_exception(exc)
            self.future.exception()  # retrieved here: a request that already left must not log it


def _finite(output: Any) -> bool:
    """Whether a model output (a float, a tensor or an array, or a dict/list of them) is finite."""
    if isinstance(output, float | int):
        return math.isfinite(output)
    if isinstance(output, dict):
        return all(_finite(v) for v in output.values())
    if isinstance(output, list | tuple):
        return all(_finite(v) for v in output)
    isfinite = getattr(output, "isfinite", None)
    if isfinite is not None:  # torch tensors
        return bool(isfinite().all())
    import numpy as np

    return bool(np.isfinite(np.asarray(output)).all())


def _lane_threads(threads: int | None) -> None:
    """A lane's own intra-op thread count (torch's OpenMP setting is per calling thread)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


class BatchEngine:
    """Runs one model version's work: admission, tokenization, fair rounds on its lanes."""

    def __init__(
        self,
        scorer: Scorer,
        *,
        max_batch_tokens: int,
        max_batch_size: int,
        limits: Limits | None = None,
        lanes: int = 1,
        lane_threads: int | None = None,
        tokenize_on_lane: bool = False,
        batch_seconds: float | None = None,
        cache: Any = None,
    ) -> None:
        self.scorer = scorer
        self.cache = cache
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.batch_seconds = batch_seconds
        self._speed = 0.0  # padded tokens a second, a moving average over model calls
        self.limits = limits or Limits()
        name = scorer.info.name[:20]
        self._lanes = [
            ThreadPoolExecutor(1, thread_name_prefix=f"lane{i}-{name}", initializer=_lane_threads,
                               initargs=(lane_threads,))
            for i in range(max(1, lanes))
        ]  # fmt: skip
        # On a CPU whose cores the model's threads already fill, tokenizing beside the forward
        # slows the forward more than the tokenizing costs: the steps then take turns with the
        # batches on the (first) lane's thread.
        self._own_tokenizer = not tokenize_on_lane
        self._tokenizer = (
            ThreadPoolExecutor(1, thread_name_prefix=f"tok-{name}") if self._own_tokenizer else self._lanes[0]
        )
        self._queues: dict[int, _Job] = {}  # waiting requests by queue seq, in arrival order
        self._seq = itertools.count()
        self._rotation = 0
        self._items_charged = 0
        self._tokens_charged = 0
        self._jobs = 0
        self._work = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._started = False
        self.last_success: float = 0.0
        self._calls: dict[int, float] = {}  # running model calls (any lane): when each started
        self._call_ids = itertools.count()
        self.totals = EngineTotals()
        self.observers: list[Any] = []

    @property
    def busy_since(self) -> float | None:
        """When the oldest model call still running started (None: none runs); with several lanes,
        a call that finishes never hides an older one still running."""
        return min(self._calls.values(), default=None)

    @property
    def batches_run(self) -> int:
        return self.totals.batches

    @property
    def queued_items(self) -> int:
        """Items charged to admitted requests that are not finished (tokenizing, waiting or running)."""
        return self._items_charged

    @property
    def queued_tokens(self) -> int:
        return self._tokens_charged

    @property
    def requests(self) -> int:
        """Requests admitted and not finished."""
        return self._jobs

    def start(self) -> None:
        if not self._started:
            self._started = True
            loop = asyncio.get_running_loop()
            name = self.scorer.info.name
            self._tasks = [loop.create_task(self._lane(lane), name=f"lane{i}-{name}")
                           for i, lane in enumerate(self._lanes)]  # fmt: skip

    async def close(self) -> None:
        """Stop the lanes, fail what still waits, and free the threads (off the event loop)."""
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for job in list(self._queues.values()):
            job.fail(ModelNotReady("the model is shutting down"))
        self._queues.clear()
        if self._own_tokenizer:
            self._tokenizer.shutdown(wait=False, cancel_futures=True)
        for lane in self._lanes:
            await asyncio.to_thread(lane.shutdown, wait=True, cancel_futures=True)

    # ------------------------------------------------------------------ requests

    async def score(
        self,
        query: str,
        documents: Sequence[str],
        options: EncodeOptions = DEFAULT_OPTIONS,
        *,
        priority: bool = False,
        field: str = "documents",
    ) -> tuple[list[float], Encoding]:
        """Raw scores of `documents` against `query` (input order) and the request's billing;
        `field` names the document list in the errors of the per-request caps."""
        encoding = Encoding(len(documents))
        steps = self.scorer.steps(query, documents, options, encoding)
        outputs = await self.run(steps, estimate=len(documents) + 1, priority=priority, field=field)
        return self.scorer.finish(encoding, outputs), encoding

    async def run(
        self, steps: Iterator[Step], *, estimate: int, priority: bool = False, field: str = "documents"
    ) -> list[Any]:
        """Admit a request, tokenize it step by step, and return one output per item it yielded.
        `field` names the request's input list in the errors of the per-request caps."""
        if self._closed or not self._started:
            raise ModelNotReady(f"model {self.scorer.info.name!r} is not running")
        loop = asyncio.get_running_loop()
        job = _Job(Queue(next(self._seq), priority=priority), loop.create_future(), field)
        self._jobs += 1
        try:
            self._charge(job, estimate, 0)
            while (step := await self._next_step(loop, steps)) is not None:
                if job.finished:  # failed (a model call, a cap): the rest is not worth tokenizing
                    break
                if isinstance(step, Cost):
                    self._declare(job, step)
                else:
                    self._push(job, step)
            job.sealed = True
            job.complete_if_ready()
            return await job.future
        finally:
            self._jobs -= 1
            self._queues.pop(job.queue.seq, None)
            self._items_charged -= job.charged_items
            self._tokens_charged -= job.charged_tokens
            job.charged_items = job.charged_tokens = 0
            if not job.future.done():
                job.future.cancel()

    async def _next_step(self, loop: asyncio.AbstractEventLoop, steps: Iterator[Step]) -> Step | None:
        """The request's next step, tokenized on the tokenizing thread; the engine closing
        meanwhile (a hot swap's old version, shutdown) is a ModelNotReady, not a crash."""
        try:
            step = await loop.run_in_executor(self._tokenizer, next, steps, None)
        except (RuntimeError, asyncio.CancelledError):  # the executor shut down under the request
            task = asyncio.current_task()
            if self._closed and not (task is not None and task.cancelling()):
                raise ModelNotReady(f"model {self.scorer.info.name!r} is shutting down") from None
            raise
        if self._closed:
            raise ModelNotReady(f"model {self.scorer.info.name!r} is shutting down")
        return step

    async def tokenizing(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the thread that tokenizes this engine's requests. A fast tokenizer's
        truncation and padding are settings it keeps between calls, so a second thread using it
        at once (`/tokenize` beside an embedding request) would encode with the other's settings."""
        if self._closed:
            raise ModelNotReady(f"model {self.scorer.info.name!r} is not running")
        return await asyncio.get_running_loop().run_in_executor(self._tokenizer, fn, *args)

    def _retry_after(self) -> int:
        """Seconds until the waiting work is done, at the throughput measured so far."""
        totals = self.totals
        rate = totals.real_tokens / totals.model_seconds if totals.model_seconds > 1 else 0.0
        if rate <= 0:
            return 1
        return max(1, min(60, math.ceil(self._tokens_charged / rate)))

    def _charge(self, job: _Job, items: int, tokens: int) -> None:
        """Raise the job's charge to (items, tokens); refuse when others fill the queue."""
        add_items, add_tokens = max(0, items - job.charged_items), max(0, tokens - job.charged_tokens)
        others = self._items_charged - job.charged_items
        limits = self.limits
        if not job.queue.priority and others > 0:
            if self._items_charged + add_items > limits.max_queue_items:
                what = f"{self._items_charged} items waiting, limit {limits.max_queue_items} (RERANK_MAX_QUEUE_PAIRS)"
            elif self._tokens_charged + add_tokens > limits.max_queue_tokens:
                what = (
                    f"{self._tokens_charged} tokens waiting, limit {limits.max_queue_tokens} (RERANK_MAX_QUEUE_TOKENS)"
                )
            else:
                what = ""
            if what:
                raise Overloaded(f"model {self.scorer.info.name!r} is busy ({what}); retry shortly",
                                 retry_after=self._retry_after())  # fmt: skip
        job.charged_items += add_items
        job.charged_tokens += add_tokens
        self._items_charged += add_items
        self._tokens_charged += add_tokens

    def _declare(self, job: _Job, cost: Cost) -> None:
        job.declared_items += cost.items
        job.declared_tokens += cost.tokens
        limits = self.limits
        if limits.max_request_items is not None and job.declared_items > limits.max_request_items:
            raise LimitExceeded(
                f"the request needs at least {job.declared_items} model items ({job.field} and their chunks, each "
                f"with the query for a reranker), over the limit of {limits.max_request_items} "
                f"(RERANK_MAX_REQUEST_ITEMS); send fewer {job.field} or fewer chunks per document",
                field=job.field,
            )
        if limits.max_request_tokens is not None and job.declared_tokens > limits.max_request_tokens:
            raise LimitExceeded(
                f"the request needs at least {job.declared_tokens} tokens, over the limit of "
                f"{limits.max_request_tokens} (RERANK_MAX_REQUEST_TOKENS)",
                field=job.field,
            )
        self._charge(job, max(job.charged_items, job.declared_items), job.declared_tokens)

    def _push(self, job: _Job, items: list[Item]) -> None:
        if job.finished or not items:
            return
        start = len(job.items)
        job.items.extend(items)
        job.outputs.extend([None] * len(items))
        job.queue.extend(start, [item.length for item in items])
        self._queues[job.queue.seq] = job
        self._work.set()

    # ------------------------------------------------------------------ lanes

    def _adapt(self, stats: BatchStats) -> None:
        """Follow the model's measured speed: a model call should take about `batch_seconds`."""
        if self.batch_seconds is None or stats.seconds <= 0:
            return
        speed = stats.padded_tokens / stats.seconds
        self._speed = speed if not self._speed else 0.8 * self._speed + 0.2 * speed
        self.max_batch_tokens = int(
            min(MAX_ADAPTIVE_TOKENS, max(MIN_ADAPTIVE_TOKENS, self._speed * self.batch_seconds))
        )

    def _next_round(self) -> list[tuple[_Job, int]]:
        jobs = [job for job in self._queues.values() if job.queue.items and not job.finished]
        if not jobs:
            return []
        self._rotation = (self._rotation + 1) % len(jobs)
        rotated = jobs[self._rotation :] + jobs[: self._rotation]
        owner = {id(job.queue): job for job in rotated}
        picked = select_round([job.queue for job in rotated], round_budget(self.max_batch_tokens), self.max_batch_size)
        return [(owner[id(queue)], index) for queue, index, _ in picked]

    async def _lane(self, lane: ThreadPoolExecutor) -> None:
        while True:
            picked = self._next_round()
            if not picked:
                self._work.clear()
                await self._work.wait()
                continue
            try:
                lengths = [job.items[index].length for job, index in picked]
                for batch in plan_batches(lengths, self.max_batch_tokens, self.max_batch_size):
                    slots = [picked[i] for i in batch if not picked[i][0].finished]
                    if slots:
                        await self._run_batch(lane, slots)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("the batcher of %s failed on a round", self.scorer.info.name)
                failure = ModelFailure(f"internal error while batching: {type(exc).__name__}: {exc}")
                for job, _ in picked:
                    job.fail(failure)

    async def _run_batch(self, lane: ThreadPoolExecutor, slots: list[tuple[_Job, int]]) -> None:
        items = [job.items[index] for job, index in slots]
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        call = next(self._call_ids)
        self._calls[call] = time.monotonic()
        try:
            outputs = await loop.run_in_executor(lane, self.scorer.forward, items)
            if not isinstance(outputs, list) or len(outputs) != len(items):
                count = len(outputs) if isinstance(outputs, list) else type(outputs).__name__
                raise ModelFailure(f"the model returned {count} outputs for a batch of {len(items)} items")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("model %s failed on a batch of %d items: %s", self.scorer.info.name, len(items), exc,
                      exc_info=not isinstance(exc, ModelFailure))  # fmt: skip
            failure = exc if isinstance(exc, ModelFailure) else ModelFailure(
                f"the model failed while scoring: {type(exc).__name__}: {exc}")  # fmt: skip
            for job, _ in slots:
                job.fail(failure)
            return
        finally:
            del self._calls[call]
        elapsed = time.perf_counter() - started
        if all(_finite(output) for output in outputs):  # a call that scored NaN is no sign of health
            self.last_success = time.monotonic()
        stats = BatchStats(len(items), sum(i.length for i in items), len(items) * max(i.length for i in items),
                           elapsed)  # fmt: skip
        totals = self.totals
        totals.batches += 1
        totals.items += stats.size
        totals.real_tokens += stats.real_tokens
        totals.padded_tokens += stats.padded_tokens
        totals.model_seconds += elapsed
        self._adapt(stats)
        for observer in self.observers:
            observer(stats)
        for (job, index), output in zip(slots, outputs, strict=True):
            if job.finished:
                continue
            if not _finite(output):
                job.fail(ModelFailure(
                    f"model {self.scorer.info.name!r} produced a non-finite score (NaN or infinity); the model "
                    "or its precision is broken"))  # fmt: skip
                continue
            job.outputs[index] = output
            job.done += 1
            job.complete_if_ready()
