"""The Cohere embedding dialect: `POST /v1/embed`, `/v2/embed`, `POST /v1/tokenize` and
`/v1/detokenize` (`/embed` and `/tokenize` by their keys: api/embed/shared.py).

Spec: Cohere's embed API v1 (https://docs.cohere.com/v1/reference/embed) and v2
(https://docs.cohere.com/reference/embed), tokenize and detokenize, as cohere-python (5.x as
Dify pins it, 7.x), LangChain's CohereEmbeddings and Dify's Cohere provider use them
(`../shared/api/embeddings.md`): v1 without `embedding_types` answers `response_type:
"embeddings_floats"` and a list of vectors, with them `"embeddings_by_type"`; v2 always by type
(`float` when none is asked); always `id`, `texts` and `meta.billed_units.input_tokens`.
`input_type: search_query` applies the model's query instruction, if one is configured.
Tokenize's `token_strings` concatenate back to exactly the text. Errors `{"message"}`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from compat_api.api.auth import API_KEY, UNAUTHORIZED
from compat_api.api.deps import Registry, bounded, run_embed
from compat_api.api.errors import COHERE_V1, COHERE_V2, ERROR_RESPONSES, dialect
from compat_api.api.wire import LIMITED, SMALL_LIST, DocumentList, PositiveInt, Text, TokenId
from compat_api.core.embed import EmbedOutcome, EmbedQuery, detokenize, quantize, tokenize
from compat_api.core.models.embedder import Truncate
from compat_api.core.text import utf8_safe

router = APIRouter(tags=["embeddings (Cohere)"], dependencies=API_KEY, responses={**UNAUTHORIZED, **ERROR_RESPONSES})

EmbeddingType = Literal["float", "int8", "uint8", "binary", "ubinary", "base64"]
InputType = Literal["search_document", "search_query", "classification", "clustering", "image"]
EXAMPLE: dict[str, Any] = {"model": "embed-multilingual-v3.0", "texts": ["hello", "goodbye"],
                           "input_type": "search_document"}  # fmt: skip


class CohereEmbedRequest(BaseModel):
    """Cohere v1 embed request."""

    model_config = ConfigDict(extra="ignore", strict=True)

    texts: Annotated[list[Text], DocumentList] = Field(json_schema_extra={"minItems": 1, **LIMITED})
    model: str | None = Field(None, description="Any name: the default embedding model answers.")
    input_type: InputType | None = Field(None, description="search_query applies the model's query instruction.")
    embedding_types: list[EmbeddingType] | None = Field(None, max_length=SMALL_LIST)
    truncate: Literal["NONE", "START", "END"] | None = Field(
        None, description="A text longer than the window: END (default) or START cut there, NONE refuses it."
    )


class CohereV2EmbedRequest(BaseModel):
    """Cohere v2 embed request (`inputs` of `{content: [{type: text, text}]}` are read for their text)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    texts: Annotated[list[Text], DocumentList] | None = Field(None, json_schema_extra={"minItems": 1, **LIMITED})
    inputs: Annotated[list[dict[str, Any]], DocumentList] | None = Field(None, json_schema_extra={**LIMITED})
    model: str | None = None
    input_type: InputType | None = None
    embedding_types: list[EmbeddingType] | None = Field(None, max_length=SMALL_LIST)
    output_dimension: PositiveInt | None = Field(None, description="The first k values, renormalized.")
    max_tokens: PositiveInt | None = Field(None, description="Each input truncated to this many tokens.")
    truncate: Literal["NONE", "START", "END"] | None = None


class BilledUnits(BaseModel):
    input_tokens: int


class EmbedMeta(BaseModel):
    api_version: dict[str, str]
    billed_units: BilledUnits


class CohereEmbedResponse(BaseModel):
    id: str
    response_type: Literal["embeddings_floats", "embeddings_by_type"] | None = None
    embeddings: list[list[float]] | dict[str, list[list[float]] | list[list[int]] | list[str]]
    texts: list[str]
    meta: EmbedMeta


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    text: Text
    model: str | None = None


class TokenizeResponse(BaseModel):
    tokens: list[int]
    token_strings: list[str]
    meta: dict[str, Any]


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    tokens: list[TokenId] = Field(min_length=1)  # one text's ids: not a document list
    model: str | None = None


class DetokenizeResponse(BaseModel):
    text: str
    meta: dict[str, Any]


