"""Scorer backends: FlagEmbedding parity, the bundled embedding model, load errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from compat_api.core.errors import ModelLoadError
from compat_api.core.models.cross_encoder import CrossEncoderScorer
from compat_api.core.models.embedder import Embedder
from compat_api.core.models.runtime import Runtime
from compat_api.core.ranking import Normalization, normalize
from compat_api.core.registry import bundled_model_path

QUERY = "what is the capital of france"
DOCS = [
    "paris is the capital of france",
    "berlin is the capital of germany",
    "",
    "the quick brown fox jumps over the lazy dog " * 40,  # longer than the window: truncated
    "函数计算是阿里云Serverless计算服务",
    "cats",
]


def flag_scores(path: Path, query: str, docs: list[str], max_length: int) -> list[float]:
    from FlagEmbedding import FlagReranker

    reranker = FlagReranker(str(path), use_fp16=False, devices=["cpu"], max_length=max_length)
    return [float(s) for s in reranker.compute_score([[query, d] for d in docs], normalize=True)]


@pytest.mark.parametrize("max_length", [512, 24])
def test_cross_encoder_equals_flagembedding_compute_score(tiny_reranker_dir: Path, max_length: int) -> None:
    scorer = CrossEncoderScorer(str(tiny_reranker_dir), name="tiny", max_length=max_length)
    long_query = QUERY + " and " + "what is the capital of china " * 10  # longer than 3/4 of a small window
    for query in (QUERY, long_query):
        ours = normalize(scorer.score(query, DOCS), Normalization.SIGMOID)
        theirs = flag_scores(tiny_reranker_dir, query, DOCS, max_length)
        assert ours == pytest.approx(theirs, abs=1e-4)
    assert len(set(round(s, 6) for s in ours)) > 3, "the tiny model must spread its scores"


def test_cross_encoder_counts_tokens_of_each_pair(tiny_reranker_dir: Path) -> None:
    scorer = CrossEncoderScorer(str(tiny_reranker_dir), name="tiny", max_length=24)
    encoding, items = scorer.encode(QUERY, DOCS)
    assert len(items) == len(DOCS)
    assert all(item.length <= 24 for item in items)
    assert encoding.tokens == sum(item.length for item in items)
    assert scorer.info.kind == "cross-encoder" and scorer.info.dtype == "float32"


ENGLISH_SETS = [
    (
        "What is the capital of France?",
        [
            "Paris is the capital and largest city of France.",
            "Berlin is the capital of Germany.",
            "The Eiffel Tower is made of iron.",
        ],
        0,
    ),
    (
        "How do I bake bread at home?",
        [
            "The stock market fell sharply today.",
            "Mix flour, water, yeast and salt, let the dough rise, then bake it.",
            "Bread prices rose last year.",
        ],
        1,
    ),
    (
        "Which animal is known as man's best friend?",
        [
            "Cats sleep most of the day.",
            "Python is a programming language.",
            "Dogs are loyal companions and are called man's best friend.",
        ],
        2,
    ),
    (
        "What does a reranker do in search?",
        [
            "A reranker scores each query and document pair and reorders the results by relevance.",
            "Bananas are rich in potassium.",
            "Search engines crawl the web.",
        ],
        0,
    ),
]


@pytest.mark.parametrize(("query", "docs", "best"), ENGLISH_SETS)
def test_bundled_model_ranks_the_relevant_english_document_first(query: str, docs: list[str], best: int) -> None:
    scorer = _bundled()
    scores = normalize(scorer.score(query, docs), scorer.info.normalization)
    assert max(range(len(docs)), key=lambda i: scores[i]) == best
    assert all(0.0 <= s <= 1.0 for s in scores)


_BUNDLED: list[Embedder] = []


def _bundled() -> Embedder:
    if not _BUNDLED:
        _BUNDLED.append(Embedder(bundled_model_path(), name="bundled", max_length=512))
    return _BUNDLED[0]


def test_bundled_model_uses_its_trained_window() -> None:
    assert _bundled().info.max_length == 256
    assert _bundled().info.kind == "embedding"


def test_missing_model_directory_is_a_clear_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a directory"):
        CrossEncoderScorer(str(tmp_path / "nope"), name="x", max_length=64)


def test_directory_without_config_is_a_clear_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        CrossEncoderScorer(str(tmp_path), name="x", max_length=64)


def test_broken_weights_are_a_load_error(tiny_reranker_dir: Path, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_reranker_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="cannot load reranker model"):
        CrossEncoderScorer(str(broken), name="x", max_length=64)


def test_a_directory_without_tokenizer_files_is_a_load_error(tiny_reranker_dir: Path, tmp_path: Path) -> None:
    """transformers would build an empty tokenizer that reads every word as <unk>."""
    import shutil

    copy = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_reranker_dir, copy)
    for name in ("tokenizer.json", "sentencepiece.bpe.model", "vocab.txt"):
        (copy / name).unlink(missing_ok=True)
    with pytest.raises(ModelLoadError, match="no tokenizer vocabulary"):
        CrossEncoderScorer(str(copy), name="x", max_length=64)


def test_a_checkpoint_without_its_classifier_head_is_a_load_error(tiny_reranker_dir: Path, tmp_path: Path) -> None:
    """transformers would fill the head with random numbers and the model would serve noise."""
    import shutil

    from safetensors.torch import load_file, save_file

    headless = tmp_path / "headless"
    shutil.copytree(tiny_reranker_dir, headless)
    weights = load_file(str(headless / "model.safetensors"))
    kept = {k: v for k, v in weights.items() if not k.startswith("classifier.")}
    save_file(kept, str(headless / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"lack 4 of the model's tensors \(classifier\."):
        CrossEncoderScorer(str(headless), name="x", max_length=64)


@pytest.mark.parametrize("device", ["cuda", "cuda:7", "mps"])
def test_a_device_this_machine_lacks_is_a_load_error_naming_the_setting(device: str) -> None:
    import torch

    from compat_api.core.models.base import resolve_device

    if (device.startswith("cuda") and torch.cuda.device_count() > 7) or (
        device == "mps" and torch.backends.mps.is_available()
    ):
        pytest.skip(f"this machine has {device}")
    with pytest.raises(ModelLoadError, match=f"RERANK_DEVICE={device}, but"):
        resolve_device(device)


def test_int8_backend_keeps_the_bundled_models_rankings() -> None:
    int8 = Embedder(bundled_model_path(), name="b8", max_length=512, runtime=Runtime(backend="int8"))
    assert (int8.info.dtype, int8.info.backend) == ("int8", "int8")
    for query, docs, best in ENGLISH_SETS:
        fp32 = normalize(_bundled().score(query, docs), Normalization.COSINE)
        quantized = normalize(int8.score(query, docs), Normalization.COSINE)
        assert max(range(len(docs)), key=lambda i: quantized[i]) == best
        assert quantized == pytest.approx(fp32, abs=0.05)


def test_int8_backend_loads_a_cross_encoder(tiny_reranker_dir: Path) -> None:
    scorer = CrossEncoderScorer(str(tiny_reranker_dir), name="t8", max_length=64, runtime=Runtime(backend="int8"))
    assert (scorer.info.dtype, scorer.info.backend) == ("int8", "int8")
    assert len(scorer.score(QUERY, DOCS)) == len(DOCS)


def test_int8_backend_is_cpu_only(tiny_reranker_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="CPU only"):
        CrossEncoderScorer(str(tiny_reranker_dir), name="t8", max_length=64,
                           runtime=Runtime(device="cuda", fp16=True, backend="int8"))  # fmt: skip


def test_window_is_clamped_to_what_the_model_can_take(tiny_reranker_dir: Path) -> None:
    scorer = CrossEncoderScorer(str(tiny_reranker_dir), name="t", max_length=4096)
    assert scorer.info.max_length == 512
    assert len(scorer.score(QUERY, ["word " * 5000])) == 1


def test_a_loaded_model_survives_its_weight_file_being_overwritten(tiny_reranker_dir: Path, tmp_path: Path) -> None:
    """safetensors maps the file; an upload over it must not pull memory from under the model."""
    import shutil
    import subprocess
    import sys

    model = tmp_path / "m"
    shutil.copytree(tiny_reranker_dir, model)
    script = (
        "from compat_api.core.models.cross_encoder import CrossEncoderScorer\n"
        f"s = CrossEncoderScorer({str(model)!r}, name='m', max_length=64)\n"
        f"open({str(model / 'model.safetensors')!r}, 'wb').write(b'x' * 100)\n"
        "print('scores', s.score('q', ['a', 'b']))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"died with {result.returncode}: {result.stderr[-2000:]}"
    assert "scores" in result.stdout
