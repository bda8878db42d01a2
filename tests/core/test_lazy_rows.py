"""The input embedding read row by row: the lookups of the fully loaded matrix, only the rows used
read, from a copy in the export cache made once per model version (an upload over the weight file
in place cannot reach it); a rows file changed in place refused (never two models' rows mixed,
never a crash), one replaced by a rename still read from the old version, lanes filling at once."""

from __future__ import annotations

import json
import os
import shutil
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from compat_api.core.errors import ModelFailure
from compat_api.core.models import runtime as runtime_module
from compat_api.core.models.cross_encoder import CrossEncoderScorer
from compat_api.core.models.embedder import Embedder
from compat_api.core.models.lazy_rows import LazyRows, input_embedding, pin_rows
from compat_api.core.models.runtime import Runtime
from compat_api.core.registry import bundled_model_path

ROWS, WIDTH = 1000, 24


def saved(path: Path, seed: int = 0) -> tuple[torch.Tensor, int]:
    """A weight file holding one embedding matrix (after a decoy tensor), and the matrix's offset."""
    generator = torch.Generator().manual_seed(seed)
    matrix = torch.randn(ROWS, WIDTH, generator=generator)
    save_file({"decoy": torch.ones(7), "weight": matrix}, str(path))
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    return matrix, 8 + length + header["weight"]["data_offsets"][0]


def lazy(path: Path, dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Embedding, LazyRows, torch.Tensor]:
    matrix, offset = saved(path)
    embedding = torch.nn.Embedding(ROWS, WIDTH)
    return embedding, LazyRows(embedding, str(path), offset, dtype), matrix


def test_lookups_equal_the_loaded_matrix_and_only_used_rows_are_read(tmp_path: Path) -> None:
    embedding, rows, matrix = lazy(tmp_path / "model.safetensors")
    assert rows.loaded() == 0
    ids = torch.tensor([[5, 6, 7, 900, 5], [999, 0, 6, 1, 2]])
    with torch.inference_mode():
        assert torch.equal(embedding(ids), torch.nn.functional.embedding(ids, matrix))
    assert rows.loaded() == len(ids.unique())
    assert torch.equal(embedding.weight[42], torch.zeros(WIDTH))  # never asked for: never read


def test_rows_convert_to_the_serving_dtype(tmp_path: Path) -> None:
    embedding, _, matrix = lazy(tmp_path / "model.safetensors", torch.bfloat16)
    ids = torch.tensor([3, 4, 10, 500])
    with torch.inference_mode():
        got = embedding(ids)
    assert got.dtype == torch.bfloat16 and torch.equal(got, matrix[ids].to(torch.bfloat16))


