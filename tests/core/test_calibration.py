"""The static int8 calibration set: real text through the model's tokenizer, pairs for a
cross-encoder and single texts for an embedder, long inputs cut, and never the labelled set
that measures accuracy."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from bench.labelled import LABELLED
from compat_api.core.models.calibration import MAX_TOKENS, PAIRS, calibration_inputs
from compat_api.core.registry import bundled_model_path


def test_a_cross_encoder_is_calibrated_on_pairs_of_many_lengths(tiny_reranker_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_reranker_dir))
    samples = calibration_inputs(tokenizer, pairs=True, names={"input_ids", "attention_mask"})
    assert len(samples) == 2 * len(PAIRS)
    assert all(set(s) == {"input_ids", "attention_mask"} for s in samples)
    lengths = [s["input_ids"].shape[1] for s in samples]
    assert all(s["input_ids"].shape[0] == 1 and s["input_ids"].dtype == "int64" for s in samples)
    assert min(lengths) < 64 and max(lengths) == MAX_TOKENS  # a sentence to a passage cut at the limit
    separators = [int((s["input_ids"] == tokenizer.sep_token_id).sum()) for s in samples]
    assert min(separators) >= 2  # query and passage in one input


def test_an_embedder_is_calibrated_on_texts_alone() -> None:
    tokenizer = AutoTokenizer.from_pretrained(bundled_model_path())
    names = {"input_ids", "attention_mask", "token_type_ids"}
    samples = calibration_inputs(tokenizer, pairs=False, names=names)
    assert len(samples) == 3 * len(PAIRS)
    assert all(int((s["input_ids"] == tokenizer.sep_token_id).sum()) == 1 for s in samples)
    assert all(int(s["token_type_ids"].max()) == 0 for s in samples)


def test_the_calibration_set_is_not_the_labelled_set() -> None:
    calibration = {text for pair in PAIRS for text in pair}
    labelled = {text for query, docs, _ in LABELLED for text in [query, *docs]}
    assert not calibration & labelled
