"""Long documents: truncation, chunking, caps, and a buried relevant passage found by chunking."""

from __future__ import annotations

from itertools import pairwise

import pytest

from compat_api.core.models.base import EncodeOptions, cut, fit_document
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
