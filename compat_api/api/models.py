"""Model discovery: `GET /v1/models` (OpenAI's list) and `GET /v1/models/{id}`.

Spec: OpenAI's models API (`{object: "list", data: [{id, object: "model", created, owned_by}]}`),
with the fields Xinference's client reads (`model_type: "rerank"`, `model_name`, `model_ability`)
so that Dify's Xinference provider accepts the model.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel

from compat_api.api.auth import API_KEY, UNAUTHORIZED
from compat_api.api.deps import Registry
from compat_api.api.errors import ERROR_RESPONSES
from compat_api.core.registry import ServedModel

router = APIRouter(tags=["models"], dependencies=API_KEY, responses=UNAUTHORIZED)


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "compat-api"
    model_type: Literal["rerank"] = "rerank"
    model_name: str
    model_ability: list[str] = ["rerank"]
    kind: str
    aliases: list[str]
    max_tokens: int
    context_length: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def card(served: ServedModel) -> ModelCard:
    info = served.info
    return ModelCard(
        id=info.name,
        created=int(served.loaded_at),
        model_name=info.name,
        kind=info.kind,
        aliases=list(served.aliases),
        max_tokens=info.max_length,
        context_length=info.max_length,
    )


@router.get("/v1/models", response_model=ModelList)
async def list_models(registry: Registry) -> ModelList:
    """Every served model."""
    return ModelList(data=[card(m) for m in registry.models])


@router.get("/v1/models/{model_id:path}", response_model=ModelCard, responses=ERROR_RESPONSES)
async def get_model(model_id: str, registry: Registry) -> ModelCard:
    """One served model by name or alias; an unknown id is a 404."""
    return card(registry.find(model_id))
