"""The Hugging Face text-embeddings-inference (TEI) rerank dialect: `/rerank {query, texts}` and `GET /info`.

Spec: TEI's router OpenAPI (https://huggingface.github.io/text-embeddings-inference/):
`RerankRequest {query, texts, raw_scores, return_text, truncate, truncation_direction}` answers
a top-level array of `{index, score, text?}` sorted by score, highest first; `/info` describes
the model with `model_type: {"reranker": {...}}`. Errors use TEI's `{"error", "error_type"}`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, cast

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

from compat_api import __version__
from compat_api.api.auth import API_KEY, unauthorized
from compat_api.api.deps import Registry
from compat_api.api.errors import TEI, TeiErrorBody, dialect
from compat_api.api.wire import LIMITED, DocumentList
from compat_api.core.registry import Family, ServedModel
from compat_api.core.rerank import RerankOutcome, RerankQuery
from compat_api.core.text import utf8_safe
from compat_api.settings import Settings

router = APIRouter(tags=["TEI"], dependencies=[*API_KEY, Depends(dialect(TEI))],
                   responses=unauthorized(TeiErrorBody))  # fmt: skip

EXAMPLE: dict[str, Any] = {
    "query": "What is Deep Learning?",
    "texts": ["Deep Learning is a branch of machine learning.", "Cheese is made from milk."],
    "return_text": True,
}


class TeiRerankRequest(BaseModel):
    """TEI rerank request."""

    model_config = ConfigDict(extra="ignore", strict=True, json_schema_extra={"examples": [cast(JsonDict, EXAMPLE)]})

    query: str
    texts: Annotated[list[str], DocumentList] = Field(json_schema_extra={"minItems": 1, **LIMITED})
    raw_scores: bool | None = Field(None, description="Return the model's logits instead of sigmoid scores.")
    return_text: bool | None = Field(None, description="Include each text in its result.")
    truncate: bool | None = Field(
        None, description="true: cut a too-long text to the window; otherwise the server's long-document policy."
    )
    truncation_direction: Literal["Left", "Right", "left", "right"] | None = Field(
        None, description="Which end of a too-long text is cut (default Right)."
    )


class TeiRank(BaseModel):
    index: int
    score: float
    text: str | None = None


def to_core(body: TeiRerankRequest) -> RerankQuery:
    left = (body.truncation_direction or "right").lower() == "left"
    return RerankQuery(query=body.query, documents=body.texts, truncate=body.truncate, truncate_left=left,
                       documents_field="texts")  # fmt: skip


def from_core(outcome: RerankOutcome, body: TeiRerankRequest) -> list[dict[str, Any]]:
    scores = outcome.raw_scores if body.raw_scores else outcome.scores
    ranks = [
        TeiRank(index=i, score=scores[i], text=utf8_safe(body.texts[i]) if body.return_text else None)
        for i in outcome.order
    ]
    return [rank.model_dump(exclude_none=True) for rank in ranks]


class TeiInfo(BaseModel):
    """TEI's `/info` (the fields Dify and TEI clients read, plus TEI's limits)."""

    model_id: str
    model_sha: str | None = None
    model_dtype: str
    model_type: dict[str, dict[str, Any]]
    max_concurrent_requests: int
    max_input_length: int
    max_batch_tokens: int
    max_batch_requests: int | None = None
    max_client_batch_size: int
    auto_truncate: bool = True
    tokenization_workers: int = 1
    version: str = __version__
    sha: str | None = None
    docker_label: str | None = None


def describe(served: ServedModel, settings: Settings, role: Family | None = None) -> TeiInfo:
    """One model in TEI's `/info` shape, in `role` (default: its family): `model_type`
    `reranker`, or `embedding` with its pooling (an embedding model reranks by cosine)."""
    if (role or served.family) == "embedding":
        kind: dict[str, dict[str, Any]] = {"embedding": {"pooling": str(served.info.extra.get("pooling", "cls"))}}
    else:
        kind = {"reranker": {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}}
    return TeiInfo(
        model_id=served.info.name,
        model_dtype=served.info.dtype,
        model_type=kind,
        max_concurrent_requests=settings.max_queue_pairs,
        max_input_length=served.info.max_length,
        max_batch_tokens=served.engine.max_batch_tokens,
        max_batch_requests=settings.batch_size,
        max_client_batch_size=settings.max_documents,
    )


@router.get("/info", response_model=TeiInfo)
async def info(registry: Registry) -> TeiInfo:
    """The reranker in TEI's shape (with none served, the embedding model that reranks by cosine,
    as a reranker: the root URL is the rerank one); `/tei/{model}/info` describes any one model."""
    return describe(registry.reranker(None), registry.settings, "rerank")
