"""The text-embeddings-inference (TEI) embedding dialect: `/embed {inputs}`, `/similarity {inputs:
{source_sentence, sentences}}`, `/tokenize {inputs}`, `/decode {ids}`, and `/info` for an
embedding model.

Spec: TEI's router OpenAPI (https://huggingface.github.io/text-embeddings-inference/):
`EmbedRequest {inputs, normalize, truncate, truncation_direction, prompt_name, dimensions}` answers
`[[f32]]`; `SimilarityRequest` answers `[f32]` (cosine of each sentence with the source);
`TokenizeRequest {inputs, add_special_tokens}` answers `[[{id, text, special, start, stop}]]`;
`DecodeRequest {ids, skip_special_tokens}` answers `[str]`. Errors `{"error", "error_type"}` with
TEI's codes. The paths `/embed`, `/similarity` and `/tokenize` are shared with other dialects by
their keys (api/embed/shared.py); every TEI route also answers under `/tei/{model}` for one
served model, so that a TEI client (Dify's provider reads `/info`) gets a base URL per model.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from compat_api.api.wire import LIMITED, DocumentList, NonNegativeInt, Text, TokenId, within_document_limit
from compat_api.core.embed import EmbedOutcome, EmbedQuery, TokenOutcome, Tokens
from compat_api.core.errors import EmptyInput
from compat_api.core.models.embedder import Truncate
from compat_api.core.text import utf8_safe

IdList = list[TokenId]  # one input, however long: the document limit counts inputs, not ids
ID_SCHEMA = {"type": "integer", "minimum": 0, "x-limit": "token_id"}
IdsInput = Annotated[IdList, WithJsonSchema({"type": "array", "minItems": 1, "items": ID_SCHEMA})]


def _input_count(value: Any) -> Any:
    """A list of inputs is refused by its length (413) before its shape is judged; one id array
    is one input."""
    if isinstance(value, list) and not all(isinstance(v, int) for v in value):
        within_document_limit(value)
    return value


# TEI's `Input`: one `InputType` (a text, or the model's own token ids) or a list of them, texts
# and id arrays mixed as the client likes.
Inputs = Annotated[
    Text | IdsInput | Annotated[list[Text | IdsInput], Field(json_schema_extra={"minItems": 1, **LIMITED})],
    BeforeValidator(_input_count),
]


class TeiEmbedRequest(BaseModel):
    """TEI embed request."""

    model_config = ConfigDict(extra="ignore", strict=True)

    inputs: Inputs
    normalize: bool | None = Field(None, description="Unit-length vectors (default true); false: the pooled vector.")
    truncate: bool | None = Field(None, description="Inputs longer than the window are always truncated.")
    truncation_direction: Literal["Left", "Right", "left", "right"] | None = None
    prompt_name: str | None = Field(None, description="Accepted; no prompts are configured.")
    dimensions: NonNegativeInt | None = Field(
        None, description="The first k values, renormalized.", json_schema_extra={"x-limit": "dimensions"}
    )


class TeiTokensRequest(BaseModel):
    """TEI's `/embed_sparse` and `/embed_all` request."""

    model_config = ConfigDict(extra="ignore", strict=True)

    inputs: Inputs
    truncate: bool | None = None
    truncation_direction: Literal["Left", "Right", "left", "right"] | None = None
    prompt_name: str | None = None


class SparseValue(BaseModel):
    index: int
    value: float


def sparse_from_core(outcome: TokenOutcome) -> list[list[SparseValue]]:
    """bge-m3's lexical weights: `index` is the token id, by increasing id."""
    return [[SparseValue(index=i, value=w) for i, w in sorted(out["sparse"].items())] for out in outcome.outputs]


def all_from_core(outcome: TokenOutcome) -> list[Any]:
    """Per input, a vector per token (an array of rows): bge-m3's ColBERT vectors, or any other
    model's last hidden state."""
    return [out["colbert"] if "colbert" in out else out["tokens"] for out in outcome.outputs]


def tokens_to_core(body: TeiTokensRequest, model: str | None) -> EmbedQuery:
    places, ids = inputs_to_core(body.inputs)
    return EmbedQuery(inputs=places, token_ids=ids, model=model, field="inputs", truncate=side(body))


