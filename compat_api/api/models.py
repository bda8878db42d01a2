"""Model discovery: `GET /v1/models` (OpenAI's list) and `GET /v1/models/{id}`.

Spec: OpenAI's models API (`{object: "list", data: [{id, object: "model", created, owned_by}]}`),
with the fields Xinference's client reads (`model_type` `rerank` or `embedding`, `model_name`,
`model_ability`, `max_tokens`) so that Dify's Xinference providers accept the model, and
Xinference's `GET /v1/cluster/auth`.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel

from compat_api.api.auth import API_KEY, UNAUTHORIZED
from compat_api.api.deps import Registry
from compat_api.api.errors import ERROR_RESPONSES
from compat_api.core.registry import Family, ServedModel

router = APIRouter(tags=["models"], dependencies=API_KEY, responses=UNAUTHORIZED)
public = APIRouter(tags=["models"])  # open with keys set: it tells the client that it needs one


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "compat-api"
    model_type: Literal["rerank", "embedding"]
    model_name: str
    model_ability: list[str]
    kind: str
    aliases: list[str]
    max_tokens: int
    context_length: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


ABILITY = {"rerank": "rerank", "embedding": "embed"}


def card(served: ServedModel, role: Family, roles: list[Family]) -> ModelCard:
    """A model's card; `role` is its `model_type` (what the asking client wants it to be)."""
    info = served.info
    return ModelCard(
        id=info.name,
        model_type=role,
        model_ability=[ABILITY[r] for r in roles],
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
    return ModelList(data=[card(m, registry.roles(m)[0], registry.roles(m)) for m in registry.models])


@router.get("/v1/models/{model_id:path}", response_model=ModelCard, responses=ERROR_RESPONSES)
async def get_model(model_id: str, registry: Registry) -> ModelCard:
    """One served model by name or alias; an unknown id describes the one model of the family its
    name suggests ("rerank" in it: the reranker; otherwise the embedding model), else a 404."""
    served, role = registry.describe(model_id)
    return card(served, role, registry.roles(served))


class ClusterAuth(BaseModel):
    auth: bool


@public.get("/v1/cluster/auth", response_model=ClusterAuth)
async def cluster_auth(request: Request) -> ClusterAuth:
    """Xinference's discovery: whether its client must send the API key on `/v1/models` calls."""
    return ClusterAuth(auth=bool(request.app.state.settings.api_key_list))
