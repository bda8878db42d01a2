"""The model's speed by batch size, and the batch sizes the server's adaptive budget picks.

On a CPU the engine sizes each model call by time (`RERANK_BATCH_SECONDS` of work at the model's
measured speed, within MIN/MAX_ADAPTIVE_TOKENS). This benchmark checks that choice against the
model itself: it loads a model as the server does (default settings, `load_scorer`), measures the
forward in pairs/s at fixed batch sizes on W1's pairs (sorted by length, as the engine batches
them; sizes interleaved, median of rounds), then runs W1's requests (1 client x 32 documents)
through a real `BatchEngine` with the server's defaults and reports the sizes of the calls it made,
their pairs/s and the share of the engine's time spent inside them: with the engine's order for
a request's waiting items (longest first, `Queue.extend`) and with arrival order, side by side in
each round. If the adaptive sizes sit at the forward's best, no batch rule can make the server
faster on this CPU.

    python -m bench.batches --rounds 3
    python -m bench.batches --model-path bench/.models/minilm-cross-encoder
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

from bench import host
from bench.workloads import build
from compat_api.core.engine import BatchStats
from compat_api.core.models.base import DEFAULT_OPTIONS, Encoding, Item, Scorer
from compat_api.core.registry import ModelSpec, build_engine, load_scorer
from compat_api.core.scheduling import Queue
from compat_api.settings import Settings

log = logging.getLogger("bench.batches")
ROOT = Path(__file__).resolve().parent.parent
SIZES = (4, 8, 12, 16, 24, 32, 48)


def items_of(scorer: Scorer, pairs: list[tuple[str, str]]) -> list[Item]:
    """The model items of (query, document) pairs, tokenized as the server does."""
    items: list[Item] = []
    for query, document in pairs:
        for step in scorer.steps(query, [document], DEFAULT_OPTIONS, Encoding(1)):
            if isinstance(step, list):
                items.extend(step)
    return sorted(items, key=lambda item: item.length)


def forward_speed(scorer: Scorer, items: list[Item], size: int) -> float:
    started = time.perf_counter()
    for i in range(0, len(items), size):
        scorer.forward(items[i : i + size])
    return len(items) / (time.perf_counter() - started)


@dataclass
class EngineRuns:
    """One engine variant's rounds: pairs/s, share of wall time in model calls, its calls."""

    speeds: list[float] = field(default_factory=list)
    busy: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    sizes: collections.Counter[int] = field(default_factory=collections.Counter)

    def add(self, speed: float, calls: list[BatchStats]) -> None:
        self.speeds.append(speed)
        self.busy.append(sum(call.seconds for call in calls) * speed / sum(call.size for call in calls))
        self.seconds.extend(call.seconds for call in calls)
        self.sizes.update(call.size for call in calls)

    def histogram(self) -> str:
        total = sum(self.sizes.values())
        return ", ".join(f"{size}: {count / total:.0%}" for size, count in sorted(self.sizes.items()))


def arrival_order(queue: Queue, start: int, lengths: Sequence[int]) -> None:
    """The queue order before `Queue.extend`: a step's items as tokenized."""
    for offset, length in enumerate(lengths):
        queue.push(start + offset, length)


# The order a request's items wait in: the engine's (a step's items longest first, so a round
# holds items of similar length) and the one before it (arrival order, so the padding rule split
# each round into several small calls).
VARIANTS: dict[str, Callable[[], contextlib.AbstractContextManager[object]]] = {
    "longest first (the engine's rule)": contextlib.nullcontext,
    "arrival order (the rule before)": lambda: mock.patch.object(Queue, "extend", arrival_order),
}


async def through_engine(scorer: Scorer, settings: Settings, round_no: int) -> tuple[float, list[BatchStats]]:
    """W1's requests through an engine with the server's CPU defaults: pairs/s and its calls."""
    engine = build_engine(scorer, settings)
    calls: list[BatchStats] = []
    engine.observers.append(calls.append)
    engine.start()
    try:
        warm = build(round_no + 100)[0].clients[0][0]
        await engine.score(warm.query, warm.documents)  # the budget starts from its floor: let it adapt
        calls.clear()
        requests = build(round_no)[0].clients[0]
        started = time.perf_counter()
        pairs = 0
        for request in requests:
            await engine.score(request.query, request.documents)
            pairs += len(request.documents)
        return pairs / (time.perf_counter() - started), calls
    finally:
        await engine.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", default=str(ROOT / "bench" / ".models" / "minilm-cross-encoder"),
                        help="a cross-encoder directory (default: the MiniLM that bench.run builds)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not Path(args.model_path).is_dir():
        raise SystemExit(f"{args.model_path} is not a directory: `python -m bench.run --model minilm` builds it")
    settings = Settings(model_path=args.model_path, torch_threads=args.threads)
    scorer = load_scorer(ModelSpec(name="bench", path=args.model_path), settings)
    before = host.read()
    speeds: dict[int, list[float]] = collections.defaultdict(list)
    runs = {variant: EngineRuns() for variant in VARIANTS}
    for round_no in range(args.rounds):
        workload = build(round_no)[0]
        pairs = [(r.query, d) for r in workload.clients[0] for d in r.documents][:96]
        items = items_of(scorer, pairs)
        forward_speed(scorer, items[:16], 16)
        for size in SIZES:
            speeds[size].append(forward_speed(scorer, items, size))
        for variant, patch in VARIANTS.items():
            with patch():
                speed, calls = asyncio.run(through_engine(scorer, settings, round_no))
            runs[variant].add(speed, calls)
            log.info("round %d, %s: engine %.1f pairs/s in calls of %s", round_no + 1, variant, speed,
                     sorted(collections.Counter(c.size for c in calls).items()))  # fmt: skip
        log.info("round %d: forward %s pairs/s", round_no + 1, {s: round(v[-1], 1) for s, v in speeds.items()})
    share = host.stolen(before, host.read())
    medians = {size: statistics.median(values) for size, values in speeds.items()}
    best = max(medians, key=lambda size: medians[size])
    print(f"\n{Path(args.model_path).name}, {args.threads} threads, W1 pairs, median of {args.rounds} rounds\n")
    print("| batch size | " + " | ".join(str(s) for s in SIZES) + " |")
    print("|---|" + "---|" * len(SIZES))
    print("| forward pairs/s | " + " | ".join(f"{medians[s]:.1f}" for s in SIZES) + " |")
    print("| × best | " + " | ".join(f"{medians[s] / medians[best]:.2f}" for s in SIZES) + " |")
    print(f"\nW1 through a BatchEngine with the server's CPU defaults (RERANK_BATCH_SECONDS={settings.batch_seconds}); "
          f"the forward's best batch: {best}, {medians[best]:.1f} pairs/s\n")  # fmt: skip
    print("| rounds | pairs/s | × forward's best | ms a call | time in model calls | calls by size |")
    print("|---|---|---|---|---|---|")
    for variant, run in runs.items():
        speed = statistics.median(run.speeds)
        print(f"| {variant} | {speed:.1f} | {speed / medians[best]:.2f} | {statistics.median(run.seconds) * 1000:.0f} "
              f"| {statistics.median(run.busy):.0%} | {run.histogram()} |")  # fmt: skip
    print(host.steal_note(share))


if __name__ == "__main__":
    main()
