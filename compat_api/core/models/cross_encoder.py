"""The cross-encoder family: sequence-classification rerankers served as FlagEmbedding's FlagReranker serves them.

The model and tokenizer load as `FlagReranker.__init__` loads them (AutoTokenizer and
AutoModelForSequenceClassification from the directory), without importing FlagEmbedding itself
on the serving path: its package import pulls in its fine-tuning stack (4.6 s and 220 MB here).
Tokenization reproduces `FlagReranker.compute_score` (query cut to 3/4 of max_length, document
to max_length, then the pair template with `only_second` truncation), batched instead of pair
by pair, so scores equal FlagEmbedding's for every document that fits (the tests compare with
FlagEmbedding itself). A longer document is truncated or split into overlapping chunks (its
score is its best chunk's), as the request's `EncodeOptions` say.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
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
    cut,
    document_slices,
    fit_document,
    model_window,
    pad_batch,
    special_count,
)
from compat_api.core.models.runtime import Runtime, prepare, trim_heap
from compat_api.core.ranking import Normalization

log = logging.getLogger(__name__)

PROBE_PAIRS = (("what is function compute", "function compute is a serverless computing service"), ("a", ""))


class CrossEncoderScorer(Scorer):
    """A sequence-classification reranker (bge-reranker-base/large/v2-m3): one logit per pair."""

    def __init__(self, path: str, *, name: str, max_length: int, runtime: Runtime | None = None) -> None:
        runtime = runtime or Runtime()
        started = time.perf_counter()
        log.info("loading cross-encoder reranker from %s (%s)", path, runtime)
        check_model_dir(path)
        try:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            trust = runtime.trust_remote_code
            self.tokenizer: Any = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
            model, loading = AutoModelForSequenceClassification.from_pretrained(
                path, trust_remote_code=trust, output_loading_info=True
            )
        except LOAD_ERRORS as exc:
            raise ModelLoadError(f"cannot load reranker model from {path}: {exc}") from exc
        missing = sorted(loading.get("missing_keys") or ()) + sorted(loading.get("mismatched_keys") or ())
        if missing:  # transformers fills them with random numbers: scores would mean nothing
            raise ModelLoadError(
                f"{path}'s weights lack {len(missing)} of the model's tensors ({', '.join(map(str, missing[:4]))}"
                f"{', ...' if len(missing) > 4 else ''}): is this a reranker checkpoint, copied whole?"
            )
        config = model.config
        labels = int(getattr(config, "num_labels", 1) or 1)
        if labels != 1:
            raise ModelLoadError(
                f"{path} has a {labels}-label classification head; a reranker scores a pair with one logit "
                "(is this a reranker directory?)"
            )
        self._device = runtime.device
        max_length = min(max_length, model_window(self.tokenizer, config))
        self._max_length = max_length
        self._query_max_length = max_length * 3 // 4
        # transformers 4 tokenizers keep the id-level API that FlagEmbedding prefers.
        self._legacy_pairs = callable(getattr(self.tokenizer, "prepare_for_model", None))
        # The Rust tokenizer behind a fast tokenizer, driven directly on the hot path.
        self._backend = None if self._legacy_pairs else getattr(self.tokenizer, "backend_tokenizer", None)
        self._template: list[Slot | tuple[int, int]] | None = None  # the pair layout, read on first use
        self._truncation_side = getattr(self.tokenizer, "truncation_side", "right")
        self._truncate_left = self._truncation_side == "left"
        self._type_ids = "token_type_ids" in getattr(self.tokenizer, "model_input_names", [])
        self._pair_specials = special_count(self.tokenizer, pair=True)
        self._pad_id = int(self.tokenizer.pad_token_id or 0)
        self._pad_left = getattr(self.tokenizer, "padding_side", "right") == "left"
        if self._backend is not None:
            # Everything above came from the transformers wrapper; the hot path drives the Rust
            # tokenizer directly. Dropping the wrapper gives back ~100 MB for a 250k vocabulary
            # before the weights are read in (the load's peak).
            self.tokenizer = None
            trim_heap()
        prepared = prepare(model, path, "logits", runtime, self._probe)
        self.model = prepared.module
        self.info = ModelInfo(
            name=name,
            kind="cross-encoder",
            path=path,
            device=runtime.device,
            dtype=prepared.dtype,
            max_length=max_length,
            normalization=Normalization.SIGMOID,
            backend=runtime.backend,
            load_seconds=time.perf_counter() - started,
            extra={"architecture": type(model).__name__},
        )

    def _probe(self) -> dict[str, Any]:
        items: list[Item] = []
        for query, doc in PROBE_PAIRS:
            items.extend(self.encode(query, [doc])[1])
        return pad_batch(items, self._pad_id, "cpu", left=self._pad_left)

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

    def steps(self, query: str, documents: Sequence[str], options: EncodeOptions, encoding: Encoding) -> Iterator[Step]:
        q_ids = self._ids([query], self._query_max_length)[0]
        room = self._max_length - len(q_ids) - self._pair_specials
        q_trip: int | None = None
        for start, stop in document_slices(documents):
            texts = list(documents[start:stop])
            cut_here: list[bool] = []  # per piece: a cut the server made (chunk, truncation, max_doc_tokens)
            if options.is_flag_default:
                pieces = [[ids] for ids in self._ids(texts, self._max_length)]
            else:
                pieces = []
                for ids in self._ids(texts, None):
                    whole = False
                    if self._band(ids, room, options):
                        if q_trip is None:  # the query's round trip once per request
                            q_trip = self._round_trip_len(q_ids)
                        whole = q_trip + self._round_trip_len(ids) + self._pair_specials <= self._max_length
                    parts = [ids] if whole else fit_document(ids, room, options)
                    pieces.append(parts)
                    cut_here += [not (len(parts) == 1 and parts[0] == ids)] * len(parts)
            owners = [start + doc for doc, parts in enumerate(pieces) for _ in parts]
            flat = [ids for parts in pieces for ids in parts]
            cut_here = cut_here or [False] * len(flat)
            lengths = [min(self._max_length, len(q_ids) + len(ids) + self._pair_specials) for ids in flat]
            yield Cost(len(flat), sum(lengths))
            for i in range(0, len(flat), ITEMS_PER_STEP):
                features = self._pieces(q_ids, flat[i : i + ITEMS_PER_STEP], cut_here[i : i + ITEMS_PER_STEP])
                items = [Item(len(f["input_ids"]), f) for f in features]
                encoding.bill(owners[i : i + ITEMS_PER_STEP], items)
                yield items

    def _band(self, ids: list[int], room: int, options: EncodeOptions) -> bool:
        """Whether a document longer than the room beside the query may still be scored whole by
        FlagEmbedding: under transformers 5 its pairs go ids -> text -> ids, a round trip that can
        shorten a text the vocabulary lacks characters of (`_round_trip_len` decides). A document
        the request caps, with `max_doc_tokens`, is cut as asked."""
        capped = options.max_doc_tokens is not None and len(ids) > options.max_doc_tokens
        return not (len(ids) <= room or capped or self._legacy_pairs or len(ids) > self._max_length)

    def _round_trip_len(self, token_ids: list[int]) -> int:
        """How many ids `token_ids` become once decoded to text and encoded again."""
        backend, tok = self._backend, self.tokenizer
        if backend is not None:
            backend.no_truncation()
            return len(backend.encode(backend.decode(token_ids, skip_special_tokens=False),
                                      add_special_tokens=False).ids)  # fmt: skip
        text = tok.decode(token_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        return len(tok(text, add_special_tokens=False, verbose=False)["input_ids"])

    def _pieces(self, q_ids: list[int], d_ids: list[list[int]], cut_here: list[bool]) -> list[dict[str, list[int]]]:
        """Each pair's features: a whole document through `_pairs` (FlagEmbedding's own path), a
        piece the server cut straight from its ids. Decoded, a piece that starts inside a word
        reads differently (WordPiece's `##ly` comes back as `#`, `#`, `ly`), grows past the
        window, and loses the end it was cut to keep."""
        if not any(cut_here) or self._backend is None:
            return self._pairs(q_ids, d_ids)
        whole = iter(self._pairs(q_ids, [d for d, cut in zip(d_ids, cut_here, strict=True) if not cut]))
        return [self._pair_from_ids(q_ids, d) if cut else next(whole) for d, cut in zip(d_ids, cut_here, strict=True)]

    def _pair_from_ids(self, q_ids: list[int], d_ids: list[int]) -> dict[str, list[int]]:
        """The pair's features from token ids, laid out as the tokenizer's template lays them."""
        if self._template is None:
            self._template = pair_template(self._backend)
        ids: list[int] = []
        types: list[int] = []
        for slot in self._template:
            if isinstance(slot, Slot):
                part = q_ids if slot.sequence == 0 else d_ids
                ids += part
                types += [slot.type_id] * len(part)
            else:
                ids.append(slot[0])
                types.append(slot[1])
        row = {"input_ids": ids, "attention_mask": [1] * len(ids)}
        if self._type_ids:
            row["token_type_ids"] = types
        return row

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
            inputs = pad_batch(items, self._pad_id, self._device, left=self._pad_left)
            logits = self.model(**inputs, return_dict=True).logits.view(-1).float()
            return [float(x) for x in logits.cpu().tolist()]

    def finish(self, encoding: Encoding, outputs: Sequence[Any]) -> list[float]:
        return best_per_document(encoding, [float(x) for x in outputs])


@dataclass(frozen=True)
class Slot:
    """Where one of a pair's two sequences goes in the tokenizer's template, and its type id."""

    sequence: int
    type_id: int


def pair_template(backend: Any) -> list[Slot | tuple[int, int]]:
    """The tokenizer's pair layout: its special tokens as (id, type id), and a Slot for each
    sequence (read off the encoding of a sample pair)."""
    backend.no_truncation()
    backend.no_padding()
    sample = backend.encode("a b", "c d", add_special_tokens=True)
    layout: list[Slot | tuple[int, int]] = []
    for token, type_id, sequence in zip(sample.ids, sample.type_ids, sample.sequence_ids, strict=True):
        if sequence is None:
            layout.append((token, type_id))
        elif not layout or layout[-1] != Slot(sequence, type_id):
            layout.append(Slot(sequence, type_id))
    return layout
