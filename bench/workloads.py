"""Deterministic benchmark workloads: queries with documents of controlled length."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

_VOCABULARY = (
    "the of and to in is for on that by this with from are as be at or an it was which not have has "
    "model search document query rerank relevance score vector index retrieval answer question context "
    "cloud serverless function compute storage network latency throughput batch token server client "
    "paris france berlin germany river mountain city history science music art language book museum "
    "bread flour water yeast oven dough salt sugar butter recipe kitchen dinner lunch breakfast coffee"
)
WORDS = _VOCABULARY.split()


@dataclass(frozen=True)
class Request:
    query: str
    documents: list[str]


@dataclass(frozen=True)
class Workload:
    """`clients` concurrent clients, each sending its list of requests one after another."""

    name: str
    description: str
    clients: list[list[Request]]
    chunked: bool = False
    truncate: bool = False
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def requests(self) -> list[Request]:
        return [r for client in self.clients for r in client]

    @property
    def documents(self) -> int:
        return sum(len(r.documents) for r in self.requests)


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def _requests(rng: random.Random, count: int, docs: int, low: int, high: int, tag: str) -> list[Request]:
    return [
        Request(f"{tag} {i} " + _text(rng, 8), [_text(rng, rng.randint(low, high)) for _ in range(docs)])
        for i in range(count)
    ]


def build(round_no: int, scale: float = 1.0) -> list[Workload]:
    """The four workloads; every round gets fresh texts so no cache can help."""
    rng = random.Random(1000 + round_no)

    def n(x: int) -> int:
        return max(1, round(x * scale))

    return [
        Workload("W1", "1 client x 32 documents of ~100 words",
                 [_requests(rng, n(8), 32, 90, 110, f"w1r{round_no}")]),
        Workload("W2", "16 concurrent clients x 8 documents of ~100 words",
                 [_requests(rng, n(4), 8, 90, 110, f"w2c{c}r{round_no}") for c in range(16)]),
        Workload("W3", "4 clients, 16 documents of 20-2,000 words each (truncated to the window)",
                 [_requests(rng, n(2), 16, 20, 2000, f"w3c{c}r{round_no}") for c in range(4)], truncate=True),
        Workload("W4", "1 client x 4 long documents of ~1,500 words, chunked (max 10 chunks)",
                 [_requests(rng, n(3), 4, 1400, 1600, f"w4r{round_no}")], chunked=True),
    ]  # fmt: skip
