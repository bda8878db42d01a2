"""The ONNX Runtime backend: same scores as FlagEmbedding (fp32), exported once per model version."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from compat_api.core.ranking import Normalization, normalize
from compat_api.core.scorers import CrossEncoderScorer, EmbeddingScorer, EncodeOptions, bundled_model_path

QUERY = "what is the capital of france"
DOCS = ["paris is the capital of france", "", "cats " * 3, "the quick brown fox jumps over the lazy dog " * 30,
        "函数计算是阿里云Serverless计算服务"]  # fmt: skip


def test_onnx_cross_encoder_equals_flagembedding(tiny_reranker_dir: Path, tmp_path: Path) -> None:
    from FlagEmbedding import FlagReranker

    scorer = CrossEncoderScorer(str(tiny_reranker_dir), name="t", device="cpu", fp16=False, max_length=64,
                                backend="onnx", onnx_cache_dir=str(tmp_path))  # fmt: skip
    assert scorer.info.dtype == "float32-onnx"
    reference = FlagReranker(str(tiny_reranker_dir), use_fp16=False, devices=["cpu"], max_length=64)
    expected = reference.compute_score([[QUERY, d] for d in DOCS], normalize=True)
    # one padded batch of all documents: padding must not leak into the scores
    ours = normalize(scorer.score(QUERY, DOCS), Normalization.SIGMOID)
    assert ours == pytest.approx(expected, abs=1e-4)
    alone = [normalize(scorer.score(QUERY, [d]), Normalization.SIGMOID)[0] for d in DOCS]
    assert alone == pytest.approx(expected, abs=1e-4)


def test_onnx_export_is_cached_by_fingerprint(tiny_reranker_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "onnx"
    model = tmp_path / "model"
    shutil.copytree(tiny_reranker_dir, model)
    CrossEncoderScorer(str(model), name="t", device="cpu", fp16=False, max_length=64, backend="onnx",
                       onnx_cache_dir=str(cache))  # fmt: skip
    exports = list(cache.glob("*/model.onnx"))
    assert len(exports) == 1
    stamp = exports[0].stat().st_mtime_ns
    CrossEncoderScorer(str(model), name="t", device="cpu", fp16=False, max_length=64, backend="onnx",
                       onnx_cache_dir=str(cache))  # fmt: skip
    assert exports[0].stat().st_mtime_ns == stamp, "the second load reuses the export"
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "classifier_dropout": 0.2}))
    CrossEncoderScorer(str(model), name="t", device="cpu", fp16=False, max_length=64, backend="onnx",
                       onnx_cache_dir=str(cache))  # fmt: skip
    assert len(list(cache.glob("*/model.onnx"))) == 2, "a changed model is exported anew"


def test_onnx_embedding_model_equals_torch(tmp_path: Path) -> None:
    path = bundled_model_path()
    torch_scorer = EmbeddingScorer(path, name="t", device="cpu", fp16=False, max_length=512)
    onnx_scorer = EmbeddingScorer(path, name="o", device="cpu", fp16=False, max_length=512, backend="onnx",
                                  onnx_cache_dir=str(tmp_path))  # fmt: skip
    docs = ["Paris is the capital of France.", "Cats sleep a lot.", "word " * 400]
    for options in (EncodeOptions(), EncodeOptions(mode="chunk", max_chunks=3)):
        expected = torch_scorer.score("capital of France", docs, options)
        assert onnx_scorer.score("capital of France", docs, options) == pytest.approx(expected, abs=1e-4)
