"""Runtimes: where and in which precision a loaded torch model runs (torch fp32/fp16, int8, ONNX)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from compat_api.core.errors import ModelLoadError

log = logging.getLogger(__name__)

Backend = Literal["torch", "int8", "onnx"]


@dataclass(frozen=True)
class Runtime:
    """Where and how a model runs, and what its loading may trust.

    `cache_dir` holds exports (empty: beside the model directory); `trust_remote_code` lets a
    model directory's own Python code run (off unless the operator opts in).
    """

    device: str = "cpu"
    fp16: bool = False
    backend: Backend = "torch"
    threads: int = 1
    cache_dir: str = ""
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if self.backend != "torch" and self.device != "cpu":
            raise ModelLoadError(
                f"the {self.backend} backend runs on the CPU only (device is {self.device!r}); use fp16 on GPUs"
            )


@dataclass(frozen=True)
class Prepared:
    """A model ready to serve: callable like the torch model, and what it runs as."""

    module: Any
    dtype: str


def prepare(model: Any, path: str, output: str, runtime: Runtime, probe: Callable[[], dict[str, Any]]) -> Prepared:
    """Move the model to its device and precision; `int8` quantizes its Linear layers and `onnx`
    exports it to ONNX Runtime (both CPU only). `probe` gives a small batch of real inputs, on
    which an export is checked against the torch model before it serves."""
    device, backend = runtime.device, runtime.backend
    if backend == "onnx":
        from compat_api.core.models.onnx import OnnxModule

        module = OnnxModule.load(model.float().eval(), path=path, output=output, runtime=runtime, probe=probe)
        return Prepared(module, "float32")
    if backend == "int8":
        own_memory(model)  # embeddings and norms stay float tensors
        return Prepared(quantize_int8(model.float().eval()), "int8")
    if runtime.fp16 and device != "cpu":
        model = model.half()
    model = model.to(device).eval()
    if device == "cpu":
        own_memory(model)
    return Prepared(model, str(next(model.parameters()).dtype).removeprefix("torch."))


def quantize_int8(model: Any) -> Any:
    """torch's dynamic int8 quantization of every Linear layer (weights int8, activations
    quantized per batch)."""
    import torch

    with warnings.catch_warnings():
        # torch.ao's eager quantization is deprecated in favour of torchao, which has no
        # CPU dynamic-int8 path for these models yet; the API still works in torch 2.13.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)  # type: ignore[no-untyped-call]


def own_memory(model: Any) -> None:
    """Copy weights that still live in the memory-mapped weight file into the process's own memory.

    safetensors loads by mmap; a new model uploaded over the old file (in place, as NAS uploads
    do) would pull the pages from under the running model and kill the process with SIGBUS.
    Moving to a GPU copies anyway; on the CPU this one copy makes hot swap safe.
    """
    import torch

    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.data = tensor.data.clone()
