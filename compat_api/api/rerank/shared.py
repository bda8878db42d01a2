"""The shared `POST /rerank` route: three body shapes with disjoint keys, each answered in its own shape.

`compare_to` is the original template's API, `texts` is TEI's, `documents` is Cohere/Jina's
(Dify's OpenAI-compatible, Jina and LocalAI providers and FastGPT post to `{base}/rerank`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from fastapi.responses import JSONResponse
from pydantic import Discriminator, Tag

from compat_api.api.auth import API_KEY, UNAUTHORIZED
from compat_api.api.deps import Registry, run_rerank
from compat_api.api.errors import (
    COHERE,
    ERROR_RESPONSES,
    LEGACY,
    SHAPE_ERROR,
    TEI,
    TEI_TAG,
    ErrorBody,
    TeiErrorBody,
    set_dialect,
)
from compat_api.api.rerank import cohere, legacy, tei

router = APIRouter(tags=["rerank (all dialects)"], dependencies=API_KEY, responses=UNAUTHORIZED)

LEGACY_TAG = "LegacyRerankRequest"
COHERE_TAG = "CohereRerankRequest"


def body_shape(body: Any) -> str | None:
    """Which dialect a /rerank body speaks, by its keys."""
    if isinstance(body, dict):
        if "compare_to" in body:
            return LEGACY_TAG
        if "texts" in body:
            return TEI_TAG
        if "documents" in body:
            return COHERE_TAG
    return None


RerankBody = Annotated[
    Annotated[legacy.LegacyRerankRequest, Tag(LEGACY_TAG)]
    | Annotated[tei.TeiRerankRequest, Tag(TEI_TAG)]
    | Annotated[cohere.CohereRerankRequest, Tag(COHERE_TAG)],
    Discriminator(
        body_shape,
        custom_error_type=SHAPE_ERROR,
        custom_error_message=(
            "the body must have one of the keys 'compare_to' (original API), 'texts' (TEI) "
            "or 'documents' (Cohere / Jina)"
        ),
    ),
]

RESPONSES: dict[int | str, dict[str, Any]] = {
    # the TEI shape gets TEI's error body and codes (424 for a failing model)
    **{code: {**entry, "model": ErrorBody | TeiErrorBody} for code, entry in ERROR_RESPONSES.items()},
    424: {"model": TeiErrorBody, "description": "TEI shape: the model failed while scoring"},
    200: {
        "description": "`compare_to` → `{data, object}`; `texts` → `[{index, score, text?}]`; "
        "`documents` → Cohere's `{id, model, results, meta, usage}`",
        "model": legacy.LegacyRerankResponse | list[tei.TeiRank] | cohere.CohereRerankResponse,
    },
}


EXAMPLES: dict[str, Any] = {
    "original": {"summary": "Original API (compare_to)", "value": legacy.SEED_EXAMPLE},
    "tei": {"summary": "TEI (texts)", "value": tei.EXAMPLE},
    "cohere": {"summary": "Cohere / Jina (documents)", "value": cohere.EXAMPLE},
}


@router.post("/rerank", responses=RESPONSES)
async def rerank(
    body: Annotated[RerankBody, Body(openapi_examples=EXAMPLES)], request: Request, registry: Registry
) -> JSONResponse:
    """Rerank in whichever dialect the body speaks (original, TEI or Cohere/Jina)."""
    if isinstance(body, legacy.LegacyRerankRequest):
        set_dialect(request, LEGACY)
        return JSONResponse(legacy.from_core(await run_rerank(request, registry, legacy.to_core(body))).model_dump())
    if isinstance(body, tei.TeiRerankRequest):
        set_dialect(request, TEI)
        return JSONResponse(tei.from_core(await run_rerank(request, registry, tei.to_core(body)), body))
    set_dialect(request, COHERE)
    return cohere.render(cohere.from_core(await run_rerank(request, registry, cohere.to_core(body)), body))
