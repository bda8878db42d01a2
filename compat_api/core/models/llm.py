"""The LLM reranker family: decoder-only rerankers scored by FlagEmbedding's own `compute_score`.

bge-reranker-v2-gemma (`llm`), -minicpm-layerwise (`llm-layerwise`) and
-v2.5-gemma2-lightweight (`llm-lightweight`): FlagEmbedding's prompt, and the logit of "Yes".
The engine still batches across requests and bounds the work. The layer-wise and lightweight
classes need the model directory's own Python code (`trust_remote_code`), which only runs when
the operator allows it (RERANK_TRUST_REMOTE_CODE).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
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
)
from compat_api.core.models.runtime import Runtime, own_memory
from compat_api.core.ranking import Normalization

log = logging.getLogger(__name__)

FLAG_LLM_CLASSES = {
    "llm": "FlagLLMReranker",
    "llm-layerwise": "LayerWiseFlagLLMReranker",
    "llm-lightweight": "LightWeightFlagLLMReranker",
}
NEEDS_REMOTE_CODE = ("llm-layerwise", "llm-lightweight")
# The prompt each class appends when none is configured (FlagEmbedding's compute_score defaults).
DEFAULT_PROMPTS = {
    "llm": "Given a query A and a passage B, determine whether the passage contains an answer to the query by "
    "providing a prediction of either 'Yes' or 'No'.",
    "llm-lightweight": "Predict whether passage B contains an answer to query A.",
}
DEFAULT_PROMPTS["llm-layerwise"] = DEFAULT_PROMPTS["llm"]


class FlagLLMScorer(Scorer):
    """A decoder-only reranker served through FlagEmbedding's LLM reranker classes."""

    def __init__(self, path: str, *, name: str, kind: str, max_length: int, runtime: Runtime | None = None,
                 cutoff_layer: int | None = None) -> None:  # fmt: skip
        runtime = runtime or Runtime()
        started = time.perf_counter()
        class_name = FLAG_LLM_CLASSES[kind]
        log.info("loading %s reranker from %s with FlagEmbedding's %s (%s)", kind, path, class_name, runtime)
        check_model_dir(path)
        if kind in NEEDS_REMOTE_CODE and not runtime.trust_remote_code:
            raise ModelLoadError(
                f"{path} is a {kind} reranker, whose modelling code ships inside the model directory; it runs "
                "only with RERANK_TRUST_REMOTE_CODE=true (set it only for directories you trust)"
            )
        try:
            import FlagEmbedding

            reranker_class = getattr(FlagEmbedding, class_name)
            self.reranker = reranker_class(path, use_fp16=runtime.fp16, devices=[runtime.device],
                                           max_length=max_length, trust_remote_code=runtime.trust_remote_code,
                                           normalize=False)  # fmt: skip
        except LOAD_ERRORS as exc:
            raise ModelLoadError(f"cannot load {kind} reranker model from {path}: {exc}") from exc
        if runtime.device == "cpu":
            own_memory(self.reranker.model)
        self.tokenizer = self.reranker.tokenizer
        self._max_length = max_length
        self._frame(kind)
        self._extra: dict[str, Any] = {"cutoff_layers": [cutoff_layer]} if cutoff_layer is not None else {}
        model = self.reranker.model
        self.info = ModelInfo(
            name=name,
            kind=kind,
            path=path,
            device=runtime.device,
            dtype="float16" if runtime.fp16 and runtime.device != "cpu" else "float32",
            max_length=max_length,
            normalization=Normalization.SIGMOID,
            backend="flagembedding",
            load_seconds=time.perf_counter() - started,
            extra={"architecture": type(model).__name__},
        )

    def _frame(self, kind: str) -> None:
        """The tokens FlagEmbedding puts around a pair, as its compute_score builds it: `[bos] query
        \n passage`, cut (passage only) to max_length + len(\n) + len(prompt), then `\n prompt`."""
        tok = self.tokenizer
        prompt = getattr(self.reranker, "prompt", None) or DEFAULT_PROMPTS[kind]
        self._sep = len(tok("\n", add_special_tokens=False)["input_ids"])
        self._prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
        bos, pad = tok.bos_token_id, tok.pad_token_id
        # The base class prepends bos unless it is the pad token; the layer-wise and lightweight ones always.
        self._bos = 1 if bos is not None and (kind != "llm" or bos != pad) else 0

    def steps(self, query: str, documents: Sequence[str], options: EncodeOptions, encoding: Encoding) -> Iterator[Step]:
        """Pairs as FlagEmbedding scores them: the query cut to 3/4 of the window, each document to
        what is left of the window plus the prompt (FlagEmbedding's passage room, at most the
        window); a longer document is chunked or cut per `options`. Each item is billed every
        token the model reads: bos, query, separators, its piece and the prompt."""
        tok = self.tokenizer
        q_len = min(len(tok(query, add_special_tokens=False)["input_ids"]), self._max_length * 3 // 4)
        encode_max = self._max_length + self._sep + self._prompt
        room = min(self._max_length, encode_max - self._bos - q_len - self._sep)
        frame = self._bos + q_len + 2 * self._sep + self._prompt
        for start, stop in document_slices(documents):
            texts = list(documents[start:stop])
            full = tok(texts, add_special_tokens=False, verbose=False)["input_ids"]
            pieces = [fit_document(ids, room, options) for ids in full]
            owners = [doc for doc, parts in enumerate(pieces) for _ in parts]
            flat = [ids for parts in pieces for ids in parts]
            yield Cost(len(flat), sum(frame + len(ids) for ids in flat))
            # A document that fits is sent as written; only cut or chunked ones are decoded back to text.
            unchanged = [len(parts) == 1 and len(full[doc]) <= room for doc, parts in enumerate(pieces)]
            for i in range(0, len(flat), ITEMS_PER_STEP):
                part = range(i, min(len(flat), i + ITEMS_PER_STEP))
                cut_pieces = [j for j in part if not unchanged[owners[j]]]
                decoded = tok.batch_decode([flat[j] for j in cut_pieces], skip_special_tokens=False,
                                           clean_up_tokenization_spaces=False) if cut_pieces else []  # fmt: skip
                texts_of = dict(zip(cut_pieces, decoded, strict=True))
                items = [
                    Item(frame + len(flat[j]),
                         {"pair": (query, texts[owners[j]] if unchanged[owners[j]] else texts_of[j])})
                    for j in part
                ]  # fmt: skip
                encoding.bill([start + owners[j] for j in part], items)
                yield items

    def forward(self, items: Sequence[Item]) -> list[Any]:
        pairs = [list(item.features["pair"]) for item in items]
        scores = self.reranker.compute_score(pairs, batch_size=len(pairs), normalize=False, **self._extra)
        return [float(s) for s in (scores if isinstance(scores, list) else [scores])]

    def finish(self, encoding: Encoding, outputs: Sequence[Any]) -> list[float]:
        return best_per_document(encoding, [float(x) for x in outputs])
