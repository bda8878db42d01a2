"""The embedding family: a sentence-embedding model (bge-m3, bge-*-v1.5, all-MiniLM-L6-v2) pooled into vectors.

This is the one place where a vector is pooled. The pooling is the model's own, decided as
FlagEmbedding decides it: a sentence-transformers directory says it in `modules.json` and
`1_Pooling/config.json` (mean for all-MiniLM-L6-v2, CLS for bge-m3); a plain directory gets
FlagEmbedding's default, CLS (every bge embedder). The model is loaded as FlagEmbedding's
`FlagModel` loads it (`AutoModel.from_pretrained`, fp32 on the CPU), and each text is tokenized
as `FlagModel.encode` tokenizes it (truncated to the window), so vectors equal `encode`'s; the
engine batches texts of different requests together instead of `encode`'s own loop.

The same vectors serve two use cases: embeddings (core/embed.py normalizes and cuts them) and
reranking by cosine similarity (`steps`/`finish` below), for a server whose only model embeds.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from compat_api.core.errors import LimitExceeded, ModelFailure, ModelLoadError
from compat_api.core.models.base import (
    ITEMS_PER_STEP,
    LOAD_ERRORS,
    Cost,
    EncodeOptions,
    Encoding,
    Item,
    ModelInfo,
    Scorer,
    Step,
    best_per_document,
    check_model_dir,
    cut,
    document_slices,
    fit_document,
    model_window,
    pad_batch,
)
from compat_api.core.models.runtime import Runtime, prepare
from compat_api.core.ranking import Normalization

log = logging.getLogger(__name__)

Pooling = Literal["cls", "mean"]
# What an item asks of the forward besides its pooled vector (the `_outputs` feature):
# "m3": bge-m3's lexical weights and multi-vector (ColBERT) outputs; "tokens": every token's vector.
Outputs = Literal["m3", "tokens"]
# Where a text longer than the window is cut: its end (FlagEmbedding's way), its start, or not at all (413).
Truncate = Literal["end", "start", "none"]


def detect_pooling(path: str | Path) -> Pooling:
    """The model's pooling: its sentence-transformers Pooling module if it has one, else CLS."""
    directory = Path(path)
    modules_file = directory / "modules.json"
    if not modules_file.is_file():
        return "cls"
    try:
        modules = json.loads(modules_file.read_text())
        pooling_dir = next((m.get("path", "") for m in modules if str(m.get("type", "")).endswith(".Pooling")), None)
        if pooling_dir is None:
            return "cls"
        config = json.loads((directory / pooling_dir / "config.json").read_text())
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        raise ModelLoadError(f"cannot read the pooling configuration of {path}: {exc}") from exc
    modes = sorted(key for key, on in config.items() if key.startswith("pooling_mode_") and on is True)
    if modes == ["pooling_mode_cls_token"]:
        return "cls"
    if modes == ["pooling_mode_mean_tokens"]:
        return "mean"
    raise ModelLoadError(
        f"{path} pools with {modes or 'nothing'}; served poolings are CLS and mean (those of FlagEmbedding's FlagModel)"
    )


def pool(hidden: Any, mask: Any, method: Pooling) -> Any:
    """FlagEmbedding's pooling of a batch's last hidden state, in fp32."""
    hidden = hidden.float()
    if method == "cls":
        return hidden[:, 0]
    weights = mask.unsqueeze(-1).float()
    return (hidden * weights).sum(dim=1) / mask.sum(dim=1, keepdim=True).float()


