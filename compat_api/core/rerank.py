"""The rerank use case every dialect calls: check limits, score (through the cache), normalize,
order, count usage (the tokens the model read: a document sent twice is scored and counted once).
A request is scored by one model version from start to finish."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from compat_api.core.cache import CachedScore
from compat_api.core.engine import BatchEngine, ScoreResult
from compat_api.core.errors import EmptyInput, LimitExceeded
from compat_api.core.models.base import EncodeOptions
from compat_api.core.ranking import normalize, order_by_score
from compat_api.core.registry import ModelRegistry
from compat_api.core.text import utf8_safe
from compat_api.settings import Settings


@dataclass(frozen=True)
class RerankQuery:
    """What every dialect asks of the core, in the core's terms.

    `documents_field` is the name the dialect gives the document list, used in error messages.
    """

    query: str
    documents: Sequence[str]
    model: str | None = None
    top_n: int | None = None
    max_tokens_per_doc: int | None = None
    max_chunks_per_doc: int | None = None
    truncate: bool | None = None
    truncate_left: bool = False
    documents_field: str = "documents"


@dataclass(frozen=True)
class RerankOutcome:
    """Scores in input order (normalized and raw), the ranked order (cut to top_n), and usage."""

    model: str
    raw_scores: list[float]
    scores: list[float]
    order: list[int]
    tokens: int

    @property
    def documents(self) -> int:
        return len(self.scores)


def check_lengths(request: RerankQuery, settings: Settings) -> None:
    """Character limits, checked before any tokenization; messages name the limit, never the text."""
    if len(request.query) > settings.max_query_chars:
        raise LimitExceeded(
            f"query: {len(request.query)} characters exceed the limit of {settings.max_query_chars} "
            "(RERANK_MAX_QUERY_CHARS)",
            field="query",
        )
    for i, document in enumerate(request.documents):
        if len(document) > settings.max_document_chars:
            field = f"{request.documents_field}[{i}]"
            raise LimitExceeded(
                f"{field}: {len(document)} characters exceed the limit of {settings.max_document_chars} "
                "(RERANK_MAX_DOCUMENT_CHARS)",
                field=field,
            )


def encode_options(request: RerankQuery, settings: Settings) -> EncodeOptions:
    """A document longer than the window: truncated when the request asks for truncation
    (v2 `max_tokens_per_doc`, TEI `truncate` / `truncation_direction`), chunked when it asks for
    chunks (v1 `max_chunks_per_doc`), otherwise as the server's `long_documents` policy says."""
    asks_truncation = request.max_tokens_per_doc is not None or request.truncate_left or request.truncate is True
    if asks_truncation or (settings.long_documents == "truncate" and not request.max_chunks_per_doc):
        return EncodeOptions(mode="truncate", max_doc_tokens=request.max_tokens_per_doc,
                             truncate_left=request.truncate_left)  # fmt: skip
    return EncodeOptions(
        mode="chunk",
        max_chunks=request.max_chunks_per_doc or settings.max_chunks_per_doc,
        overlap=settings.chunk_overlap,
    )


async def score_cached(
    engine: BatchEngine, query: str, documents: Sequence[str], options: EncodeOptions, field: str = "documents"
) -> ScoreResult:
    """Raw scores in input order: cached documents skip tokenization and the model. Usage is
    the same whether a document came from the cache or not. `field` names the document list in
    errors."""
    cache = engine.cache
    if cache is None:
        raw, encoding = await engine.score(query, documents, options, field=field)
        return ScoreResult(raw=raw, tokens=encoding.tokens)
    namespace = f"{engine.scorer.info.name}|{engine.scorer.info.path}|{options!r}"
    keys = [cache.key(namespace, query, doc) for doc in documents]
    hits = [cache.get(key) for key in keys]
    missing = [i for i, hit in enumerate(hits) if hit is None]
    # The query's own tokens live in a namespace of their own: no document can share their key.
    query_key = cache.key(f"{namespace}|query-tokens", query, "")
    own = cache.get(query_key) if not missing else None
    if missing or own is None:
        scored, encoding = await engine.score(query, [documents[i] for i in missing], options, field=field)
        for j, i in enumerate(missing):
            hits[i] = CachedScore(scored[j], encoding.doc_tokens[j])
            cache.put(keys[i], hits[i])
        own = CachedScore(0.0, encoding.extra_tokens)
        cache.put(query_key, own)
    found = [hit for hit in hits if hit is not None]
    return ScoreResult(
        raw=[hit.raw for hit in found],
        tokens=own.tokens + sum(hit.tokens for hit in found),
        cached=len(documents) - len(missing),
    )


async def rerank(registry: ModelRegistry, request: RerankQuery) -> RerankOutcome:
    """Score each document against the query with the requested model and rank them."""
    field = request.documents_field
    if not request.documents:
        raise EmptyInput(f"list of {field} must not be empty", field=field)
    limit = registry.settings.max_documents
    if len(request.documents) > limit:
        raise LimitExceeded(
            f"{len(request.documents)} {field} exceed the limit of {limit} per request (RERANK_MAX_DOCUMENTS)",
            field=field,
        )
    check_lengths(request, registry.settings)
    engine = registry.reranker(request.model).engine  # this version serves the whole request
    info = engine.scorer.info
    query, documents = utf8_safe(request.query), [utf8_safe(d) for d in request.documents]
    if info.kind == "embedding":  # reranking by cosine: the query is a query (FlagModel.encode_queries)
        query = registry.settings.embedding_query_instruction + query
    # A document sent twice is scored once, so duplicates always get identical scores (a batch's
    # rows may otherwise differ in the last bits) and the model does not repeat work.
    distinct = {doc: i for i, doc in reversed(list(enumerate(documents)))}
    unique = sorted(distinct, key=distinct.__getitem__)
    result = await score_cached(engine, query, unique, encode_options(request, registry.settings), field)
    position = {doc: i for i, doc in enumerate(unique)}
    raw = [result.raw[position[doc]] for doc in documents]
    scores = normalize(raw, info.normalization)
    return RerankOutcome(
        model=info.name,
        raw_scores=raw,
        scores=scores,
        order=order_by_score(scores, request.top_n),
        tokens=result.tokens,
    )
