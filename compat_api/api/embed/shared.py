"""Embedding paths shared by dialects with disjoint keys, and TEI's base URL per model.

- `POST /embed`: `{inputs}` is TEI's, `{texts}` is Cohere's (v1 shape);
- `POST /similarity`: `{inputs: {source_sentence, sentences}}` is TEI's (a bare array of cosines),
  `{input: [...]}` is the original embedding template's (`{score: [...]}`);
- `POST /tokenize`: `{inputs}` is TEI's, `{text}` is Cohere's.

`/tei/{model}/…` answers TEI's routes (`/info`, `/embed`, `/similarity`, `/tokenize`, `/decode`,
`/rerank`, `/v1/embeddings`) for one served model: Dify's TEI provider reads `/info` to decide
whether a base URL is an embedding model or a reranker, then posts without a model name.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import Discriminator, Tag

from compat_api.api.auth import API_KEY, UNAUTHORIZED, unauthorized
from compat_api.api.deps import Registry, bounded, run_embed, run_rerank
from compat_api.api.embed import cohere, openai, sibling, tei
from compat_api.api.errors import (
    COHERE_V1,
    ERROR_RESPONSES,
    OPENAI,
    SHAPE_ERROR,
    SIBLING,
    TEI,
    TEI_TAG,
    ErrorBody,
    TeiErrorBody,
    dialect,
    set_dialect,
)
from compat_api.api.rendering import vectors_response
from compat_api.api.rerank import tei as tei_rerank
from compat_api.core.embed import detokenize, embed_tokens, tokenize
from compat_api.core.errors import EmptyInput
from compat_api.core.registry import ModelRegistry

# TEI's bodies get TEI's error body and codes (424: the model failed), the others the default one
TEI_RESPONSES: dict[int | str, dict[str, Any]] = {
    **{code: {**entry, "model": TeiErrorBody} for code, entry in ERROR_RESPONSES.items()},
    **unauthorized(TeiErrorBody),
    424: {"model": TeiErrorBody, "description": "The model failed"},
}
EITHER_RESPONSES: dict[int | str, dict[str, Any]] = {
    **{code: {**entry, "model": ErrorBody | TeiErrorBody} for code, entry in ERROR_RESPONSES.items()},
    424: {"model": TeiErrorBody, "description": "TEI shape: the model failed"},
}
router = APIRouter(tags=["embeddings (shared paths, TEI)"], dependencies=API_KEY,
                   responses={**UNAUTHORIZED, **EITHER_RESPONSES})  # fmt: skip

OTHER = "OtherDialect"  # a CapWords tag: error locations drop it like a type name


def keyed(tei_key: str, other_key: str) -> Any:
    """A discriminator: TEI's body by `tei_key` (tagged so that its errors render TEI's body), the
    other dialect's by `other_key`."""

    def shape(body: Any) -> str | None:
        if isinstance(body, dict):
            if tei_key in body:
                return TEI_TAG
            if other_key in body:
                return OTHER
        return None

    message = f"the body must have the key '{tei_key}' (TEI) or '{other_key}'"
    return Discriminator(shape, custom_error_type=SHAPE_ERROR, custom_error_message=message)


EmbedBody = Annotated[
    Annotated[tei.TeiEmbedRequest, Tag(TEI_TAG)] | Annotated[cohere.CohereEmbedRequest, Tag(OTHER)],
    keyed("inputs", "texts"),
]
SimilarityBody = Annotated[
    Annotated[tei.TeiSimilarityRequest, Tag(TEI_TAG)] | Annotated[sibling.SimilarityRequest, Tag(OTHER)],
    keyed("inputs", "input"),
]
TokenizeBody = Annotated[
    Annotated[tei.TeiTokenizeRequest, Tag(TEI_TAG)] | Annotated[cohere.TokenizeRequest, Tag(OTHER)],
    keyed("inputs", "text"),
]


async def tei_embed(request: Request, registry: ModelRegistry, body: tei.TeiEmbedRequest,
                    model: str | None) -> Response:  # fmt: skip
    set_dialect(request, TEI)
    outcome = await run_embed(request, registry, tei.embed_to_core(body, model))
    return await vectors_response(outcome.vectors)  # up to 1,000 vectors: off the event loop


