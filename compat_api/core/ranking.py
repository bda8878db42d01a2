"""Ranking math shared by every dialect: score normalization, ordering and top_n."""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import StrEnum


class Normalization(StrEnum):
    """How a model's raw score maps to a relevance in [0, 1]."""

    SIGMOID = "sigmoid"  # cross-encoder logits (FlagReranker's normalize=True)
    COSINE = "cosine"  # cosine similarity in [-1, 1] mapped linearly onto [0, 1]


def sigmoid(x: float) -> float:
    """Numerically stable logistic function, equal to FlagEmbedding's `1 / (1 + exp(-x))`."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def normalize(raw: Sequence[float], how: Normalization) -> list[float]:
    """Map raw model scores onto [0, 1] the way the model kind defines."""
    if how is Normalization.SIGMOID:
        return [sigmoid(float(x)) for x in raw]
    return [min(1.0, max(0.0, (float(x) + 1.0) / 2.0)) for x in raw]


def order_by_score(scores: Sequence[float], top_n: int | None = None) -> list[int]:
    """Indices sorted by score, highest first (ties keep input order), cut to `top_n`.

    `top_n` None, 0 or larger than the number of scores means all of them.
    """
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    if top_n:
        return order[:top_n]
    return order


def search_units(documents: int) -> int:
    """Cohere's billing unit: one per query per started block of 100 documents."""
    return max(1, math.ceil(documents / 100))
