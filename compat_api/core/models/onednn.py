"""fp32 Linear layers on oneDNN's kernels: the same math as PyTorch's default CPU path, faster.

PyTorch runs an fp32 `nn.Linear` on the CPU through MKL's sgemm, which on AMD CPUs takes its
AVX2 code path even where the CPU has AVX-512; oneDNN (bundled with PyTorch, the library behind
its bf16 and int8 kernels) picks the CPU's widest instructions on any vendor. Measured on a
2-core AMD EPYC Zen 4 (`python -m bench.kernels`, `docs/benchmarks.md`): a Linear layer's
product at 190–210 GFLOP/s with the default against 390–450 with oneDNN; all-MiniLM-L6-v2's whole
forward 1.7× faster; hidden states within 1e-5 of the default path (a float sum in another order,
nothing dropped or rounded).

Each `nn.Linear` of the model becomes a `OneDnnLinear`, a subclass that keeps the very same
weight and bias tensors (no copy, no repacked second layout: the memory does not change) and
only routes its forward to `torch.ops.mkldnn._linear_pointwise`, the op PyTorch's own compiler
emits for CPU linears. Before any layer is switched, a probe compares the op with `F.linear` on
the model's first layer; a build without oneDNN, or any disagreement, keeps PyTorch's default.

Where MKL already runs the CPU's widest vectors (Intel CPUs, and CPUs without AVX-512, where
both libraries run AVX2), each kernel wins at its own sizes (`python -m bench.kernels`, 2 cores):
at bge-reranker-v2-m3's shapes oneDNN is 4-26 % faster on fewer than 512 rows (tokens in the
call) and MKL 0-7 % faster from 512 on an AMX Xeon; on an AVX2-only EPYC (Zen 3) oneDNN 4-80 %
faster below 512 rows and MKL up to 17 % faster from 1,024. So by default (`policy(None)`) such
a CPU's switched layers hand inputs of `MKL_ROWS` rows or more back to `F.linear` (MKL); a CPU
with AVX-512 that MKL leaves on AVX2 (AMD Zen 4 and later) runs oneDNN at every size. The
operator can force either kernel.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, cast

import torch

from compat_api.core.models.cpu import parse, this_cpu

log = logging.getLogger(__name__)

TOLERANCE = 1e-4
MKL_ROWS = 512  # where MKL runs the widest vectors, inputs of this many rows or more go to it (see above)


def _kernel(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ weight.T + bias on oneDNN."""
    out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return out


class OneDnnLinear(torch.nn.Linear):
    """An `nn.Linear` whose forward runs oneDNN's fp32 kernel on the same weights (inputs of
    `mkl_rows` rows or more: PyTorch's default kernel)."""

    mkl_rows: int | None = None

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.mkl_rows is not None and input.numel() >= self.mkl_rows * self.in_features:
            return torch.nn.functional.linear(input, self.weight, self.bias)
        return _kernel(input, self.weight, self.bias)


def _agrees(layer: torch.nn.Linear) -> bool:
    """Whether oneDNN's op gives this layer's output (within TOLERANCE relative to its scale)."""
    probe = torch.randn(2, 3, layer.in_features, generator=torch.Generator().manual_seed(0))
    try:
        with torch.inference_mode():
            want = torch.nn.functional.linear(probe, layer.weight, layer.bias)
            got = _kernel(probe, layer.weight, layer.bias)
    except (RuntimeError, AttributeError) as exc:  # a torch built without oneDNN's linear op
        log.warning("oneDNN linear kernels unavailable (%s): Linear layers stay on PyTorch's default", exc)
        return False
    scale = float(want.abs().max()) or 1.0
    deviation = float((got - want).abs().max()) / scale
    if got.shape != want.shape or not deviation <= TOLERANCE:
        log.warning("oneDNN's linear kernel deviates by %.1e here: Linear layers stay on PyTorch's default",
                    deviation)  # fmt: skip
        return False
    return True


def mkl_runs_widest(cpuinfo: Path | None = None) -> bool:
    """Whether MKL's sgemm already runs this CPU's widest vectors: an Intel CPU (MKL picks
    AVX-512 or AMX there), or one without AVX-512 (both libraries run AVX2). Unreadable or
    without a vendor: no. `cpuinfo`: another cpuinfo file to read (tests)."""
    cpu = this_cpu() if cpuinfo is None else parse(cpuinfo)
    if cpu is None or not cpu.vendor:
        return False
    return cpu.vendor == "GenuineIntel" or "avx512f" not in cpu.flags


def policy(setting: bool | None) -> tuple[bool, int | None]:
    """Whether to switch, and from how many rows on to hand inputs back to MKL: the operator's
    choice (true: oneDNN always; false: never), else oneDNN everywhere except large inputs on a
    CPU whose widest vectors MKL already runs."""
    if setting is not None:
        return setting, None
    if mkl_runs_widest():
        log.info("MKL runs this CPU's widest vectors: fp32 Linear layers on oneDNN below %d rows, on MKL from there",
                 MKL_ROWS)  # fmt: skip
        return True, MKL_ROWS
    return True, None


def use_onednn_linears(model: Any, mkl_rows: int | None = None) -> int:
    """Route every fp32 CPU `nn.Linear` of `model` to oneDNN (in place; inputs of `mkl_rows`
    rows or more stay on PyTorch's default); the number switched."""
    if not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
        return 0
    layers = [
        m
        for m in model.modules()
        if type(m) is torch.nn.Linear and m.weight.dtype == torch.float32 and m.weight.device.type == "cpu"
    ]
    if not layers or not _agrees(layers[0]):
        return 0
    for layer in layers:
        layer.__class__ = OneDnnLinear
        cast(OneDnnLinear, layer).mkl_rows = mkl_rows
    return len(layers)
