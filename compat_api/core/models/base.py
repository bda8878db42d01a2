"""What every model family shares: items, tokenization steps, document fitting, and the Scorer contract.

A scorer turns one request into model work in bounded *steps* that the engine runs one at a
time on the tokenizer thread (so that a huge request never holds the tokenizer for long, and
its cost is known before it is paid): a `Cost` step declares how many items and tokens the next
steps will produce, a list of `Item`s is work ready for the model. `forward` runs the model on
a batch of items from any requests; `finish` turns one request's outputs into one raw score per
document, using the bookkeeping its steps wrote into the request's `Encoding`.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from compat_api.core.errors import ModelLoadError
from compat_api.core.ranking import Normalization

log = logging.getLogger(__name__)

# Loading runs third-party code that raises anything (OSError, SafetensorError, ValueError...);
# every such failure becomes one typed start-up error with the path in its message.
LOAD_ERRORS = (Exception,)

# A tokenization step builds at most this many items, so that one request's chunks never hold
# the tokenizer thread for long while other requests wait for theirs.
ITEMS_PER_STEP = 64
# Documents are tokenized in slices of at most this many characters (or documents).
CHARS_PER_STEP = 64 * 1024
DOCS_PER_STEP = 256


@dataclass(frozen=True)
class Item:
    """One unit of model work: a tokenized pair (cross-encoder) or text (embedding model)."""

    length: int
    features: dict[str, Any]


@dataclass(frozen=True)
class Cost:
    """A step's declaration of the items and tokens the following steps will produce."""

    items: int
    tokens: int


Step = Cost | list[Item]


@dataclass
class Encoding:
    """One request's bookkeeping, written by its tokenization steps.

    `owners[i]` is the document of the i-th document item (items after the first `query_items`);
    `doc_tokens` is what each document is billed, `extra_tokens` what the request is billed on top
    (an embedding model's query, counted once).
    """

    documents: int
    owners: list[int] = field(default_factory=list)
    doc_tokens: list[int] = field(default_factory=list)
    extra_tokens: int = 0
    query_items: int = 0

    def __post_init__(self) -> None:
        if not self.doc_tokens:
            self.doc_tokens = [0] * self.documents

    @property
    def tokens(self) -> int:
        return self.extra_tokens + sum(self.doc_tokens)

    def bill(self, owners: Sequence[int], items: Sequence[Item]) -> None:
        """Record items that belong to documents (in the order they are yielded)."""
        self.owners.extend(owners)
        for owner, item in zip(owners, items, strict=True):
            self.doc_tokens[owner] += item.length


@dataclass(frozen=True)
class EncodeOptions:
    """How a document that does not fit the model window is handled.

    `truncate` keeps one piece (from the start, or the end with `truncate_left`); `chunk` splits
    it into up to `max_chunks` windows overlapping by `overlap` tokens. `max_doc_tokens` caps
    every document first (Cohere v2 `max_tokens_per_doc`).
    """

    mode: Literal["truncate", "chunk"] = "truncate"
    max_chunks: int = 1
    overlap: int = 0
    max_doc_tokens: int | None = None
    truncate_left: bool = False

    @property
    def is_flag_default(self) -> bool:
        """FlagEmbedding's own policy: truncate from the right, no extra cap."""
        return self.mode == "truncate" and self.max_doc_tokens is None and not self.truncate_left


DEFAULT_OPTIONS = EncodeOptions()


def cut(ids: list[int], limit: int, left: bool) -> list[int]:
    """Keep at most `limit` ids, dropping from the start (`left`) or the end."""
    if len(ids) <= limit:
        return ids
    return ids[len(ids) - limit :] if left else ids[:limit]