async def tei_similarity(request: Request, registry: ModelRegistry, body: tei.TeiSimilarityRequest,
                         model: str | None) -> list[float]:  # fmt: skip
    set_dialect(request, TEI)
    return tei.similarity_from_core(await run_embed(request, registry, tei.similarity_to_core(body, model)))


async def tei_tokenize(request: Request, registry: ModelRegistry, body: tei.TeiTokenizeRequest,
                       model: str | None) -> list[list[dict[str, Any]]]:  # fmt: skip
    set_dialect(request, TEI)
    if not body.inputs:
        raise EmptyInput("inputs must not be empty", field="inputs")
    answer = []
    for i, text in enumerate(tei.texts(body.inputs)):
        tokens = await bounded(request, registry, tokenize(registry, text, model, field=f"inputs[{i}]"))
        framed = tei.tokens_from_core(text, tokens, body.add_special_tokens is not False)
        answer.append([token.model_dump() for token in framed])
    return answer


async def tei_decode(request: Request, registry: ModelRegistry, body: tei.TeiDecodeRequest,
                     model: str | None) -> list[str]:  # fmt: skip
    set_dialect(request, TEI)
    return [await bounded(request, registry, detokenize(registry, ids, model)) for ids in tei.decode_ids(body)]


@router.post("/embed")
async def embed(body: Annotated[EmbedBody, Body()], request: Request, registry: Registry) -> Response:
    """TEI's `{inputs}` → `[[f32]]`; Cohere's `{texts}` → Cohere's v1 answer."""
    if isinstance(body, tei.TeiEmbedRequest):
        return await tei_embed(request, registry, body, None)
    set_dialect(request, COHERE_V1)
    outcome = await run_embed(request, registry, cohere.to_core(body))
    answer = cohere.from_core(outcome, body.texts, body.embedding_types, "1").model_dump(exclude_none=True)
    return await vectors_response(answer)


@router.post("/similarity")
async def similarity(body: Annotated[SimilarityBody, Body()], request: Request, registry: Registry) -> JSONResponse:
    """TEI's `{inputs: {source_sentence, sentences}}` → `[cosine]`; the original template's
    `{input: [...]}` → `{score: [{sentence1, sentence2, score}]}`."""
    if isinstance(body, tei.TeiSimilarityRequest):
        return JSONResponse(await tei_similarity(request, registry, body, None))
    set_dialect(request, SIBLING)
    query = sibling.similarity_to_core(body)
    outcome = await run_embed(request, registry, query)
    return JSONResponse(sibling.similarity_from_core(outcome, list(query.inputs)).model_dump())


@router.post("/tokenize")
async def tokenize_route(body: Annotated[TokenizeBody, Body()], request: Request, registry: Registry) -> JSONResponse:
    """TEI's `{inputs}` → `[[{id, text, special, start, stop}]]`; Cohere's `{text}` → `{tokens, token_strings}`."""
    if isinstance(body, tei.TeiTokenizeRequest):
        return JSONResponse(await tei_tokenize(request, registry, body, None))
    set_dialect(request, COHERE_V1)
    tokens = await bounded(request, registry, tokenize(registry, body.text, body.model))
    return JSONResponse(
        {"tokens": tokens.ids, "token_strings": tokens.strings, "meta": {"api_version": {"version": "1"}}}
    )


async def tei_sparse(request: Request, registry: ModelRegistry, body: tei.TeiTokensRequest,
                     model: str | None) -> list[list[tei.SparseValue]]:  # fmt: skip
    set_dialect(request, TEI)
    query = tei.tokens_to_core(body, model)
    return tei.sparse_from_core(await bounded(request, registry, embed_tokens(registry, query, "m3")))


async def tei_all(request: Request, registry: ModelRegistry, body: tei.TeiTokensRequest,
                  model: str | None) -> Response:  # fmt: skip
    set_dialect(request, TEI)
    embedder = registry.embedder(model).info
    outputs: Any = "m3" if embedder.extra.get("multi_vector") else "tokens"
    query = tei.tokens_to_core(body, model)
    outcome = await bounded(request, registry, embed_tokens(registry, query, outputs, per_token=True))
    return await vectors_response(tei.all_from_core(outcome))  # millions of floats: off the event loop


