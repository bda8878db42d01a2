"""The seed's sibling embedding template (devsapp/fc-embedding-api): `POST /embedding` and `POST /similarity`.

Spec: that app's `src/code/source-code/embedding/app/{main,schema,service}.py`:
`/embedding {"input": str or [str]}` answers `{"object": "list", "data": [{"object": "embedding",
"embedding", "index"}]}`; `/similarity {"input": [str]}` answers `{"score": [{sentence1,
sentence2, score}]}` for every pair i < j, in order (cosine similarity). Vectors are unit length
here (the template's were not; cosine is unchanged), equal to every other dialect's. `/similarity`
shares its path with TEI's (api/embed/shared.py).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from compat_api.api.auth import API_KEY, UNAUTHORIZED
from compat_api.api.deps import Registry, run_embed
from compat_api.api.errors import ERROR_RESPONSES, SIBLING, dialect
from compat_api.api.wire import LIMITED, SMALL_LIST, DocumentList, Text
from compat_api.core.embed import EmbedOutcome, EmbedQuery, pairwise
from compat_api.core.errors import LimitExceeded

router = APIRouter(tags=["embeddings (original template)"], dependencies=[*API_KEY, Depends(dialect(SIBLING))],
                   responses={**UNAUTHORIZED, **ERROR_RESPONSES})  # fmt: skip

EMBEDDING_EXAMPLE: dict[str, Any] = {"input": ["什么是函数计算", "Function Compute is a serverless service"]}
SIMILARITY_EXAMPLE: dict[str, Any] = {"input": ["What is Deep Learning?", "Deep Learning is a branch of AI.",
                                                "Cheese is made from milk."]}  # fmt: skip


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    input: Text | Annotated[list[Text], DocumentList] = Field(json_schema_extra={"minItems": 1, **LIMITED})


class SiblingEmbedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    embedding: list[float]
    index: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[SiblingEmbedding]


class SimilarityRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    input: list[Text] = Field(min_length=1, max_length=SMALL_LIST, description="The texts, compared pairwise.")


class PairScore(BaseModel):
    sentence1: str
    sentence2: str
    score: float


class SimilarityResponse(BaseModel):
    score: list[PairScore]


# The answer repeats both texts of every pair: it may hold at most this many characters.
ECHO_CHARS = 16 * 1024 * 1024


def to_core(body: EmbeddingRequest) -> EmbedQuery:
    return EmbedQuery(inputs=[body.input] if isinstance(body.input, str) else body.input)


def similarity_to_core(body: SimilarityRequest) -> EmbedQuery:
    echoed = (len(body.input) - 1) * sum(len(text) for text in body.input)
    if echoed > ECHO_CHARS:
        raise LimitExceeded(
            f"the answer would repeat {echoed} characters of input (each text once per pair), over the limit "
            f"of {ECHO_CHARS}; send fewer or shorter texts",
            field="input",
        )
    return EmbedQuery(inputs=body.input)


def embedding_from_core(outcome: EmbedOutcome) -> EmbeddingResponse:
    return EmbeddingResponse(data=[SiblingEmbedding(embedding=v.tolist(), index=i)
                                   for i, v in enumerate(outcome.vectors)])  # fmt: skip


def similarity_from_core(outcome: EmbedOutcome, texts: list[str]) -> SimilarityResponse:
    return SimilarityResponse(score=[PairScore(sentence1=texts[i], sentence2=texts[j], score=score)
                                     for i, j, score in pairwise(outcome.vectors)])  # fmt: skip


@router.post("/embedding", response_model=EmbeddingResponse)
async def embedding(
    body: Annotated[EmbeddingRequest, Body(openapi_examples={"texts": {"value": EMBEDDING_EXAMPLE}})],
    request: Request,
    registry: Registry,
) -> EmbeddingResponse:
    """Embed a text or a list of texts (the original embedding template's API)."""
    return embedding_from_core(await run_embed(request, registry, to_core(body)))
