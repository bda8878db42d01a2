"""Long documents: truncation, chunking, caps, and a buried relevant passage found by chunking."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest

from compat_api.core.models.base import EncodeOptions, cut, fit_document
from compat_api.core.models.cross_encoder import CrossEncoderScorer
from compat_api.core.models.embedder import Embedder
from compat_api.core.ranking import Normalization, normalize
from compat_api.core.registry import bundled_model_path

IDS = list(range(100))


def test_a_document_that_fits_is_kept_whole() -> None:
    assert fit_document(IDS[:10], 10, EncodeOptions(mode="chunk", max_chunks=5)) == [IDS[:10]]
    assert fit_document(IDS[:10], 10, EncodeOptions()) == [IDS[:10]]


def test_truncation_keeps_the_requested_end() -> None:
    assert fit_document(IDS, 10, EncodeOptions()) == [IDS[:10]]
    assert fit_document(IDS, 10, EncodeOptions(truncate_left=True)) == [IDS[-10:]]
    assert cut(IDS, 3, left=True) == [97, 98, 99]


def test_max_doc_tokens_caps_before_fitting() -> None:
    assert fit_document(IDS, 50, EncodeOptions(max_doc_tokens=7)) == [IDS[:7]]


def test_chunks_overlap_cover_the_document_and_respect_the_cap() -> None:
    chunks = fit_document(IDS, 30, EncodeOptions(mode="chunk", max_chunks=10, overlap=10))
    assert all(len(c) <= 30 for c in chunks)
    assert chunks[0][0] == 0 and chunks[-1][-1] == 99
    for a, b in pairwise(chunks):
        assert a[-10:] == b[:10], "consecutive chunks share `overlap` tokens"
    capped = fit_document(IDS, 30, EncodeOptions(mode="chunk", max_chunks=2, overlap=10))
    assert len(capped) == 2 and capped[1][-1] < 99


def test_overlap_never_stalls_the_chunker() -> None:
    chunks = fit_document(IDS, 4, EncodeOptions(mode="chunk", max_chunks=1000, overlap=1000))
    assert chunks[-1][-1] == 99 and len(chunks) < 60


FILLER = (
    "To make bread you mix flour, water, salt and yeast, knead the dough for ten minutes, let it rise "
    "in a warm place for an hour, shape the loaf, and bake it in a hot oven until the crust is brown. "
)
QUERY = "What is the capital city of France?"
BURIED = FILLER * 12 + "Paris is the capital and largest city of France."
OTHERS = ["Berlin is a large city in Germany with many museums.", "The Amazon is a long river in South America."]


@pytest.fixture(scope="module")
def bundled() -> Embedder:
    return Embedder(bundled_model_path(), name="bundled", max_length=512)


def test_chunking_finds_a_relevant_passage_buried_at_the_end(bundled: Embedder) -> None:
    docs = [BURIED, *OTHERS]
    chunked = normalize(bundled.score(QUERY, docs, EncodeOptions(mode="chunk", max_chunks=10, overlap=32)),
                        Normalization.COSINE)  # fmt: skip
    truncated = normalize(bundled.score(QUERY, docs, EncodeOptions()), Normalization.COSINE)
    assert max(range(3), key=lambda i: chunked[i]) == 0, chunked
    assert max(range(3), key=lambda i: truncated[i]) != 0, "truncation alone loses the buried passage"
    encoding, _ = bundled.encode(QUERY, docs, EncodeOptions(mode="chunk", max_chunks=10, overlap=32))
    assert encoding.owners.count(0) > 1 and encoding.owners.count(1) == 1
    assert encoding.doc_tokens[0] > 256


def test_no_length_causes_an_error(bundled: Embedder) -> None:
    huge = "x" * 100_000 + " " + "word " * 50_000
    for options in (EncodeOptions(), EncodeOptions(mode="chunk", max_chunks=3), EncodeOptions(truncate_left=True)):
        assert len(bundled.score(QUERY, [huge, ""], options)) == 2


def test_a_document_flagembedding_scores_whole_is_not_chunked(tiny_reranker_dir: Path) -> None:
    """Under transformers 5 FlagEmbedding builds a pair by decoding the ids to text and encoding
    the pair again; that round trip shortens a query with characters the vocabulary lacks (17 ids
    become 16 here), so a document one token over the raw room is still scored whole."""
    from FlagEmbedding import FlagReranker
    from transformers import AutoTokenizer

    from compat_api.core.models.cross_encoder import CrossEncoderScorer

    window, query = 40, "don't U.S. naïve café"
    scorer = CrossEncoderScorer(str(tiny_reranker_dir), name="t", max_length=window)
    reference = FlagReranker(str(tiny_reranker_dir), use_fp16=False, devices=["cpu"], max_length=window)
    tok = AutoTokenizer.from_pretrained(str(tiny_reranker_dir))
    words = "paris is the capital of france and berlin is the capital of germany".split()  # noqa: SIM905
    docs = [" ".join(words[i % len(words)] for i in range(n)) for n in range(14, 24)]
    expected = reference.compute_score([[query, d] for d in docs], normalize=True)
    encoding, items = scorer.encode(query, docs, EncodeOptions(mode="chunk", max_chunks=10, overlap=0))
    got = normalize(scorer.finish(encoding, scorer.forward(items)), Normalization.SIGMOID)

    def round_trip(text: str) -> int:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        return len(tok(tok.decode(ids, skip_special_tokens=False), add_special_tokens=False)["input_ids"])

    whole = [i for i, d in enumerate(docs) if round_trip(query) + round_trip(d) + 4 <= window]  # <s> q </s></s> d </s>
    raw_room = window - len(tok(query, add_special_tokens=False)["input_ids"]) - 4
    assert any(len(tok(docs[i], add_special_tokens=False)["input_ids"]) > raw_room for i in whole), "the edge is hit"
    assert [got[i] for i in whole] == pytest.approx([expected[i] for i in whole], abs=1e-4)


def test_a_piece_cut_inside_a_word_keeps_the_end_it_was_cut_to_keep(minilm_cross_encoder_dir: Path) -> None:
    """Left truncation keeps a long text's end. A WordPiece window that starts inside a word
    begins with a `##` piece; decoded and encoded again it read `#`, `#`, `...`, grew past the
    window, and the pair's own truncation then dropped the document's last words: two texts
    that differ only in their last word scored the same."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_cross_encoder_dir))
    scorer = CrossEncoderScorer(str(minilm_cross_encoder_dir), name="m", max_length=128)
    left = EncodeOptions(truncate_left=True)
    body = "unbelievably " * 100  # un ##bel ##ie ##va ##bly: most windows start inside a word
    for pad in ("", "ok ", "ok ok "):
        encoding, items = scorer.encode("capital", [body + pad + "paris", body + pad + "cats"], left)
        last = [item.features["input_ids"][-2] for item in items]  # before the final [SEP]
        words = tokenizer.convert_ids_to_tokens(last)
        assert words == ["paris", "cats"], (pad, words)
        assert all(item.length <= 128 for item in items)
        scores = scorer.finish(encoding, scorer.forward(items))
        assert scores[0] != scores[1]


def test_a_piece_cut_on_a_word_start_has_the_features_of_its_text(minilm_cross_encoder_dir: Path) -> None:
    """Built from ids or through the text, a cut that starts on a word is the same pair."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_cross_encoder_dir))
    scorer = CrossEncoderScorer(str(minilm_cross_encoder_dir), name="m", max_length=32)
    text = " ".join(f"word{i % 7} city" for i in range(40))
    _, cut_items = scorer.encode("where", [text], EncodeOptions(mode="chunk", max_chunks=8))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    for item in cut_items:
        piece = item.features["input_ids"]
        sep = piece.index(tokenizer.sep_token_id)
        body = piece[sep + 1 : -1]
        again = tokenizer("where", tokenizer.decode(body), truncation="only_second", max_length=32)
        if not tokenizer.convert_ids_to_tokens(body[:1])[0].startswith("##"):
            assert piece == again["input_ids"] and item.features["token_type_ids"] == again["token_type_ids"]
        assert any(ids[i : i + len(body)] == body for i in range(len(ids))), "a run of the document's own ids"