def fit_document(ids: list[int], room: int, options: EncodeOptions) -> list[list[int]]:
    """The pieces of one document the model sees: itself if it fits, else chunks or one cut."""
    room = max(1, room)
    if options.max_doc_tokens is not None:
        ids = cut(ids, options.max_doc_tokens, options.truncate_left)
    if len(ids) <= room:
        return [ids]
    if options.mode == "truncate" or options.max_chunks <= 1:
        return [cut(ids, room, options.truncate_left)]
    stride = max(1, room - min(options.overlap, room // 2))
    chunks: list[list[int]] = []
    for start in range(0, len(ids), stride):
        chunks.append(ids[start : start + room])
        if start + room >= len(ids) or len(chunks) >= options.max_chunks:
            break
    return chunks


def document_slices(documents: Sequence[str]) -> Iterator[tuple[int, int]]:
    """[start, stop) ranges of documents, each at most CHARS_PER_STEP characters (or one document)."""
    start = 0
    while start < len(documents):
        stop, chars = start, 0
        while stop < len(documents) and stop - start < DOCS_PER_STEP:
            chars += len(documents[stop])
            if chars > CHARS_PER_STEP and stop > start:
                break
            stop += 1
        yield start, stop
        start = stop


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
    backend: str = "torch"
    load_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def resolve_device(requested: str) -> str:
    """`auto` picks CUDA when present, otherwise the CPU; a device this machine lacks is a load error."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(requested.partition(":")[2] or 0)
        if index >= count:
            found = f"{count} CUDA device(s)" if count else "no CUDA device (or a torch built without CUDA)"
            raise ModelLoadError(f"RERANK_DEVICE={requested}, but this machine has {found}: use cpu or auto")
    elif requested == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError("RERANK_DEVICE=mps, but Apple's Metal (MPS) is not available here: use cpu or auto")
    return requested


def best_per_document(encoding: Encoding, scores: Sequence[float]) -> list[float]:
    """A document's score is its best piece's (one piece unless it was chunked)."""
    best: list[float | None] = [None] * encoding.documents
    for owner, score in zip(encoding.owners, scores, strict=True):
        current = best[owner]
        best[owner] = score if current is None else max(current, score)
    return [float(s) if s is not None else float("nan") for s in best]


class Scorer(ABC):
    """A loaded model that turns (query, documents) into raw scores, in batchable steps."""

    info: ModelInfo

    @abstractmethod
    def steps(self, query: str, documents: Sequence[str], options: EncodeOptions, encoding: Encoding) -> Iterator[Step]:
        """Tokenize one request in bounded steps (run on the model's tokenizer thread)."""

    @abstractmethod
    def forward(self, items: Sequence[Item]) -> list[Any]:
        """Run the model on a batch of items, one output per item. Runs on a model lane."""

    @abstractmethod
    def finish(self, encoding: Encoding, outputs: Sequence[Any]) -> list[float]:
        """One raw score per document of the request, in input order."""

    def encode(
        self, query: str, documents: Sequence[str], options: EncodeOptions = DEFAULT_OPTIONS
    ) -> tuple[Encoding, list[Item]]:
        """All of a request's steps at once (warm-up, tests, benchmarks)."""
        encoding = Encoding(len(documents))
        items: list[Item] = []
        for step in self.steps(query, documents, options, encoding):
            if not isinstance(step, Cost):
                items.extend(step)
        return encoding, items

    def score(self, query: str, documents: Sequence[str], options: EncodeOptions = DEFAULT_OPTIONS) -> list[float]:
        """Score one request synchronously (warm-up, tests, the raw benchmark ceiling)."""
        encoding, items = self.encode(query, documents, options)
        return self.finish(encoding, self.forward(items))


def model_window(tokenizer: Any, config: Any) -> int:
    """The longest input the model takes: its position table (RoBERTa-style models reserve
    pad_token_id + 1 positions) and the tokenizer's own limit, whichever is smaller."""
    positions = int(getattr(config, "max_position_embeddings", 0) or 0)
    if positions and getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        positions -= int(getattr(config, "pad_token_id", 1) or 0) + 1
    limits = [n for n in (positions, int(getattr(tokenizer, "model_max_length", 0) or 0)) if 0 < n < 1_000_000]
    return min(limits) if limits else 512


def special_count(tokenizer: Any, *, pair: bool) -> int:
    """How many special tokens the tokenizer's template adds to a text (or a pair)."""
    bare = len(tokenizer("a", add_special_tokens=False)["input_ids"])
    if pair:
        both = len(tokenizer("a", "a")["input_ids"])
        return both - 2 * bare
    return len(tokenizer("a")["input_ids"]) - bare


# A tokenizer's vocabulary, in one of the forms transformers reads (fast; SentencePiece for
# XLM-R, Llama/Gemma, T5; WordPiece; byte-level BPE). Without one, transformers builds an empty
# tokenizer that reads every word as <unk>, and the model would serve meaningless scores.
VOCABULARY_FILES = ("tokenizer.json", "sentencepiece.bpe.model", "tokenizer.model", "spiece.model", "vocab.txt",
                    "vocab.json")  # fmt: skip


def check_model_dir(path: str) -> None:
    directory = Path(path)
    if not directory.is_dir():
        raise ModelLoadError(f"model path {path!r} is not a directory (is the NAS mounted?)")
    if not (directory / "config.json").is_file():
        raise ModelLoadError(
            f"model path {path!r} has no config.json: point it at a Hugging Face model directory "
            "such as BAAI/bge-reranker-v2-m3"
        )
    if not any((directory / name).is_file() for name in VOCABULARY_FILES):
        raise ModelLoadError(
            f"model path {path!r} has no tokenizer vocabulary (one of {', '.join(VOCABULARY_FILES)}): "
            "copy the model's tokenizer files too"
        )


def pad_batch(items: Sequence[Item], pad_id: int, device: str, *, left: bool = False) -> dict[str, Any]:
    """Padded tensors of a batch's features (`input_ids` pad with `pad_id`, the rest with 0), on
    the right unless the tokenizer pads on the left."""
    import numpy as np
    import torch

    width = max(len(item.features["input_ids"]) for item in items)
    batch: dict[str, Any] = {}
    for key in items[0].features:
        if key.startswith("_"):  # a marker for the model's own use (e.g. which outputs an item wants)
            continue
        array = np.full((len(items), width), pad_id if key == "input_ids" else 0, dtype=np.int64)
        for row, item in enumerate(items):
            values = item.features[key]
            if left:
                array[row, width - len(values) :] = values
            else:
                array[row, : len(values)] = values
        batch[key] = torch.from_numpy(array).to(device)
    return batch
