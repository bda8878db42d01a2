"""Field types shared by the dialects' wire models: JSON Schema's types, validated as JSON Schema does.

The models are strict (`"true"` is no boolean, `0` no string), but a JSON Schema integer is any
number with no fraction, so `3.0` is a valid `top_n` while `3.5` and `"3"` are not.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field


def _integral(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# Constraints come before the validator, so that they reach the JSON schema as minimum/maximum.
NonNegativeInt = Annotated[int, Field(ge=0), BeforeValidator(_integral)]
PositiveInt = Annotated[int, Field(ge=1), BeforeValidator(_integral)]
ChunkCount = Annotated[int, Field(ge=0, le=1000), BeforeValidator(_integral)]
