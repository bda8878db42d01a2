"""The rerank use case every dialect calls: score, normalize, order, count usage."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from compat_api.core.errors import EmptyInput
from compat_api.core.ranking import normalize, order_by_score
from compat_api.core.registry import ModelRegistry


@dataclass(frozen=True)
class RerankQuery:
    """What every dialect asks of the core, in the core's terms."""

    query: str
    documents: Sequence[str]
    model: str | None = None
    top_n: int | None = None
    documents_field: str = "documents"


@dataclass(frozen=True)
class RerankOutcome:
    """Scores in input order, the ranked order (cut to top_n), and usage."""

    model: str
    raw_scores: list[float]
    scores: list[float]
    order: list[int]
    tokens: int

    @property
    def documents(self) -> int:
        return len(self.scores)


async def rerank(registry: ModelRegistry, request: RerankQuery) -> RerankOutcome:
    """Score each document against the query with the requested model and rank them."""
    if not request.documents:
        raise EmptyInput(f"list of {request.documents_field} must not be empty", field=request.documents_field)
    served = registry.get(request.model)
    result = await served.engine.score(request.query, request.documents)
    scores = normalize(result.raw, served.info.normalization)
    return RerankOutcome(
        model=served.info.name,
        raw_scores=result.raw,
        scores=scores,
        order=order_by_score(scores, request.top_n),
        tokens=result.tokens,
    )
