"""How the engine shares a model between requests: fair rounds, and batches of similar length.

Every request that has items waiting owns a `Queue`. Between model calls the engine picks the
next *round* of items (`select_round`, at most a token budget and a size cap):

1. health probes first;
2. a fair share: half the budget is dealt out by deficit round robin (each waiting request is
   credited an equal quantum of tokens per round and takes items while its credit lasts), so
   every request progresses every few rounds whatever else is queued;
3. the rest goes to the requests with the least work left (shortest remaining first), so that a
   small request finishes in about one round even behind thousands of queued items, and equal
   requests finish in arrival order rather than all at once.

A request's items wait longest first within each tokenization step (`Queue.extend`), so a round
holds items of similar length. The round is then split into model calls of similar length
(`plan_batches`), so padding stays small. A round takes at most `round_budget` real tokens,
room for its calls' padding within the token budget, so that no item spills into a call of its
own. A new request therefore waits about one round, never for everything queued before it.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

FAIR_SHARE = 0.5
LENGTH_BUCKET_RATIO = 1.25
MAX_BATCH_PADDING = 0.1  # a batch never grows past 10% padding


class Queue:
    """One request's items waiting for the model, in the order they were tokenized."""

    __slots__ = ("deficit", "items", "priority", "seq", "tokens")

    def __init__(self, seq: int, *, priority: bool = False) -> None:
        self.seq = seq
        self.priority = priority
        self.items: deque[tuple[int, int]] = deque()  # (item index, length)
        self.tokens = 0  # waiting tokens
        self.deficit = 0.0

    def push(self, index: int, length: int) -> None:
        self.items.append((index, max(1, length)))
        self.tokens += max(1, length)

    def extend(self, start: int, lengths: Sequence[int]) -> None:
        """Queue a tokenization step's items (indices from `start`), longest first: the rounds
        that take them then hold items of similar length, so each round runs as one or two full
        model calls instead of several small ones split off by the padding rule."""
        for offset in sorted(range(len(lengths)), key=lambda k: -lengths[k]):
            self.push(start + offset, lengths[offset])

    def pop(self) -> tuple[int, int]:
        index, length = self.items.popleft()
        self.tokens -= length
        if not self.items:
            self.deficit = 0.0
        return index, length

    def __len__(self) -> int:
        return len(self.items)


def round_budget(max_tokens: int) -> int:
    """The real tokens a round may take so that its calls, padded by at most MAX_BATCH_PADDING,
    stay within `max_tokens`. A round sized by the padded budget itself spilled its last item or
    two into a call of their own (a third of MiniLM's calls held 1 pair: `python -m bench.batches`):
    one more call per round, each with a call's fixed cost."""
    return max(1, int(max_tokens * (1 - MAX_BATCH_PADDING)))


def select_round(queues: Sequence[Queue], max_tokens: int, max_items: int) -> list[tuple[Queue, int, int]]:
    """Take the next round of items from `queues` (waiting requests in rotation order).

    Returns (queue, item index, length) in the order taken; never empty while an item waits.
    """
    taken: list[tuple[Queue, int, int]] = []
    tokens = 0

    def take(queue: Queue, credit: bool) -> bool:
        """Take items from the head of `queue` while the budget (and its credit) lasts; False
        when the round is full."""
        nonlocal tokens
        while queue.items:
            length = queue.items[0][1]
            if len(taken) >= max_items or (taken and tokens + length > max_tokens):
                return False
            if credit and length > queue.deficit:
                return True
            index, length = queue.pop()
            if credit and queue.items:
                queue.deficit -= length
            taken.append((queue, index, length))
            tokens += length
        return True

    waiting = [q for q in queues if q.items]
    for queue in waiting:
        if queue.priority and not take(queue, credit=False):
            return taken
    normal = [q for q in waiting if not q.priority]
    if normal:
        quantum = max_tokens * FAIR_SHARE / len(normal)
        for queue in normal:
            # Credit saves up to a round, or to the head item where that is longer (a window
            # past the round budget): else that item waits until no other request has any.
            queue.deficit = min(queue.deficit + quantum, float(max(max_tokens, queue.items[0][1])))
            if not take(queue, credit=True):
                return taken
        for queue in sorted(normal, key=lambda q: (q.tokens, q.seq)):
            if not take(queue, credit=False):
                return taken
    return taken


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