@router.post("/embed_sparse", responses=TEI_RESPONSES, dependencies=[Depends(dialect(TEI))])
async def embed_sparse(body: tei.TeiTokensRequest, request: Request, registry: Registry) -> list[list[tei.SparseValue]]:
    """TEI: bge-m3's lexical weights per input, `[{index: token id, value}]` (424 for a model without them)."""
    return await tei_sparse(request, registry, body, None)


@router.post("/embed_all", responses=TEI_RESPONSES, dependencies=[Depends(dialect(TEI))],
             response_model=list[list[list[float]]])  # fmt: skip
async def embed_all(body: tei.TeiTokensRequest, request: Request, registry: Registry) -> Response:
    """TEI: a vector per token (bge-m3: its ColBERT vectors, normalized; other models: the last hidden state)."""
    return await tei_all(request, registry, body, None)


@router.post("/decode", responses=TEI_RESPONSES, dependencies=[Depends(dialect(TEI))])
async def decode(body: tei.TeiDecodeRequest, request: Request, registry: Registry) -> list[str]:
    """TEI: the text of each list of the embedding model's token ids."""
    return await tei_decode(request, registry, body, None)


# ------------------------------------------------------------------ a TEI base URL per model

per_model = APIRouter(prefix="/tei/{model}", tags=["TEI, per model"], dependencies=[*API_KEY, Depends(dialect(TEI))],
                      responses={**UNAUTHORIZED, **TEI_RESPONSES})  # fmt: skip
per_model_openai = APIRouter(prefix="/tei/{model}", tags=["TEI, per model"],
                             dependencies=[*API_KEY, Depends(dialect(OPENAI))],
                             responses={**UNAUTHORIZED, **openai.RESPONSES})  # fmt: skip


@per_model.get("/info", response_model=tei_rerank.TeiInfo)
async def model_info(model: str, request: Request, registry: Registry) -> tei_rerank.TeiInfo:
    """TEI's `/info` for this model: `model_type` `embedding` (with its pooling) or `reranker`."""
    set_dialect(request, TEI)
    return tei_rerank.describe(registry.find(model), registry.settings)


@per_model.post("/embed")
async def model_embed(model: str, body: tei.TeiEmbedRequest, request: Request, registry: Registry) -> Any:
    return await tei_embed(request, registry, body, registry.find(model).spec.name)


@per_model.post("/similarity")
async def model_similarity(model: str, body: tei.TeiSimilarityRequest, request: Request,
                           registry: Registry) -> list[float]:  # fmt: skip
    return await tei_similarity(request, registry, body, registry.find(model).spec.name)


@per_model.post("/tokenize")
async def model_tokenize(model: str, body: tei.TeiTokenizeRequest, request: Request, registry: Registry) -> Any:
    return await tei_tokenize(request, registry, body, registry.find(model).spec.name)


@per_model.post("/embed_sparse")
async def model_sparse(model: str, body: tei.TeiTokensRequest, request: Request,
                       registry: Registry) -> list[list[tei.SparseValue]]:  # fmt: skip
    return await tei_sparse(request, registry, body, registry.find(model).spec.name)


@per_model.post("/embed_all", response_model=list[list[list[float]]])
async def model_all(model: str, body: tei.TeiTokensRequest, request: Request, registry: Registry) -> Response:
    return await tei_all(request, registry, body, registry.find(model).spec.name)


@per_model.post("/decode")
async def model_decode(model: str, body: tei.TeiDecodeRequest, request: Request, registry: Registry) -> list[str]:
    return await tei_decode(request, registry, body, registry.find(model).spec.name)


@per_model.post("/rerank")
async def model_rerank(model: str, body: tei_rerank.TeiRerankRequest, request: Request, registry: Registry) -> Any:
    set_dialect(request, TEI)
    query = replace(tei_rerank.to_core(body), model=registry.find(model).spec.name)
    return JSONResponse(tei_rerank.from_core(await run_rerank(request, registry, query), body))


@per_model_openai.post("/v1/embeddings")
@per_model_openai.post("/embeddings", include_in_schema=False)
async def model_openai(model: str, body: openai.OpenAIEmbeddingRequest, request: Request,
                       registry: Registry) -> JSONResponse:  # fmt: skip
    """OpenAI-shaped embeddings of this model, whatever `model` the body names (Dify's TEI provider sends none)."""
    query = replace(openai.to_core(body), model=registry.find(model).spec.name)
    return JSONResponse(openai.from_core(await run_embed(request, registry, query), body))
