"""Field types shared by the dialects' wire models: JSON Schema's types, validated as JSON Schema does,
and lists whose size is checked before any of their items is.

The models are strict (`"true"` is no boolean, `0` no string), but a JSON Schema integer is any
number with no fraction, so `3.0` is a valid `top_n` while `3.5` and `"3"` are not.

A list of documents (or texts) longer than the server's limit is refused by its length alone,
before a single item is validated, so that a body of a million wrong items costs one check, not
a million errors. The limit is the serving app's `RERANK_MAX_DOCUMENTS`, which its middleware
puts in `DOCUMENT_LIMIT` for each request; the OpenAPI document states it as `maxItems`.
"""

from __future__ import annotations

import math
from contextvars import ContextVar
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, WithJsonSchema
from pydantic_core import PydanticCustomError

# The limit in force for the request being validated (set per request by the app's middleware).
DOCUMENT_LIMIT: ContextVar[int] = ContextVar("document_limit", default=1000)
TOO_MANY = "too_many_items"
# Lists that are not documents (rank_fields...) have a fixed size limit.
SMALL_LIST = 100


def _integral(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def within_document_limit(value: Any) -> Any:
    """A list longer than the request's document limit is refused by its length (413)."""
    limit = DOCUMENT_LIMIT.get()
    if isinstance(value, list) and len(value) > limit:
        raise PydanticCustomError(
            TOO_MANY,
            "{count} items exceed the limit of {limit} per request (RERANK_MAX_DOCUMENTS)",
            {"count": len(value), "limit": limit},
        )
    return value


def plain_json(value: Any) -> Any:
    """A value that can be sent back as JSON: numbers finite (Python's parser also takes `NaN`,
    `Infinity` and `1e400`, which no JSON encoder writes) and at most `JSON_DEPTH` levels deep."""
    stack: list[tuple[Any, str, int]] = [(value, "", 1)]
    while stack:
        node, path, depth = stack.pop()
        if depth > JSON_DEPTH:
            raise PydanticCustomError("json_depth", "{path} is nested more than {limit} levels deep",
                                      {"path": path.lstrip(".") or "value", "limit": JSON_DEPTH})  # fmt: skip
        if isinstance(node, float) and not math.isfinite(node):
            raise PydanticCustomError("json_number", "{path}: {number} is not a JSON number",
                                      {"path": path.lstrip("."), "number": str(node)})  # fmt: skip
        if isinstance(node, dict):
            stack.extend((v, f"{path}.{k}", depth + 1) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(node))
    return value


JSON_DEPTH = 32
# A JSON value a client sends to get it back (a rerank document): plain JSON only.
PlainJson = AfterValidator(plain_json)
# Constraints come before the validator, so that they reach the JSON schema as minimum/maximum.
NonNegativeInt = Annotated[int, Field(ge=0), BeforeValidator(_integral)]
PositiveInt = Annotated[int, Field(ge=1), BeforeValidator(_integral)]
ChunkCount = Annotated[int, Field(ge=0, le=1000), BeforeValidator(_integral)]
# The marker under which the app publishes its document limit in the OpenAPI document.
LIMITED = {"x-limit": "documents"}
DocumentList = BeforeValidator(within_document_limit)
# A text the schema promises non-empty; an empty one is still answered by the core (the dialect's
# 400 naming the input), not by validation.
Text = Annotated[str, WithJsonSchema({"type": "string", "minLength": 1})]
# A token id of the served embedding model; the app states the vocabulary's size as `maximum`.
TokenId = Annotated[NonNegativeInt, Field(json_schema_extra={"x-limit": "token_id"})]
