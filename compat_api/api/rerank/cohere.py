"""The Cohere / Jina rerank dialect: `POST /v1/rerank` (Cohere v1, Jina, Xinference) and `POST /v2/rerank`.

Spec: Cohere's rerank API v1 (https://docs.cohere.com/v1/reference/rerank) and v2
(https://docs.cohere.com/reference/rerank), and Jina's rerank API, as their clients use them
(shared/api/clients.md): results sorted by relevance, `document` only when asked and never
null, every optional field nullable, unknown fields ignored.
"""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic.config import JsonDict

from compat_api.api.auth import API_KEY, UNAUTHORIZED
from compat_api.api.deps import Registry, run_rerank
from compat_api.api.errors import COHERE_V1, COHERE_V2, ERROR_RESPONSES, dialect
from compat_api.api.wire import (
    LIMITED,
    SMALL_LIST,
    ChunkCount,
    DocumentList,
    NonNegativeInt,
    PlainJson,
    PositiveInt,
)
from compat_api.core.errors import InvalidInput
from compat_api.core.ranking import search_units
from compat_api.core.rerank import RerankOutcome, RerankQuery
from compat_api.core.text import clip, repaired

router = APIRouter(tags=["rerank (Cohere / Jina)"], dependencies=API_KEY, responses=UNAUTHORIZED)

EXAMPLE: dict[str, Any] = {
    "model": "bge-reranker-v2-m3",
    "query": "What is the capital of France?",
    "documents": ["Berlin is the capital of Germany.", "Paris is the capital of France.", "Cats are small animals."],
    "top_n": 2,
    "return_documents": True,
}


# An object document: ranked on its `text` (documented as required), or on `rank_fields`
# (Cohere v1), which may name other fields; it comes back whole when asked for.
DocumentObject = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}),
]


class CohereRerankRequest(BaseModel):
    """Cohere v1 / Jina / Xinference rerank request."""

    model_config = ConfigDict(extra="ignore", strict=True, json_schema_extra={"examples": [cast(JsonDict, EXAMPLE)]})

    model: str | None = Field(None, description="Any name works when one model is served.")
    query: str
    documents: Annotated[list[Annotated[str | DocumentObject, PlainJson]], DocumentList] = Field(
        description="Texts, or objects ranked on `text` (or on `rank_fields`).",
        json_schema_extra={"minItems": 1, **LIMITED},
    )
    top_n: NonNegativeInt | None = Field(None, description="How many results; null, 0 or more than given means all.")
    return_documents: bool | None = Field(None, description="Include each document in its result.")
    rank_fields: list[str] | None = Field(
        None, max_length=SMALL_LIST, description="Object fields ranked on, in order (Cohere v1)."
    )
    max_chunks_per_doc: ChunkCount | None = Field(
        None, description="Split a document longer than the model window into up to this many chunks."
    )


class CohereV2RerankRequest(BaseModel):
    """Cohere v2 rerank request."""

    model_config = ConfigDict(extra="ignore", strict=True, json_schema_extra={"examples": [cast(JsonDict, EXAMPLE)]})

    model: str | None = Field(None, description="Any name works when one model is served.")
    query: str
    documents: Annotated[list[Annotated[str | DocumentObject, PlainJson]], DocumentList] = Field(
        description="Texts (objects are ranked on `text`).", json_schema_extra={"minItems": 1, **LIMITED}
    )
    top_n: NonNegativeInt | None = Field(None, description="How many results; null, 0 or more than given means all.")
    max_tokens_per_doc: PositiveInt | None = Field(None, description="Each document is truncated to this many tokens.")
    return_documents: bool | None = Field(None, description="Include each document in its result.")


class CohereResult(BaseModel):
    index: int
    relevance_score: float
    document: dict[str, Any] | None = Field(
        None, description="`{text}` (or the object sent), present only when return_documents is true."
    )


class ApiVersion(BaseModel):
    version: str = "1"


class BilledUnits(BaseModel):
    search_units: int


class Tokens(BaseModel):
    input_tokens: int
    output_tokens: int = 0


class Meta(BaseModel):
    api_version: ApiVersion = ApiVersion()
    billed_units: BilledUnits
    tokens: Tokens


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class CohereRerankResponse(BaseModel):
    id: str
    model: str
    results: list[CohereResult]
    meta: Meta
    usage: Usage


def _value(value: str | float) -> str:
    """A field's value as its document wrote it (JSON's `true`, not Python's `True`)."""
    return value if isinstance(value, str) else json.dumps(value)