class SimilarityInputs(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    source_sentence: Text
    sentences: Annotated[list[Text], DocumentList] = Field(json_schema_extra={"minItems": 1, **LIMITED})


class TeiSimilarityRequest(BaseModel):
    """TEI similarity request: the cosine of each sentence with the source sentence."""

    model_config = ConfigDict(extra="ignore", strict=True)
    inputs: SimilarityInputs
    parameters: dict[str, Any] | None = None


class TeiTokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    inputs: Text | Annotated[list[Text], DocumentList] = Field(json_schema_extra={"minItems": 1, **LIMITED})
    add_special_tokens: bool | None = None
    prompt_name: str | None = None


class TeiToken(BaseModel):
    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


class TeiDecodeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    ids: Annotated[
        Annotated[IdsInput, Field(min_length=1)]
        | Annotated[list[IdList], Field(min_length=1, json_schema_extra=LIMITED)],
        BeforeValidator(_input_count),
    ]
    skip_special_tokens: bool | None = None


def texts(inputs: str | list[str]) -> list[str]:
    return [inputs] if isinstance(inputs, str) else inputs


def inputs_to_core(inputs: str | list[int] | list[str | list[int]]) -> tuple[list[str], list[list[int] | None] | None]:
    """TEI's `Input` as the core's inputs: texts in place, and per input its token ids (None: a
    text; no list at all: texts only). An id array's place counts in the limits as an input."""
    one = isinstance(inputs, str) or (bool(inputs) and all(isinstance(v, int) for v in inputs))  # one text or id array
    items: list[Any] = [inputs] if one else list(inputs)
    ids = [list(v) if isinstance(v, list) else None for v in items]
    for i, given in enumerate(ids):
        if given == []:
            raise EmptyInput(f"inputs[{i}] is an empty token array", field=f"inputs[{i}]")
    places = [v if isinstance(v, str) else "ids" for v in items]
    return places, ids if any(v is not None for v in ids) else None


def side(body: TeiEmbedRequest | TeiTokensRequest) -> Truncate:
    """TEI's `truncation_direction`: Left cuts a long text's start, Right (the default) its end."""
    return "start" if (body.truncation_direction or "right").lower() == "left" else "end"


def embed_to_core(body: TeiEmbedRequest, model: str | None) -> EmbedQuery:
    """Texts, token-id arrays (the model's own ids: embedded as given), or both mixed."""
    places, ids = inputs_to_core(body.inputs)
    return EmbedQuery(inputs=places, token_ids=ids, model=model, dimensions=body.dimensions,
                      normalize=body.normalize is not False, field="inputs", truncate=side(body))  # fmt: skip


def similarity_to_core(body: TeiSimilarityRequest, model: str | None) -> EmbedQuery:
    if not body.inputs.sentences:
        raise EmptyInput("inputs.sentences must not be empty", field="inputs.sentences")
    names = ["inputs.source_sentence", *(f"inputs.sentences[{i}]" for i in range(len(body.inputs.sentences)))]
    return EmbedQuery(inputs=[body.inputs.source_sentence, *body.inputs.sentences], model=model, field="inputs",
                      uncounted=1, names=names)  # fmt: skip


def similarity_from_core(outcome: EmbedOutcome) -> list[float]:
    source, others = outcome.vectors[0], outcome.vectors[1:]
    return [float(v) for v in others @ source]


def tokens_from_core(text: str, tokens: Tokens, add_special_tokens: bool) -> list[TeiToken]:
    """TEI's token objects: each token's own slice of the text (its offsets) and its id, framed by
    the model's special tokens (no offsets) unless `add_special_tokens` is false."""
    text = utf8_safe(text)  # as the core tokenized it
    out = [
        TeiToken(id=token_id, text=text[start:stop], special=False, start=start, stop=stop)
        for token_id, (start, stop) in zip(tokens.ids, tokens.spans, strict=True)
    ]
    if not add_special_tokens:
        return out
    before = [TeiToken(id=i, text=t, special=True, start=None, stop=None) for i, t in tokens.before]
    after = [TeiToken(id=i, text=t, special=True, start=None, stop=None) for i, t in tokens.after]
    return before + out + after


def decode_ids(body: TeiDecodeRequest) -> list[list[int]]:
    ids = body.ids
    return [ids] if ids and isinstance(ids[0], int) else ids  # type: ignore[return-value]