def test_a_file_rewritten_in_place_is_refused_not_mixed(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    embedding, rows, matrix = lazy(path)
    with torch.inference_mode():
        embedding(torch.tensor([1, 2]))
    other, _ = saved(tmp_path / "other.safetensors", seed=1)
    os.utime(path, ns=(0, 0))  # even a restored mtime: ctime still moves
    path.write_bytes((tmp_path / "other.safetensors").read_bytes())  # same inode, same size
    with pytest.raises(ModelFailure, match="rewritten in place"), torch.inference_mode():
        embedding(torch.tensor([3]))
    with torch.inference_mode():  # rows read before the change are still the loaded model's
        assert torch.equal(embedding(torch.tensor([1, 2])), matrix[[1, 2]])
    assert rows.loaded() == 2 and not torch.equal(other[3], matrix[3])


def test_a_truncated_file_fails_the_forward_not_the_process(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    embedding, _, _ = lazy(path)
    with path.open("r+b") as handle:
        handle.truncate(100)
    with pytest.raises(ModelFailure, match=r"shorter|rewritten"), torch.inference_mode():
        embedding(torch.tensor([999]))


def test_a_file_replaced_by_a_rename_is_still_read_from_the_loaded_version(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    embedding, _, matrix = lazy(path)
    saved(tmp_path / "new.safetensors", seed=1)
    os.replace(tmp_path / "new.safetensors", path)
    ids = torch.tensor([10, 11, 700])
    with torch.inference_mode():
        assert torch.equal(embedding(ids), matrix[ids])


def test_lanes_filling_at_once_read_every_row_right(tmp_path: Path) -> None:
    embedding, rows, matrix = lazy(tmp_path / "model.safetensors")
    batches = [torch.randint(0, ROWS, (4, 50), generator=torch.Generator().manual_seed(i)) for i in range(32)]

    def look_up(ids: torch.Tensor) -> bool:
        with torch.inference_mode():
            return torch.equal(embedding(ids), torch.nn.functional.embedding(ids, matrix))

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(look_up, batches))
    assert rows.loaded() == len(torch.cat([b.reshape(-1) for b in batches]).unique())


def test_tied_embeddings_are_loaded_whole() -> None:
    class Tied(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(10, 4)
            self.head = torch.nn.Linear(4, 10, bias=False)
            self.head.weight = self.embed.weight

        def get_input_embeddings(self) -> torch.nn.Module:
            return self.embed

    model = Tied()
    assert input_embedding(model) is None
    model.head.weight = torch.nn.Parameter(torch.zeros(10, 4))
    assert input_embedding(model) is model.embed


def hook_of(model: Any) -> LazyRows:
    hooks = [h for h in model.get_input_embeddings()._forward_pre_hooks.values() if isinstance(h, LazyRows)]
    assert len(hooks) == 1
    return hooks[0]


def test_the_rows_copy_is_made_once_per_model_version(tmp_path: Path) -> None:
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    matrix, offset = saved(model / "model.safetensors")
    nbytes = matrix.numel() * 4
    cache = tmp_path / "cache"
    first = pin_rows(str(model), str(cache), str(model / "model.safetensors"), offset, nbytes)
    assert first.read_bytes() == (model / "model.safetensors").read_bytes()[offset : offset + nbytes]
    made = first.stat().st_mtime_ns
    assert pin_rows(str(model), str(cache), str(model / "model.safetensors"), offset, nbytes) == first
    assert first.stat().st_mtime_ns == made  # reused, not rewritten
    with first.open("r+b") as damaged:  # cut short behind the service's back (a full disk, a bad copy)
        damaged.truncate(nbytes // 2)
    assert pin_rows(str(model), str(cache), str(model / "model.safetensors"), offset, nbytes) == first
    assert first.read_bytes() == (model / "model.safetensors").read_bytes()[offset : offset + nbytes], "made again"
    saved(model / "model.safetensors", seed=1)  # a new version: its own copy
    second = pin_rows(str(model), str(cache), str(model / "model.safetensors"), offset, nbytes)
    assert second != first and second.read_bytes() != first.read_bytes()


def test_instances_starting_at_once_share_one_rows_copy(tmp_path: Path) -> None:
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    matrix, offset = saved(model / "model.safetensors")
    source, cache, nbytes = str(model / "model.safetensors"), str(tmp_path / "cache"), matrix.numel() * 4
    with ThreadPoolExecutor(4) as pool:
        made = list(pool.map(lambda _: pin_rows(str(model), cache, source, offset, nbytes), range(4)))
    assert len(set(made)) == 1 and made[0].read_bytes() == matrix.numpy().tobytes()
    assert not list((tmp_path / "cache").rglob(".staging-*"))  # the losers' staging directories are gone


@pytest.fixture
def lazy_small(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny models' embeddings are below the size worth a copy: read them lazily all the same."""
    monkeypatch.setattr(runtime_module, "LAZY_MIN_BYTES", 0)


@pytest.mark.usefixtures("lazy_small")
@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "stock"])
def test_served_models_read_only_the_rows_they_use(tiny_reranker_dir: Path, tmp_path: Path, onednn: bool) -> None:
    """A reranker and the bundled embedder, as the server loads them: the embedding read lazily, with
    the outputs of the whole matrix (the fidelity tests tie those to FlagEmbedding's)."""
    runtime = Runtime(onednn_linear=onednn, cache_dir=str(tmp_path))
    scorer = CrossEncoderScorer(str(tiny_reranker_dir), name="r", max_length=128, runtime=runtime)
    texts = ["paris is the capital of france", "函数计算 is a serverless computing service"]
    scores = np.asarray(scorer.score("what is function compute", texts))
    rows = hook_of(scorer.model)
    assert 0 < rows.loaded() < rows.rows
    assert Path(rows.path).is_relative_to(tmp_path)  # the cache's copy, not the model's file
    rows(scorer.model.get_input_embeddings(), (torch.arange(rows.rows),))  # now every row is read
    assert rows.loaded() == rows.rows
    assert np.abs(np.asarray(scorer.score("what is function compute", texts)) - scores).max() == 0.0

    embedder = Embedder(bundled_model_path(), name="e", max_length=512, runtime=runtime)
    embedder.embed(texts)
    used = hook_of(embedder.model)
    assert 0 < used.loaded() < used.rows / 100


@pytest.mark.usefixtures("lazy_small")
def test_a_model_serves_on_while_its_weight_file_is_overwritten_in_place(tiny_reranker_dir: Path,
                                                                         tmp_path: Path) -> None:  # fmt: skip
    model = tmp_path / "m"
    shutil.copytree(tiny_reranker_dir, model)
    runtime = Runtime(cache_dir=str(tmp_path / "cache"))
    scorer = CrossEncoderScorer(str(model), name="m", max_length=64, runtime=runtime)
    texts = ["paris is the capital of france", "tokens never seen before: 函数计算 zebra quartz"]
    want = CrossEncoderScorer(str(model), name="w", max_length=64, runtime=Runtime(cache_dir=str(tmp_path / "c2")))
    (model / "model.safetensors").write_bytes(b"x" * 100)  # an upload in progress, in place
    assert scorer.score("q", texts) == pytest.approx(want.score("q", texts), abs=1e-6)


def test_without_a_writable_cache_the_embedding_is_loaded_whole(tiny_reranker_dir: Path, lazy_small: None,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from compat_api.core.errors import ModelLoadError

    def refuse(*args: object) -> Path:
        raise ModelLoadError("cannot use /nas as the export cache")

    monkeypatch.setattr(runtime_module, "_pin", lambda path, runtime: refuse)
    scorer = CrossEncoderScorer(str(tiny_reranker_dir), name="r", max_length=64)
    embedding = scorer.model.get_input_embeddings()
    assert not any(isinstance(h, LazyRows) for h in embedding._forward_pre_hooks.values())
    assert len(scorer.score("q", ["a", "b"])) == 2


def test_small_embeddings_are_loaded_whole(tiny_reranker_dir: Path, tmp_path: Path) -> None:
    scorer = CrossEncoderScorer(
        str(tiny_reranker_dir), name="r", max_length=64, runtime=Runtime(cache_dir=str(tmp_path))
    )
    embedding = scorer.model.get_input_embeddings()
    assert not any(isinstance(h, LazyRows) for h in embedding._forward_pre_hooks.values())