def document_text(doc: str | dict[str, Any], index: int, rank_fields: list[str] | None) -> str:
    """The text a document is ranked on: the string, its `text`, or its `rank_fields` in order."""
    if isinstance(doc, str):
        return doc
    if rank_fields:
        # Cohere v1: the named fields, in order, as "field: value" lines; absent ones are skipped.
        # A document with none of them is ranked on its `text`, and without that it has nothing
        # to rank on (never an empty text).
        present = [f for f in rank_fields if f in doc and isinstance(doc[f], str | int | float)]
        if present == ["text"] and isinstance(doc["text"], str):
            return str(doc["text"])  # the default field named: the same text, the same score as without it
        if present:
            return "\n".join(f"{f}: {_value(doc[f])}" for f in present)
        if not isinstance(doc.get("text"), str):
            named = ", ".join(repr(clip(f)) for f in rank_fields[:5]) + (" …" if len(rank_fields) > 5 else "")
            raise InvalidInput(f"documents[{index}] has none of the rank_fields ({named}) and no text to rank on",
                               field=f"documents[{index}]")  # fmt: skip
        return str(doc["text"])
    where = f"documents[{index}].text"
    if "text" not in doc:
        raise InvalidInput(f"documents[{index}] has no field 'text' to rank on", field=where)
    if not isinstance(doc["text"], str):
        raise InvalidInput(f"{where} must be a string to rank on", field=where)
    return str(doc["text"])


def to_core(body: CohereRerankRequest | CohereV2RerankRequest) -> RerankQuery:
    if isinstance(body, CohereV2RerankRequest):
        texts = [document_text(doc, i, None) for i, doc in enumerate(body.documents)]
        return RerankQuery(
            query=body.query, documents=texts, model=body.model, top_n=body.top_n,
            max_tokens_per_doc=body.max_tokens_per_doc,
        )  # fmt: skip
    texts = [document_text(doc, i, body.rank_fields) for i, doc in enumerate(body.documents)]
    return RerankQuery(query=body.query, documents=texts, model=body.model, top_n=body.top_n,
                       max_chunks_per_doc=body.max_chunks_per_doc or None)  # fmt: skip


def result_document(doc: str | dict[str, Any]) -> dict[str, Any]:
    """The document as sent, its strings repaired as the scored copy was (lone surrogates)."""
    return repaired({"text": doc} if isinstance(doc, str) else doc)  # type: ignore[no-any-return]


def from_core(
    outcome: RerankOutcome, body: CohereRerankRequest | CohereV2RerankRequest, version: str = "1"
) -> CohereRerankResponse:
    results = [
        CohereResult(
            index=i,
            relevance_score=outcome.scores[i],
            document=result_document(body.documents[i]) if body.return_documents else None,
        )
        for i in outcome.order
    ]
    return CohereRerankResponse(
        id=str(uuid.uuid4()),
        model=outcome.model,
        results=results,
        meta=Meta(
            api_version=ApiVersion(version=version),
            billed_units=BilledUnits(search_units=search_units(outcome.documents)),
            tokens=Tokens(input_tokens=outcome.tokens),
        ),
        usage=Usage(prompt_tokens=outcome.tokens, total_tokens=outcome.tokens),
    )


def render(response: CohereRerankResponse) -> JSONResponse:
    """Omit `document` where it was not asked for: clients read it whenever the key exists."""
    return JSONResponse(response.model_dump(exclude_none=True))


@router.post("/v1/rerank", response_model=CohereRerankResponse, responses=ERROR_RESPONSES,
             dependencies=[Depends(dialect(COHERE_V1))])  # fmt: skip
async def cohere_v1_rerank(body: CohereRerankRequest, request: Request, registry: Registry) -> JSONResponse:
    """Rank `documents` by relevance to `query` (Cohere v1 / Jina / Xinference shape)."""
    return render(from_core(await run_rerank(request, registry, to_core(body)), body))


@router.post("/v2/rerank", response_model=CohereRerankResponse, responses=ERROR_RESPONSES,
             dependencies=[Depends(dialect(COHERE_V2))])  # fmt: skip
async def cohere_v2_rerank(body: CohereV2RerankRequest, request: Request, registry: Registry) -> JSONResponse:
    """Rank `documents` by relevance to `query` (Cohere v2 shape, `max_tokens_per_doc` truncation)."""
    return render(from_core(await run_rerank(request, registry, to_core(body)), body, version="2"))
