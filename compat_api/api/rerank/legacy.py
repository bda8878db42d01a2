"""The original template's dialect: `POST /rerank {query, compare_to}` -> `{data, object}`.

Spec: the Function Compute template fc3-bge-reranker-api (shared/seed): scores in input
order, sigmoid-normalized, `object` always "list". Served by the shared `/rerank` route.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

from compat_api.api.wire import LIMITED, DocumentList
from compat_api.core.rerank import RerankOutcome, RerankQuery

SEED_EXAMPLE: dict[str, Any] = {
    "query": "什么是函数计算",
    "compare_to": ["你好", "函数计算是阿里云Serverless计算服务，提供专业的Serverless架构服务托管", "今天天气怎么样"],
}


class LegacyRerankRequest(BaseModel):
    """The original request: a query and the texts to compare it to."""

    model_config = ConfigDict(
        extra="ignore", strict=True, json_schema_extra={"examples": [cast(JsonDict, SEED_EXAMPLE)]}
    )

    query: str = Field(description="The question, usually the user's input.")
    compare_to: Annotated[list[str], DocumentList] = Field(
        description="Candidate texts, e.g. from vector or full-text search.",
        json_schema_extra={"minItems": 1, **LIMITED},
    )


class LegacyRerankResponse(BaseModel):
    """One relevance in [0, 1] per `compare_to` item, in input order."""

    data: list[float]
    object: Literal["list"] = "list"


def to_core(body: LegacyRerankRequest) -> RerankQuery:
    return RerankQuery(query=body.query, documents=body.compare_to, documents_field="compare_to")


def from_core(outcome: RerankOutcome) -> LegacyRerankResponse:
    return LegacyRerankResponse(data=outcome.scores)
