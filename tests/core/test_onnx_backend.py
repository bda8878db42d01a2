"""The ONNX Runtime backend: same scores as FlagEmbedding (fp32), exported once per model version
into a private cache, verified against the torch model before it serves, old exports pruned."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from compat_api.core.errors import ModelLoadError
from compat_api.core.models.base import EncodeOptions
from compat_api.core.models.cross_encoder import CrossEncoderScorer
from compat_api.core.models.embedder import Embedder
from compat_api.core.models.export_cache import model_cache
from compat_api.core.models.onnx import GRAPH
from compat_api.core.models.runtime import Runtime, native_int8_dot
from compat_api.core.ranking import Normalization, normalize
from compat_api.core.registry import bundled_model_path

QUERY = "what is the capital of france"
DOCS = ["paris is the capital of france", "", "cats " * 3, "the quick brown fox jumps over the lazy dog " * 30,
        "函数计算是阿里云Serverless计算服务"]  # fmt: skip


def onnx(cache: Path) -> Runtime:
    return Runtime(backend="onnx", cache_dir=str(cache))


def exports(cache: Path) -> list[Path]:
    return sorted(cache.glob(f"*/*/{GRAPH}"))


def test_onnx_cross_encoder_equals_flagembedding(tiny_reranker_dir: Path, tmp_path: Path) -> None:
    from FlagEmbedding import FlagReranker

    scorer = CrossEncoderScorer(str(tiny_reranker_dir), name="t", max_length=64, runtime=onnx(tmp_path))
    assert (scorer.info.dtype, scorer.info.backend) == ("float32", "onnx")
    reference = FlagReranker(str(tiny_reranker_dir), use_fp16=False, devices=["cpu"], max_length=64)
    expected = reference.compute_score([[QUERY, d] for d in DOCS], normalize=True)
    # one padded batch of all documents: padding must not leak into the scores
    ours = normalize(scorer.score(QUERY, DOCS), Normalization.SIGMOID)
    assert ours == pytest.approx(expected, abs=1e-4)
    alone = [normalize(scorer.score(QUERY, [d]), Normalization.SIGMOID)[0] for d in DOCS]
    assert alone == pytest.approx(expected, abs=1e-4)


def test_exports_are_cached_by_fingerprint_and_old_ones_pruned(tiny_reranker_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    model = tmp_path / "model"
    shutil.copytree(tiny_reranker_dir, model)
    CrossEncoderScorer(str(model), name="t", max_length=64, runtime=onnx(cache))
    [first] = exports(cache)
    stamp = first.stat().st_mtime_ns
    CrossEncoderScorer(str(model), name="t", max_length=64, runtime=onnx(cache))
    assert first.stat().st_mtime_ns == stamp, "the second load reuses the export"
    config = json.loads((model / "config.json").read_text())
    for version in range(3):
        (model / "config.json").write_text(json.dumps({**config, "classifier_dropout": 0.1 * (version + 1)}))
        CrossEncoderScorer(str(model), name="t", max_length=64, runtime=onnx(cache))
    assert len(exports(cache)) == 2, "the version in use and the one before it; older ones are pruned"
    assert not first.exists()
    CrossEncoderScorer(str(model), name="t", max_length=64, runtime=Runtime(backend="int8", cache_dir=str(cache)))
    CrossEncoderScorer(str(model), name="t", max_length=64, runtime=Runtime(backend="openvino", cache_dir=str(cache)))
    kinds = sorted(p.name.rsplit("-", 1)[0] for p in next(cache.iterdir()).iterdir())
    int8 = "onnx-int8" if native_int8_dot() else "onnx-int8r"  # 7-bit weights where the CPU has no VNNI
    assert kinds == ["onnx-fp32", "onnx-fp32", int8, "openvino"], "each backend keeps its own exports"


def test_a_damaged_export_is_made_again(
    tiny_reranker_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A graph cut short (a full disk, a crash before the data reached it) must not stop every
    later start: the server makes the export again."""
    cache = tmp_path / "cache"
    first = CrossEncoderScorer(str(tiny_reranker_dir), name="t", max_length=64, runtime=onnx(cache))
    [graph] = exports(cache)
    graph.write_bytes(graph.read_bytes()[:4096])
    again = CrossEncoderScorer(str(tiny_reranker_dir), name="t", max_length=64, runtime=onnx(cache))
    assert "cannot be used" in caplog.text and "making it again" in caplog.text
    assert again.score(QUERY, DOCS) == pytest.approx(first.score(QUERY, DOCS), abs=1e-5)
    assert graph.stat().st_size > 4096


