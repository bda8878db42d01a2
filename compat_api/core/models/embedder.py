"""The embedding family: a sentence-embedding model (all-MiniLM-L6-v2, bge-m3) pooled into vectors.

Used as a reranker it scores a document by the cosine similarity of its L2-normalized vector
with the query's (mapped to [0, 1] by the rerank use case). Pooling is mean over the attention
mask, as all-MiniLM-L6-v2's sentence-transformers configuration says.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from compat_api.core.errors import ModelLoadError
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
    document_slices,
    fit_document,
    model_window,
    pad_batch,
)
from compat_api.core.models.runtime import Runtime, prepare
from compat_api.core.ranking import Normalization

log = logging.getLogger(__name__)


class EmbeddingScorer(Scorer):
    """An embedding model: mean-pooled, L2-normalized embeddings compared by cosine similarity."""

    def __init__(self, path: str, *, name: str, max_length: int, runtime: Runtime | None = None) -> None:
        runtime = runtime or Runtime()
        started = time.perf_counter()
        log.info("loading embedding model from %s (%s)", path, runtime)
        check_model_dir(path)
        try:
            from transformers import AutoModel, AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=runtime.trust_remote_code)
            loaded = AutoModel.from_pretrained(path, trust_remote_code=runtime.trust_remote_code)
        except LOAD_ERRORS as exc:
            raise ModelLoadError(f"cannot load embedding model from {path}: {exc}") from exc
        self._device = runtime.device
        self._max_length = min(max_length, _embedding_window(path, loaded), model_window(self.tokenizer, loaded.config))
        bare = self.tokenizer("a", add_special_tokens=False)["input_ids"]
        full = self.tokenizer("a")["input_ids"]
        at = next(i for i in range(len(full)) if full[i : i + len(bare)] == bare)
        self._prefix, self._suffix = list(full[:at]), list(full[at + len(bare) :])
        self._type_ids = "token_type_ids" in getattr(self.tokenizer, "model_input_names", [])
        self._pad_id = int(self.tokenizer.pad_token_id or 0)
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
            extra={"architecture": type(loaded).__name__},
        )

    def _probe(self) -> dict[str, Any]:
        items = self._texts(["what is function compute", "a"])
        return pad_batch(items, self._pad_id, "cpu")

    def _texts(self, texts: list[str]) -> list[Item]:
        enc = self.tokenizer(texts, truncation=True, max_length=self._max_length, padding=False)
        keys = list(enc.keys())
        return [Item(len(enc["input_ids"][i]), {k: enc[k][i] for k in keys}) for i in range(len(texts))]

    def _piece(self, ids: list[int]) -> Item:
        full = self._prefix + ids + self._suffix
        features: dict[str, Any] = {"input_ids": full, "attention_mask": [1] * len(full)}
        if self._type_ids:
            features["token_type_ids"] = [0] * len(full)
        return Item(len(full), features)

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

    def forward(self, items: Sequence[Item]) -> list[Any]:
        import torch

        with torch.inference_mode():
            inputs = pad_batch(items, self._pad_id, self._device)
            hidden = self.model(**inputs).last_hidden_state
            mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            unit = torch.nn.functional.normalize(pooled.float(), p=2, dim=1)
            return list(unit.cpu().unbind(0))

    def finish(self, encoding: Encoding, outputs: Sequence[Any]) -> list[float]:
        query, pieces = outputs[0], outputs[encoding.query_items :]
        return best_per_document(encoding, [float((query * piece).sum()) for piece in pieces])


def _embedding_window(path: str, model: Any) -> int:
    """The sequence length the embedding model was trained for (sentence-transformers config)."""
    window = int(getattr(model.config, "max_position_embeddings", 512) or 512)
    st_config = Path(path) / "sentence_bert_config.json"
    if st_config.is_file():
        trained = json.loads(st_config.read_text()).get("max_seq_length")
        if isinstance(trained, int) and trained > 0:
            window = min(window, trained)
    return window
