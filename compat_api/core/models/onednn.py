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

On Intel CPUs MKL already runs AVX-512, and there each kernel wins at its own sizes (`python -m
bench.kernels`, an AMX Xeon, 2 cores): at bge-reranker-v2-m3's shapes oneDNN is 4-26 % faster
on fewer than 512 rows (tokens in the call), MKL 0-7 % faster from 512; at MiniLM's, MKL at
most sizes. So by default (`policy(None)`) an Intel CPU's switched
layers hand inputs of `INTEL_MKL_ROWS` rows or more back to `F.linear` (MKL); other CPUs run
oneDNN at every size. The operator can force either kernel.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, cast

import torch

log = logging.getLogger(__name__)

TOLERANCE = 1e-4
INTEL_MKL_ROWS = 512  # on Intel CPUs, inputs of this many rows or more go to MKL (see above)


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


def intel_cpu(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU is Intel's (MKL picks its widest kernels there)."""
    try:
        with cpuinfo.open() as lines:
            for line in lines:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip() == "GenuineIntel"
    except OSError:
        pass
    return False


def policy(setting: bool | None) -> tuple[bool, int | None]:
    """Whether to switch, and from how many rows on to hand inputs back to MKL: the operator's
    choice (true: oneDNN always; false: never), else oneDNN everywhere but Intel's large inputs."""
    if setting is not None:
        return setting, None
    if intel_cpu():
        log.info("Intel CPU: fp32 Linear layers on oneDNN below %d rows, on MKL from there", INTEL_MKL_ROWS)
        return True, INTEL_MKL_ROWS
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
