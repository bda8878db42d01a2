"""The OpenAI embeddings dialect: `POST /v1/embeddings` and `POST /embeddings`.

Spec: OpenAI's embeddings API (https://platform.openai.com/docs/api-reference/embeddings), as
openai-python, openai-node, LangChain, LlamaIndex, FastGPT and Dify's OpenAI-compatible, Jina,
LocalAI, Xinference and TEI providers send it (`../shared/api/embeddings.md`): `input` as a
string, a list of strings, Jina's `{text}` items, one cl100k_base token array or a list of them;
`encoding_format` `float` or `base64` (little-endian float32); `dimensions`; any `model` (absent
or unknown: the default embedding model). Answers `{object, data[{object, embedding, index}],
model, usage}`; errors `{"error": {message, type, param, code}, "detail"}`.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal, cast

import numpy as np
from fastapi import APIRouter, Body, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema
from pydantic.config import JsonDict
from pydantic_core import PydanticCustomError

from compat_api.api.auth import API_KEY, UNAUTHORIZED, unauthorized
from compat_api.api.deps import Registry, run_embed
from compat_api.api.errors import ERROR_RESPONSES, OPENAI, OpenAIErrorBody, dialect
from compat_api.api.rendering import vectors_response
from compat_api.api.wire import LIMITED, NonNegativeInt, Text, within_document_limit
from compat_api.core.embed import EmbedOutcome, EmbedQuery
from compat_api.core.tokens import decode_token_arrays

router = APIRouter(tags=["embeddings (OpenAI)"], dependencies=[*API_KEY, Depends(dialect(OPENAI))],
                   responses=UNAUTHORIZED)  # fmt: skip

EXAMPLE: dict[str, Any] = {"model": "bge-m3", "input": ["What is Deep Learning?", "Cheese is made from milk."]}
INPUT_SHAPES = "a string, a list of strings, a list of {text} objects, a token array or a list of token arrays"


# What the schema promises (an empty text or token array is refused with the dialect's 400/422,
# from the core, naming the input); token ids up to cl100k_base's last ordinary one.
TOKEN_ID = {"type": "integer", "minimum": 0, "maximum": 100255}
TokenIds = Annotated[list[int], WithJsonSchema({"type": "array", "minItems": 1, "items": TOKEN_ID})]


class TextItem(BaseModel):
    """A Jina-style input item."""

    model_config = ConfigDict(extra="ignore", strict=True)
    text: Text


def _is_id(value: Any) -> bool:
    """A JSON Schema integer: an int, or a number with no fraction (`3.0`), never a boolean."""
    return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, float) and value.is_integer())


def _is_ids(value: Any) -> bool:
    return isinstance(value, list) and all(_is_id(v) for v in value)


def _ids(values: list[Any]) -> list[Any]:
    return [int(v) if isinstance(v, float) else v for v in values]


def _input_shape(value: Any) -> Any:
    """One of the accepted shapes, judged by its outer structure and length before any item is validated."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise PydanticCustomError("input_shape", f"input must be {INPUT_SHAPES}")
    kinds = {"id" if _is_id(v) else "ids" if _is_ids(v) else type(v).__name__ for v in value}
    if kinds != {"id"}:  # a list of inputs; one token array is one input, however long
        within_document_limit(value)
    if len(kinds) > 1:
        raise PydanticCustomError(
            "input_shape", f"input mixes {', '.join(sorted(kinds))}; it must be {INPUT_SHAPES}, one shape per request"
        )
    if kinds == {"id"}:
        return _ids(value)
    if kinds == {"ids"}:
        return [_ids(v) for v in value]
    return value


# A list of inputs is limited by the server's document limit (`maxItems` in the schema); one token
# array is one input, however long.
InputList = Field(json_schema_extra={"minItems": 1, **LIMITED})
InputField = Annotated[
    Text
    | Annotated[list[Text], InputList]
    | Annotated[list[TextItem], InputList]
    | TokenIds
    | Annotated[list[TokenIds], InputList],
    BeforeValidator(_input_shape),
]


class OpenAIEmbeddingRequest(BaseModel):
    """OpenAI embeddings request (unknown fields such as `user`, `task`, `modality` are accepted)."""

    model_config = ConfigDict(extra="ignore", strict=True, json_schema_extra={"examples": [cast(JsonDict, EXAMPLE)]})

    input: InputField = Field(description=f"What to embed: {INPUT_SHAPES} (cl100k_base ids).")
    model: str | None = Field(None, description="Any name; absent or unknown: the default embedding model.")
    encoding_format: Literal["float", "base64"] | None = Field(
        None, description="float (default): JSON numbers; base64: little-endian float32 bytes, base64-encoded."
    )
    dimensions: NonNegativeInt | None = Field(
        None,
        description="Keep the first k values, renormalized (0 or the model's size: the whole vector).",
        json_schema_extra={"x-limit": "dimensions"},
    )


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    embedding: list[float] | str
    index: int


class OpenAIUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class OpenAIEmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIUsage


def to_core(body: OpenAIEmbeddingRequest) -> EmbedQuery:
    """Strings as they are, `{text}` items by their text, token arrays decoded from cl100k_base."""
    value = body.input
    texts: list[str]
    if isinstance(value, str):
        texts = [value]
    elif value and all(isinstance(v, int) for v in value):
        texts = decode_token_arrays([cast(list[int], value)], nested=False)
    elif value and all(isinstance(v, list) for v in value):
        texts = decode_token_arrays(cast(list[list[int]], value))
    else:
        texts = [v.text if isinstance(v, TextItem) else cast(str, v) for v in value]
    return EmbedQuery(inputs=texts, model=body.model, dimensions=body.dimensions)


def encode_vector(vector: np.ndarray, encoding_format: str | None) -> list[float] | str:
    """A JSON array, or base64 of the little-endian float32 bytes."""
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return cast(list[float], vector.tolist())


def from_core(outcome: EmbedOutcome, body: OpenAIEmbeddingRequest) -> dict[str, Any]:
    """The response, with `model` echoed as the client sent it (the served name when absent)."""
    data = [{"object": "embedding", "embedding": encode_vector(v, body.encoding_format), "index": i}
            for i, v in enumerate(outcome.vectors)]  # fmt: skip
    return {"object": "list", "data": data, "model": body.model or outcome.model,
            "usage": {"prompt_tokens": outcome.tokens, "total_tokens": outcome.tokens}}  # fmt: skip


RESPONSES: dict[int | str, dict[str, Any]] = {
    **{code: {**entry, "model": OpenAIErrorBody} for code, entry in ERROR_RESPONSES.items()},
    **unauthorized(OpenAIErrorBody),
    200: {"model": OpenAIEmbeddingResponse, "description": "One embedding per input, in input order"},
}


@router.post("/v1/embeddings", responses=RESPONSES)
@router.post("/embeddings", responses=RESPONSES, include_in_schema=False)
async def embeddings(
    body: Annotated[OpenAIEmbeddingRequest, Body(openapi_examples={"texts": {"value": EXAMPLE}})],
    request: Request,
    registry: Registry,
) -> Response:
    """Embed each input (OpenAI, Jina, LocalAI, infinity, FastGPT and Dify's providers)."""
    outcome = await run_embed(request, registry, to_core(body))
    return await vectors_response(from_core(outcome, body))  # up to 1,000 vectors: off the event loop