class Embedder(Scorer):
    """An embedding model: one pooled fp32 vector per text; cosine similarity when it reranks."""

    def __init__(self, path: str, *, name: str, max_length: int, runtime: Runtime | None = None) -> None:
        runtime = runtime or Runtime()
        started = time.perf_counter()
        log.info("loading embedding model from %s (%s)", path, runtime)
        check_model_dir(path)
        self.pooling = detect_pooling(path)
        try:
            from transformers import AutoModel, AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=runtime.trust_remote_code)
            loaded = AutoModel.from_pretrained(path, trust_remote_code=runtime.trust_remote_code)
        except LOAD_ERRORS as exc:
            raise ModelLoadError(f"cannot load embedding model from {path}: {exc}") from exc
        self._device = runtime.device
        self._max_length = min(max_length, _embedding_window(path, loaded), model_window(self.tokenizer, loaded.config))
        self.dimensions = int(getattr(loaded.config, "hidden_size", 0) or 0)
        bare = self.tokenizer("a", add_special_tokens=False)["input_ids"]
        full = self.tokenizer("a")["input_ids"]
        at = next(i for i in range(len(full)) if full[i : i + len(bare)] == bare)
        self._prefix, self._suffix = list(full[:at]), list(full[at + len(bare) :])
        self._type_ids = "token_type_ids" in getattr(self.tokenizer, "model_input_names", [])
        self._pad_id = int(self.tokenizer.pad_token_id or 0)
        self.heads = _m3_heads(path, loaded.config.hidden_size)
        specials = (self.tokenizer.cls_token_id, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id,
                    self.tokenizer.unk_token_id)  # fmt: skip
        self._unused = {int(t) for t in specials if t is not None}  # never lexical weights (as BGEM3FlagModel)
        prepared = prepare(loaded, path, "last_hidden_state", runtime, self._probe)
        self.model = prepared.module
        self.info = ModelInfo(
            name=name,
            kind="embedding",
            path=path,
            device=runtime.device,
            dtype=prepared.dtype,
            max_length=self._max_length,
            normalization=Normalization.COSINE,
            backend=runtime.backend,
            load_seconds=time.perf_counter() - started,
            extra={
                "architecture": type(loaded).__name__,
                "pooling": self.pooling,
                "dimensions": self.dimensions,
                "sparse": self.heads is not None,
                "multi_vector": self.heads is not None,
            },
        )

    def _probe(self) -> dict[str, Any]:
        """A batch with no padding: hidden states at padded positions are never used (pooling
        masks them) and a lossy export may differ there by any amount."""
        items = self._texts(["what is function compute"] * 2)
        return pad_batch(items, self._pad_id, "cpu")

    def _limit(self, max_tokens: int | None) -> int:
        """Tokens an input may take, special tokens included: the window, or `max_tokens` within it,
        but never fewer than the special tokens and one of the text's (below that a tokenizer
        refuses to truncate and would hand back the whole text)."""
        if max_tokens is None:
            return self._max_length
        return max(len(self._prefix) + len(self._suffix) + 1, min(self._max_length, max_tokens))

    def _texts(self, texts: list[str], max_tokens: int | None = None) -> list[Item]:
        limit = self._limit(max_tokens)
        enc = self.tokenizer(texts, truncation=True, max_length=limit, padding=False)
        keys = list(enc.keys())
        return [Item(len(enc["input_ids"][i]), {k: enc[k][i] for k in keys}) for i in range(len(texts))]

    def _piece(self, ids: list[int]) -> Item:
        full = self._prefix + ids + self._suffix
        features: dict[str, Any] = {"input_ids": full, "attention_mask": [1] * len(full)}
        if self._type_ids:
            features["token_type_ids"] = [0] * len(full)
        return Item(len(full), features)

    @property
    def vocabulary_size(self) -> int:
        return len(self.tokenizer)

    def token_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """A text's token ids (no special tokens, no truncation) and the span (start, stop) each covers."""
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return list(enc["input_ids"]), [(int(start), int(stop)) for start, stop in enc["offset_mapping"]]

    def frame(self) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
        """The special tokens the tokenizer puts before and after a text, as (id, token string)."""

        def named(ids: list[int]) -> list[tuple[int, str]]:
            return list(zip(ids, [str(t) for t in self.tokenizer.convert_ids_to_tokens(ids)], strict=True))

        return named(self._prefix), named(self._suffix)

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    # ------------------------------------------------------------------ embeddings

    def embed_steps(self, texts: Sequence[str], encoding: Encoding, *, max_tokens: int | None = None,
                    outputs: Outputs | None = None, truncate: Truncate = "end",
                    field: str = "texts") -> Iterator[Step]:  # fmt: skip
        """Tokenize texts for the engine in bounded steps; each text is one item, truncated to the
        window (or to `max_tokens`, special tokens included): at its end, at its `start`, or, with
        `none`, a text that does not fit is refused (413, naming `field[i]`). With `outputs`, each
        item's output is a dict with its pooled vector under "dense" and the asked outputs beside it."""
        self._check_outputs(outputs)
        for start, stop in document_slices(texts):
            if truncate == "end":
                items = self._texts(list(texts[start:stop]), max_tokens)
            else:
                items = self._framed(texts, start, stop, max_tokens, truncate, field)
            items = asking(items, outputs)
            yield Cost(len(items), sum(i.length for i in items))
            encoding.bill(range(start, stop), items)
            yield items

    def _check_outputs(self, outputs: Outputs | None) -> None:
        if outputs == "m3" and self.heads is None:
            raise ModelFailure(
                f"model {self.info.name!r} has no sparse and multi-vector heads (sparse_linear.pt, "
                "colbert_linear.pt beside its weights, as bge-m3 has)"
            )

    def _framed(self, texts: Sequence[str], start: int, stop: int, max_tokens: int | None,
                truncate: Truncate, field: str) -> list[Item]:  # fmt: skip
        """Texts tokenized whole, then cut from their start (or refused when they do not fit)."""
        room = self._limit(max_tokens) - len(self._prefix) - len(self._suffix)
        full = self.tokenizer(list(texts[start:stop]), add_special_tokens=False, verbose=False)["input_ids"]
        for offset, ids in enumerate(full):
            if truncate == "none" and len(ids) > room:
                raise LimitExceeded(
                    f"{field}[{start + offset}] has {len(ids)} tokens, more than the {room} the model reads "
                    "(truncate NONE); send it shorter or truncate START or END",
                    field=f"{field}[{start + offset}]",
                )
        return [self._piece(cut(list(ids), room, left=True)) for ids in full]

    def id_steps(self, arrays: Sequence[Sequence[int]], encoding: Encoding, *,
                 outputs: Outputs | None = None) -> Iterator[Step]:  # fmt: skip
        """Inputs already in the model's own token ids (TEI), used as given, cut to the window."""
        self._check_outputs(outputs)
        for start in range(0, len(arrays), ITEMS_PER_STEP):
            items = []
            for ids in arrays[start : start + ITEMS_PER_STEP]:
                kept = list(ids[: self._max_length])
                features: dict[str, Any] = {"input_ids": kept, "attention_mask": [1] * len(kept)}
                if self._type_ids:
                    features["token_type_ids"] = [0] * len(kept)
                items.append(Item(len(kept), features))
            items = asking(items, outputs)
            yield Cost(len(items), sum(i.length for i in items))
            encoding.bill(range(start, start + len(items)), items)
            yield items

    def forward(self, items: Sequence[Item]) -> list[Any]:
        """One pooled fp32 vector (not normalized) per item; a dict for an item that asked for more."""
        import torch

        with torch.inference_mode():
            inputs = pad_batch(items, self._pad_id, self._device)
            hidden = self.model(**inputs).last_hidden_state
            pooled = list(pool(hidden, inputs["attention_mask"], self.pooling).cpu().numpy())
            for row, item in enumerate(items):
                wanted = item.features.get("_outputs")
                if wanted is not None:
                    pooled[row] = {"dense": pooled[row], **self._more(hidden[row, : item.length].float(), item, wanted)}
            return pooled

    def _more(self, hidden: Any, item: Item, wanted: str) -> dict[str, Any]:
        """An item's token vectors ("tokens"), or bge-m3's lexical weights and ColBERT vectors ("m3"),
        computed as BGEM3FlagModel computes them."""
        import torch

        if wanted == "tokens":
            return {"tokens": hidden.cpu().numpy()}
        assert self.heads is not None
        sparse_linear, colbert_linear = self.heads
        weights = torch.relu(sparse_linear(hidden)).squeeze(-1).cpu().numpy()
        lexical: dict[int, float] = {}
        for token, weight in zip(item.features["input_ids"], weights.tolist(), strict=True):
            if token not in self._unused and weight > 0 and weight > lexical.get(token, 0.0):
                lexical[int(token)] = float(weight)
        colbert = torch.nn.functional.normalize(colbert_linear(hidden[1:]), dim=-1)
        return {"sparse": lexical, "colbert": colbert.cpu().numpy()}

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Pooled vectors of texts, synchronously (tests, benchmarks, the raw ceiling)."""
        encoding = Encoding(len(texts))
        items = [item for step in self.embed_steps(texts, encoding) if not isinstance(step, Cost) for item in step]
        return np.stack(self.forward(items))

    # ------------------------------------------------------------------ reranking by cosine

    def steps(self, query: str, documents: Sequence[str], options: EncodeOptions, encoding: Encoding) -> Iterator[Step]:
        [query_item] = self._texts([query])
        encoding.extra_tokens, encoding.query_items = query_item.length, 1
        yield Cost(1, query_item.length)
        yield [query_item]
        room = self._max_length - len(self._prefix) - len(self._suffix)
        for start, stop in document_slices(documents):
            texts = list(documents[start:stop])
            if options.is_flag_default:
                items = self._texts(texts)
                yield Cost(len(items), sum(i.length for i in items))
                encoding.bill(range(start, stop), items)
                yield items
                continue
            full = self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
            pieces = [fit_document(list(ids), room, options) for ids in full]
            owners = [start + doc for doc, parts in enumerate(pieces) for _ in parts]
            flat = [ids for parts in pieces for ids in parts]
            yield Cost(len(flat), sum(len(ids) + len(self._prefix) + len(self._suffix) for ids in flat))
            for i in range(0, len(flat), ITEMS_PER_STEP):
                items = [self._piece(ids) for ids in flat[i : i + ITEMS_PER_STEP]]
                encoding.bill(owners[i : i + ITEMS_PER_STEP], items)
                yield items

    def finish(self, encoding: Encoding, outputs: Sequence[Any]) -> list[float]:
        vectors = np.stack(list(outputs)).astype(np.float32)
        unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), np.float32(1e-12))
        query, pieces = unit[0], unit[encoding.query_items :]
        return best_per_document(encoding, [float(np.dot(query, piece)) for piece in pieces])


def asking(items: list[Item], outputs: Outputs | None) -> list[Item]:
    """Items marked with the outputs they ask for besides their pooled vector (none: as they are)."""
    return items if outputs is None else [Item(i.length, {**i.features, "_outputs": outputs}) for i in items]


def _m3_heads(path: str, hidden_size: int) -> tuple[Any, Any] | None:
    """bge-m3's sparse and ColBERT heads (`sparse_linear.pt`, `colbert_linear.pt`), if the directory has them."""
    directory = Path(path)
    sparse_file, colbert_file = directory / "sparse_linear.pt", directory / "colbert_linear.pt"
    if not (sparse_file.is_file() and colbert_file.is_file()):
        return None
    import torch

    try:
        colbert_state = torch.load(colbert_file, map_location="cpu", weights_only=True)
        sparse = torch.nn.Linear(hidden_size, 1)
        sparse.load_state_dict(torch.load(sparse_file, map_location="cpu", weights_only=True))
        colbert = torch.nn.Linear(hidden_size, int(colbert_state["weight"].shape[0]))
        colbert.load_state_dict(colbert_state)
    except LOAD_ERRORS as exc:
        raise ModelLoadError(f"cannot load bge-m3's heads from {path}: {exc}") from exc
    return sparse.eval(), colbert.eval()


def _embedding_window(path: str, model: Any) -> int:
    """The sequence length the embedding model was trained for (sentence-transformers config)."""
    window = int(getattr(model.config, "max_position_embeddings", 512) or 512)
    st_config = Path(path) / "sentence_bert_config.json"
    if st_config.is_file():
        trained = json.loads(st_config.read_text()).get("max_seq_length")
        if isinstance(trained, int) and trained > 0:
            window = min(window, trained)
    return window
