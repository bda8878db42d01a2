"""The embedding use case every embedding dialect calls: check limits, embed in the engine,
normalize, cut to the requested dimensions, count usage. One model version serves a request."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from compat_api.core.engine import BatchEngine
from compat_api.core.errors import EmptyInput, InvalidInput, LimitExceeded
from compat_api.core.models.base import Cost, Encoding, Step
from compat_api.core.models.embedder import Embedder, Outputs, Truncate
from compat_api.core.registry import ModelRegistry
from compat_api.core.text import utf8_safe


@dataclass(frozen=True)
class EmbedQuery:
    """What every embedding dialect asks of the core.

    `dimensions` None or 0 (or the model's size) is the full vector; k keeps the first k values,
    renormalized (Matryoshka truncation, as TEI and FlagEmbedding's `truncate_dim` do).
    `field` is the name the dialect gives its input list, used in error messages.
    """

    inputs: Sequence[str]
    model: str | None = None
    dimensions: int | None = None
    normalize: bool = True
    field: str = "input"
    dimensions_field: str = "dimensions"  # the dialect's name for `dimensions`, used in error messages
    query: bool = False  # queries get the model's query instruction (RERANK_EMBEDDING_QUERY_INSTRUCTION), if any
    max_tokens: int | None = None  # each input truncated to this many tokens (within the window)
    uncounted: int = 0  # leading inputs the server adds (TEI similarity's source), not counted against the limit
    truncate: Truncate = "end"  # where a text longer than the window is cut ("none": refused, 413)
    # per input, its text's place taken by the model's own token ids (TEI), used as given; None: a text
    token_ids: Sequence[Sequence[int] | None] | None = None
    names: Sequence[str] | None = None  # each input's name in error messages (default: field[i])

    def where(self, i: int) -> str:
        """How error messages name input `i`."""
        if self.names is not None:
            return self.names[i]
        return f"{self.field}[{i}]" if len(self.inputs) > 1 or self.field != "input" else self.field


@dataclass(frozen=True)
class EmbedOutcome:
    """One float32 vector per input, in input order, and the tokens the model read."""

    model: str
    vectors: np.ndarray
    tokens: int


def check_inputs(request: EmbedQuery, max_inputs: int, max_chars: int) -> None:
    """Count, emptiness and length of the inputs, before any tokenization."""
    field = request.field
    if not request.inputs:
        raise EmptyInput(f"{field} must not be empty", field=field)
    counted = len(request.inputs) - request.uncounted
    if counted > max_inputs:
        raise LimitExceeded(
            f"{counted} inputs exceed the limit of {max_inputs} per request (RERANK_MAX_DOCUMENTS)",
            field=field,
        )
    for i, text in enumerate(request.inputs):
        where = request.where(i)
        if not text:
            raise EmptyInput(f"{where} is an empty string; every input needs at least one character", field=where)
        if len(text) > max_chars:
            raise LimitExceeded(
                f"{where}: {len(text)} characters exceed the limit of {max_chars} (RERANK_MAX_DOCUMENT_CHARS)",
                field=where,
            )


def check_vocabulary(ids: Sequence[int], size: int, where: str, field: str | None = None) -> None:
    """Token ids given by the client must be the model's: 0 to its vocabulary size. The error names
    `where[j]` (and `field`, that by default)."""
    for j, token in enumerate(ids):
        if not 0 <= token < size:
            raise InvalidInput(f"{where}[{j}]: {token} is not a token id of the model (0 to {size - 1})",
                               field=field or f"{where}[{j}]")  # fmt: skip


def check_ids(arrays: Sequence[Sequence[int] | None], size: int, field: str) -> None:
    """Every token-id input must be in the model's vocabulary (None: that input is a text)."""
    for i, ids in enumerate(arrays):
        if ids is not None:
            check_vocabulary(ids, size, f"{field}[{i}]")


def check_dimensions(dimensions: int | None, size: int, field: str = "dimensions") -> None:
    """`dimensions` must be 0 (or None: all) up to the model's size; errors name `field`."""
    if dimensions is not None and dimensions < 0:
        raise InvalidInput(f"{field} must be 0 or more, not {dimensions}", field=field)
    if dimensions and dimensions > size:
        raise InvalidInput(
            f"{field} should be smaller than or equal to the model's size {size}, not {dimensions}",
            field=field,
        )


def shape(vectors: np.ndarray, dimensions: int | None, normalize: bool) -> np.ndarray:
    """Cut to `dimensions` (0/None: all) and L2-normalize each row (when asked)."""
    if dimensions:
        vectors = vectors[:, :dimensions]
    if normalize:
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.maximum(norms, np.float32(1e-12))
    return np.ascontiguousarray(vectors, dtype=np.float32)


def _embedder(registry: ModelRegistry, name: str | None) -> tuple[BatchEngine, Embedder]:
    """The engine of the embedding model a request resolves to; this version serves the whole request."""
    engine = registry.embedder(name).engine
    model = engine.scorer
    assert isinstance(model, Embedder)
    return engine, model


async def embed(registry: ModelRegistry, request: EmbedQuery) -> EmbedOutcome:
    """Embed each input with the embedding model the request resolves to."""
    settings = registry.settings
    check_inputs(request, settings.max_documents, settings.max_document_chars)
    engine, model = _embedder(registry, request.model)
    check_dimensions(request.dimensions, model.dimensions, request.dimensions_field)
    instruction = settings.embedding_query_instruction if request.query else ""
    texts = [instruction + utf8_safe(text) for text in request.inputs]
    outputs, tokens = await _run(engine, model, request, texts)
    vectors = shape(np.stack(outputs), request.dimensions, request.normalize)
    return EmbedOutcome(model=model.info.name, vectors=vectors, tokens=tokens)


# Most floats one answer of per-token vectors may hold: one 8,192-token input of a 1,024-wide model
# (bge-m3 at its whole window); about 160 MB of JSON.
MAX_TOKEN_VECTOR_FLOATS = 8 * 2**20


def capped(steps: Iterator[Step], limit: int, field: str, dimensions: int) -> Iterator[Step]:
    """The steps, refused (413) as soon as their tokens pass `limit`: before the model runs."""
    tokens = 0
    for step in steps:
        if isinstance(step, Cost):
            tokens += step.tokens
            if tokens > limit:
                raise LimitExceeded(
                    f"{field}: {tokens}+ tokens would answer more than {limit} vectors of {dimensions} values "
                    f"(an answer of per-token vectors holds at most {MAX_TOKEN_VECTOR_FLOATS} values); "
                    "send fewer or shorter inputs",
                    field=field,
                )
        yield step


async def _run(engine: BatchEngine, model: Embedder, request: EmbedQuery, texts: list[str],
               outputs: Outputs | None = None, token_limit: int | None = None) -> tuple[list[Any], int]:  # fmt: skip
    """Each input's model output, in input order, and the tokens read. Texts and id arrays (TEI
    may mix them in one request) go to the engine as one request, texts first, batched alike:
    one admission, one set of per-request caps, and one failure or cancellation for all."""
    ids = request.token_ids if request.token_ids is not None else [None] * len(texts)
    check_ids(ids, model.vocabulary_size, request.field)
    by_text = [i for i, given in enumerate(ids) if given is None]
    by_ids = [i for i, given in enumerate(ids) if given is not None]
    read, given = Encoding(len(by_text)), Encoding(len(by_ids))
    steps: list[Iterator[Step]] = []
    if by_text:
        steps.append(model.embed_steps([texts[i] for i in by_text], read, max_tokens=request.max_tokens,
                                       truncate=request.truncate, outputs=outputs, field=request.field))  # fmt: skip
    if by_ids:
        steps.append(model.id_steps([ids[i] or [] for i in by_ids], given, outputs=outputs))
    chained: Iterator[Step] = itertools.chain(*steps)
    if token_limit is not None:
        chained = capped(chained, token_limit, request.field, model.dimensions)
    done = await engine.run(chained, estimate=len(texts), field=request.field)
    results: list[Any] = [None] * len(texts)
    for place, output in zip(by_text + by_ids, done, strict=True):
        results[place] = output
    return results, read.tokens + given.tokens


@dataclass(frozen=True)
class TokenOutcome:
    """Per input, what it asked of the model besides its vector: bge-m3's lexical weights
    (`sparse`: token id -> weight) and ColBERT vectors (`colbert`), or every token's vector
    (`tokens`); and the tokens the model read."""

    model: str
    outputs: list[dict[str, Any]]
    tokens: int


async def embed_tokens(registry: ModelRegistry, request: EmbedQuery, outputs: Outputs,
                       per_token: bool = False) -> TokenOutcome:  # fmt: skip
    """bge-m3's sparse and multi-vector outputs ("m3"; a model without those heads is a model
    error), or each token's vector ("tokens"), batched in the engine like any embedding. An
    answer of a vector per token (`per_token`) holds at most MAX_TOKEN_VECTOR_FLOATS values."""
    settings = registry.settings
    check_inputs(request, settings.max_documents, settings.max_document_chars)
    engine, model = _embedder(registry, request.model)
    texts = [utf8_safe(text) for text in request.inputs]
    limit = MAX_TOKEN_VECTOR_FLOATS // max(1, model.dimensions) if per_token else None
    results, tokens = await _run(engine, model, request, texts, outputs, limit)
    return TokenOutcome(model=model.info.name, outputs=results, tokens=tokens)


def pairwise(vectors: np.ndarray) -> list[tuple[int, int, float]]:
    """Cosine similarity of every pair i < j of unit vectors, in order."""
    similarity = vectors @ vectors.T
    n = len(vectors)
    return [(i, j, float(similarity[i, j])) for i in range(n) for j in range(i + 1, n)]


EMBEDDING_TYPES = ("float", "int8", "uint8", "binary", "ubinary")


def quantize(vectors: np.ndarray, kind: str) -> np.ndarray:
    """Cohere's embedding types of unit vectors: `int8` scales each vector so that its largest
    magnitude is 127 and rounds (a per-vector scale, so a vector never depends on its batch);
    `uint8` is that plus 128; `binary` / `ubinary` pack one sign bit per dimension (positive: 1),
    eight to a byte, as signed (minus 128) or unsigned bytes."""
    if kind == "float":
        return vectors
    if kind in ("int8", "uint8"):
        peak = np.maximum(np.abs(vectors).max(axis=1, keepdims=True), np.float32(1e-12))
        signed: np.ndarray = np.clip(np.rint(vectors / peak * 127), -128, 127).astype(np.int16)
        return signed if kind == "int8" else signed + 128
    packed: np.ndarray = np.packbits(vectors > 0, axis=1).astype(np.int16)
    if kind == "binary":
        return packed - 128
    if kind == "ubinary":
        return packed
    raise InvalidInput(f"embedding type {kind!r} is not one of {', '.join(EMBEDDING_TYPES)}", field="embedding_types")


@dataclass(frozen=True)
class Tokens:
    """A text's tokens: ids of the model's tokenizer, the slices of the text from each token's start
    to the next one's (they concatenate back to exactly the text), each token's own span (start,
    stop; without the spaces between tokens); and the special tokens the model frames it with."""

    ids: list[int]
    strings: list[str]
    spans: list[tuple[int, int]]
    before: list[tuple[int, str]]
    after: list[tuple[int, str]]


async def tokenize(registry: ModelRegistry, text: str, model: str | None = None, *, field: str = "text") -> Tokens:
    """The embedding model's tokens of `text` (no special tokens), off the event loop."""
    if not text:
        raise EmptyInput(f"{field} must not be empty", field=field)
    limit = registry.settings.max_document_chars
    if len(text) > limit:
        raise LimitExceeded(
            f"{field}: {len(text)} characters exceed the limit of {limit} (RERANK_MAX_DOCUMENT_CHARS)", field=field
        )
    engine, embedder = _embedder(registry, model)
    text = utf8_safe(text)
    ids, spans = await engine.tokenizing(embedder.token_offsets, text)
    bounds = [0, *(start for start, _ in spans[1:]), len(text)]
    strings = [text[bounds[i] : bounds[i + 1]] for i in range(len(ids))]
    before, after = embedder.frame()
    return Tokens(ids=ids, strings=strings, spans=spans, before=before, after=after)


async def detokenize(registry: ModelRegistry, ids: Sequence[int], model: str | None = None) -> str:
    """The text of the embedding model's token ids; an id outside its vocabulary is a 4xx."""
    engine, embedder = _embedder(registry, model)
    check_vocabulary(ids, embedder.vocabulary_size, "tokens", field="tokens")
    return await engine.tokenizing(embedder.decode, list(ids))
