"""fp32 Linear layers on oneDNN: every Linear of a served model switched in place (the same weight
tensors, no copy), its outputs those of PyTorch's default kernels, and refused (PyTorch's default
kept) where the kernel is missing or disagrees, or when the operator turns it off."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from compat_api.core.models import onednn
from compat_api.core.models.cross_encoder import CrossEncoderScorer
from compat_api.core.models.embedder import Embedder
from compat_api.core.models.onednn import OneDnnLinear, use_onednn_linears
from compat_api.core.models.runtime import Runtime
from compat_api.core.registry import bundled_model_path

TEXTS = ["paris is the capital of france", "cats " * 60, "函数计算 is a serverless computing service"]


def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.Linear(64, 8, bias=False))


def test_every_linear_switched_in_place_with_the_same_outputs() -> None:
    model = mlp()
    weights = [p.data_ptr() for p in model.parameters()]
    x = torch.randn(3, 5, 16)
    with torch.inference_mode():
        want = model(x)
    assert use_onednn_linears(model) == 2
    assert all(type(m) is OneDnnLinear for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert [p.data_ptr() for p in model.parameters()] == weights  # the same tensors: no second copy
    with torch.inference_mode():
        got = model(x)
    assert got.shape == want.shape and float((got - want).abs().max()) <= 1e-5


def test_a_disagreeing_kernel_keeps_pytorchs_default(monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    monkeypatch.setattr(onednn, "_kernel", lambda x, w, b: torch.nn.functional.linear(x, w, b) + 1.0)
    model = mlp()
    with caplog.at_level(logging.WARNING, logger="compat_api.core.models.onednn"):
        assert use_onednn_linears(model) == 0
    assert "deviates" in caplog.text
    assert not any(type(m) is OneDnnLinear for m in model.modules())


def test_a_missing_kernel_keeps_pytorchs_default(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        raise RuntimeError("mkldnn::_linear_pointwise is not available in this build")

    monkeypatch.setattr(onednn, "_kernel", missing)
    assert use_onednn_linears(mlp()) == 0
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert use_onednn_linears(mlp()) == 0


def test_served_models_give_the_default_kernels_outputs(tiny_reranker_dir: Path) -> None:
    """The bundled model's vectors and the tiny reranker's scores, oneDNN against PyTorch's default
    kernels (`onednn_linear=False`), which the fidelity tests tie to FlagEmbedding."""
    path = bundled_model_path()
    fast = Embedder(path, name="fast", max_length=512, runtime=Runtime(onednn_linear=True))
    plain = Embedder(path, name="plain", max_length=512, runtime=Runtime(onednn_linear=False))
    assert any(type(m) is OneDnnLinear for m in fast.model.modules())
    assert not any(type(m) is OneDnnLinear for m in plain.model.modules())
    assert np.abs(fast.embed(TEXTS) - plain.embed(TEXTS)).max() <= 1e-5
    scorers = [CrossEncoderScorer(str(tiny_reranker_dir), name="r", max_length=128, runtime=Runtime(onednn_linear=on))
               for on in (True, False)]  # fmt: skip
    got, want = (np.asarray(s.score("what is function compute", TEXTS)) for s in scorers)
    assert np.abs(got - want).max() <= 1e-4


@pytest.mark.parametrize(
    ("vendor", "flags", "mkl_rows"),
    [
        ("AuthenticAMD", "fpu avx2 avx512f avx512_bf16", None),  # Zen 4: MKL leaves AVX-512 unused
        ("GenuineIntel", "fpu avx2 avx512f amx_bf16", onednn.MKL_ROWS),  # MKL runs AVX-512/AMX
        ("AuthenticAMD", "fpu avx avx2 fma", onednn.MKL_ROWS),  # Zen 3: both run AVX2
        ("GenuineIntel", "fpu avx avx2 fma", onednn.MKL_ROWS),
    ],
)
def test_by_default_large_inputs_go_back_to_mkl_where_it_runs_the_widest_vectors(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    vendor: str,
    flags: str,
    mkl_rows: int | None,
    tiny_reranker_dir: Path,
) -> None:
    """MKL runs AVX-512 on Intel CPUs, and AVX2 like oneDNN where there is no AVX-512: there it
    wins on large inputs; on an AMD CPU with AVX-512 oneDNN runs every size. The operator's
    setting wins either way."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nvendor_id\t: {vendor}\nflags\t\t: {flags}\n")
    assert onednn.mkl_runs_widest(cpuinfo) is (mkl_rows is not None)
    real = onednn.mkl_runs_widest
    monkeypatch.setattr(onednn, "mkl_runs_widest", lambda: real(cpuinfo))
    assert onednn.policy(None) == (True, mkl_rows)
    assert onednn.policy(True) == (True, None) and onednn.policy(False) == (False, None)
    scorer = CrossEncoderScorer(str(tiny_reranker_dir), name="r", max_length=64, runtime=Runtime())
    layers = [m for m in scorer.model.modules() if isinstance(m, torch.nn.Linear)]
    assert layers and all(type(m) is OneDnnLinear and m.mkl_rows == mkl_rows for m in layers)


def test_a_switched_layer_runs_onednn_below_its_row_limit_and_mkl_from_it(monkeypatch: pytest.MonkeyPatch) -> None:
    model = mlp()
    assert use_onednn_linears(model, mkl_rows=8) == 2
    calls: list[int] = []
    real = onednn._kernel

    def counted(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        calls.append(x.numel() // x.shape[-1])
        return real(x, w, b)

    monkeypatch.setattr(onednn, "_kernel", counted)
    plain = mlp()
    with torch.inference_mode():
        for rows in (1, 7, 8, 40):
            x = torch.randn(rows, 16)
            assert torch.allclose(model(x), plain(x), atol=1e-5)
    assert calls == [1, 1, 7, 7]  # both layers on oneDNN below 8 rows, on F.linear from 8


def test_an_unreadable_cpuinfo_or_one_without_a_vendor_keeps_onednn_everywhere(tmp_path: Path) -> None:
    assert onednn.mkl_runs_widest(tmp_path / "missing") is False
    (tmp_path / "cpuinfo").write_text("processor\t: 0\n")
    assert onednn.mkl_runs_widest(tmp_path / "cpuinfo") is False