def test_the_cache_is_private_to_the_service(tiny_reranker_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o777)
    cache.chmod(0o777)
    CrossEncoderScorer(str(tiny_reranker_dir), name="t", max_length=64, runtime=onnx(cache))
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700, "a world-writable cache is narrowed"
    for directory in [p for p in cache.rglob("*") if p.is_dir()]:
        assert stat.S_IMODE(directory.stat().st_mode) & 0o077 == 0, directory


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the cache to another user")
def test_a_cache_owned_by_someone_else_is_refused(tiny_reranker_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "theirs"
    cache.mkdir()
    os.chown(cache, 65534, 65534)
    with pytest.raises(ModelLoadError, match="belongs to uid 65534"):
        CrossEncoderScorer(str(tiny_reranker_dir), name="t", max_length=64, runtime=onnx(cache))


def test_an_unwritable_cache_is_a_clear_load_error(tiny_reranker_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"cannot use /proc/compat-onnx as the export cache"):
        CrossEncoderScorer(str(tiny_reranker_dir), name="t", max_length=64, runtime=onnx(Path("/proc/compat-onnx")))


def test_a_planted_export_is_detected_and_replaced(
    tiny_reranker_dir: Path, other_reranker_dir: Path, tmp_path: Path
) -> None:
    """Another model's graph under this model's key never serves: the probe catches it."""
    cache = tmp_path / "cache"
    honest = CrossEncoderScorer(str(tiny_reranker_dir), name="t", max_length=64, runtime=onnx(cache))
    expected = honest.score(QUERY, DOCS)
    other_cache = tmp_path / "other"
    CrossEncoderScorer(str(other_reranker_dir), name="o", max_length=64, runtime=onnx(other_cache))
    [ours], [theirs] = exports(cache), exports(other_cache)
    shutil.copyfile(theirs, ours)  # a different model's export under our key
    reloaded = CrossEncoderScorer(str(tiny_reranker_dir), name="t", max_length=64, runtime=onnx(cache))
    assert reloaded.score(QUERY, DOCS) == pytest.approx(expected, abs=1e-4)
    assert model_cache(str(tiny_reranker_dir), str(cache)) == ours.parent.parent


def test_two_instances_exporting_at_once_share_one_cache(tiny_reranker_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    script = (
        "from compat_api.core.models.cross_encoder import CrossEncoderScorer\n"
        "from compat_api.core.models.runtime import Runtime\n"
        f"s = CrossEncoderScorer({str(tiny_reranker_dir)!r}, name='t', max_length=64,\n"
        f"                       runtime=Runtime(backend='onnx', cache_dir={str(cache)!r}))\n"
        "print('scores', s.score('q', ['a', 'b']))\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]  # fmt: skip
    outs = [proc.communicate(timeout=300) for proc in procs]
    for proc, (_out, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, err[-2000:]
    assert outs[0][0] == outs[1][0] and "scores" in outs[0][0]
    assert len(exports(cache)) == 1
    assert not list(cache.glob("*/.staging-*")), "no staging directory is left behind"


def test_onnx_embedding_model_equals_torch(tmp_path: Path) -> None:
    path = bundled_model_path()
    torch_scorer = Embedder(path, name="t", max_length=512)
    onnx_scorer = Embedder(path, name="o", max_length=512, runtime=onnx(tmp_path))
    docs = ["Paris is the capital of France.", "Cats sleep a lot.", "word " * 400]
    for options in (EncodeOptions(), EncodeOptions(mode="chunk", max_chunks=3)):
        expected = torch_scorer.score("capital of France", docs, options)
        assert onnx_scorer.score("capital of France", docs, options) == pytest.approx(expected, abs=1e-4)


def test_pruning_leaves_entries_that_vanish_while_it_looks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another instance renames its staging directory (or prunes) between the listing and a look."""
    from compat_api.core.models import export_cache

    keep = tmp_path / "onnx-fp32-aaaa"
    keep.mkdir()
    gone = tmp_path / ".staging-gone"
    real_glob = Path.glob
    monkeypatch.setattr(Path, "glob", lambda self, pattern: [*real_glob(self, pattern), gone])
    export_cache.prune(tmp_path, keep)
    assert keep.is_dir()