def v2_texts(body: CohereV2EmbedRequest) -> list[str]:
    """`texts`, or the text parts of v2 `inputs`."""
    if body.texts is not None:
        return body.texts
    texts = []
    for item in body.inputs or []:
        content = item.get("content")
        parts: list[Any] = content if isinstance(content, list) else [item]
        texts.append("".join(str(p.get("text", "")) for p in parts if isinstance(p, dict)))
    return texts


def to_core(body: CohereEmbedRequest | CohereV2EmbedRequest) -> EmbedQuery:
    query = body.input_type == "search_query"
    truncate: Truncate = {"START": "start", "NONE": "none"}.get(body.truncate or "END", "end")  # type: ignore[assignment]
    if isinstance(body, CohereEmbedRequest):
        return EmbedQuery(inputs=body.texts, model=body.model, field="texts", query=query, truncate=truncate)
    field = "texts" if body.texts is not None else "inputs"
    return EmbedQuery(inputs=v2_texts(body), model=body.model, field=field, query=query, truncate=truncate,
                      dimensions=body.output_dimension, dimensions_field="output_dimension",
                      max_tokens=body.max_tokens)  # fmt: skip


def by_type(outcome: EmbedOutcome, types: Sequence[str]) -> dict[str, Any]:
    import base64

    result: dict[str, Any] = {}
    for kind in dict.fromkeys(types):
        if kind == "base64":
            result[kind] = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in outcome.vectors]
        else:
            result[kind] = quantize(outcome.vectors, kind).tolist()
    return result


def from_core(
    outcome: EmbedOutcome, texts: list[str], types: Sequence[str] | None, version: str
) -> CohereEmbedResponse:
    meta = EmbedMeta(api_version={"version": version}, billed_units=BilledUnits(input_tokens=outcome.tokens))
    texts = [utf8_safe(text) for text in texts]  # sent back as the model read them (lone surrogates repaired)
    if version == "1" and not types:
        return CohereEmbedResponse(id=str(uuid.uuid4()), response_type="embeddings_floats",
                                   embeddings=outcome.vectors.tolist(), texts=texts, meta=meta)  # fmt: skip
    return CohereEmbedResponse(id=str(uuid.uuid4()), response_type="embeddings_by_type",
                               embeddings=by_type(outcome, types or ["float"]), texts=texts, meta=meta)  # fmt: skip


@router.post("/v1/embed", response_model=CohereEmbedResponse, dependencies=[Depends(dialect(COHERE_V1))])
async def embed_v1(
    body: Annotated[CohereEmbedRequest, Body(openapi_examples={"texts": {"value": EXAMPLE}})],
    request: Request,
    registry: Registry,
) -> CohereEmbedResponse:
    """Embed texts (Cohere v1: a list of float vectors, or vectors by type when asked)."""
    return from_core(await run_embed(request, registry, to_core(body)), body.texts, body.embedding_types, "1")


@router.post("/v2/embed", response_model=CohereEmbedResponse, dependencies=[Depends(dialect(COHERE_V2))])
async def embed_v2(
    body: Annotated[CohereV2EmbedRequest, Body(openapi_examples={"texts": {"value": EXAMPLE}})],
    request: Request,
    registry: Registry,
) -> CohereEmbedResponse:
    """Embed texts (Cohere v2: always by type, `float` when none is asked)."""
    query = to_core(body)
    return from_core(await run_embed(request, registry, query), list(query.inputs), body.embedding_types, "2")


@router.post("/v1/tokenize", response_model=TokenizeResponse, dependencies=[Depends(dialect(COHERE_V1))])
async def tokenize_v1(body: TokenizeRequest, request: Request, registry: Registry) -> TokenizeResponse:
    """The embedding model's tokens of a text; `token_strings` concatenate back to the text."""
    tokens = await bounded(request, registry, tokenize(registry, body.text, body.model))
    return TokenizeResponse(tokens=tokens.ids, token_strings=tokens.strings, meta={"api_version": {"version": "1"}})


@router.post("/v1/detokenize", response_model=DetokenizeResponse, dependencies=[Depends(dialect(COHERE_V1))])
async def detokenize_v1(body: DetokenizeRequest, request: Request, registry: Registry) -> DetokenizeResponse:
    """The text of the embedding model's token ids."""
    text = await bounded(request, registry, detokenize(registry, body.tokens, body.model))
    return DetokenizeResponse(text=text, meta={"api_version": {"version": "1"}})
