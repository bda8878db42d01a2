"""The ONNX Runtime backends: the model exported once to ONNX and run by ORT on the CPU, in fp32
(`onnx`) or with its MatMul weights quantized to int8 (`int8`: ORT's dynamic quantization, per
channel; VNNI kernels; the fastest int8 measured here, docs/benchmarks.md).

ORT fuses attention, LayerNorm and GELU and plans memory for the whole graph, which beats
PyTorch's eager CPU forward at the same fp32 precision (docs/benchmarks.md).

Exports live in the private export cache (compat_api/core/models/export_cache.py) and are
verified on a probe batch before they serve; a cached export is used without ever reading the
torch weights (they stay unmapped: loading holds one copy of the model). An export is made in a
child process (the exporter briefly holds two copies of the weights, ORT's quantizer about three):
its memory is given back before the server loads the graph.
"""

from __future__ import annotations

import logging
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from compat_api.core.errors import ModelLoadError
from compat_api.core.models.export_cache import (
    PROBE,
    REFERENCE,
    Tolerance,
    load_verified,
    make_in_child,
    model_cache,
    version_key,
)
from compat_api.core.models.runtime import Runtime, native_int8_dot

log = logging.getLogger(__name__)

OPSET = 17
GRAPH = "model.onnx"
# Largest difference from the torch model's outputs on the probe batch an export may show:
# fp32 graphs reproduce the model; int8 ones move logits by a few hundredths (docs/benchmarks.md),
# while a different model's graph differs by whole units.
TOLERANCE = {"fp32": Tolerance(1e-3, 1e-4), "int8": Tolerance(0.25, 0.3), "int8r": Tolerance(0.25, 0.3)}


class OnnxModule:
    """Callable like the torch model it replaces: `module(**inputs).logits` (or `.last_hidden_state`)."""

    def __init__(self, graph: Path, *, input_names: list[str], output: str, threads: int) -> None:
        import onnxruntime as ort

        self.output = output
        self.input_names = input_names
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelLoadError(f"cannot load the ONNX export {graph}: {exc}") from exc
        self.path = graph

    @classmethod
    def load(cls, *, path: str, output: str, runtime: Runtime, probe: Callable[[], dict[str, Any]]) -> OnnxModule:
        """The model's export from the cache (exported first, in a child process, if missing),
        verified on `probe`. The server process never reads the torch weights for it."""
        inputs = probe()
        input_names: list[str] = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in inputs]
        # int8r: 7-bit weights (reduce_range) for CPUs without VNNI, whose int8 kernels saturate;
        # its own cache entry, so instances on other CPUs sharing the NAS keep theirs
        kind = ("int8" if native_int8_dot() else "int8r") if runtime.backend == "int8" else "fp32"
        version = model_cache(path, runtime.cache_dir) / version_key(path, f"onnx-{kind}", f"{output}|{OPSET}")

        def make(directory: Path) -> None:
            make_in_child("onnx" if kind == "fp32" else kind, path, output, directory, inputs,
                          threads=runtime.threads, trust_remote_code=runtime.trust_remote_code)  # fmt: skip

        def open_(directory: Path) -> OnnxModule:
            return cls(directory / GRAPH, input_names=input_names, output=output, threads=runtime.threads)

        return load_verified(version, complete=lambda d: (d / GRAPH).is_file(), make=make, open_=open_,
                             run=lambda module: getattr(module(**inputs), output).numpy(),
                             tolerance=TOLERANCE[kind], what="ONNX export")  # fmt: skip

    def __call__(self, return_dict: bool = True, **inputs: Any) -> SimpleNamespace:
        import torch

        feed = {name: inputs[name].cpu().numpy() for name in self.input_names if name in inputs}
        result = self.session.run([self.output], feed)[0]
        return SimpleNamespace(**{self.output: torch.from_numpy(result)})

    def eval(self) -> OnnxModule:
        return self


class _Wrapper:
    """Positional inputs in, one named output out: the shape torch.onnx.export traces."""

    def __new__(cls, model: Any, input_names: list[str], output: str) -> Any:
        import torch

        class Wrapped(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, *args: Any) -> Any:
                return getattr(self.model(**dict(zip(input_names, args, strict=True)), return_dict=True), output)

        return Wrapped()


def export(model: Any, output: str, directory: Path, probe: dict[str, Any]) -> None:
    """Trace the model to ONNX with dynamic batch and sequence axes into `directory`, with the
    model's own outputs on the probe batch beside it."""
    input_names: list[str] = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in probe]
    import numpy as np
    import torch

    started = time.perf_counter()
    log.info("exporting the model to ONNX in %s (once per model version)", directory)
    # A padded dummy batch, so that the traced graph keeps the attention-mask path.
    ids = torch.full((2, 8), 5, dtype=torch.long)
    mask = torch.ones((2, 8), dtype=torch.long)
    mask[1, 5:] = 0
    dummies = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    args = tuple(dummies[name] for name in input_names)
    previous = getattr(model.config, "_attn_implementation", None)
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")  # plain ops, no data-dependent mask shortcuts
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer and deprecation chatter from the exporter
            reference = getattr(model(**probe, return_dict=True), output).float().numpy()
            np.save(directory / REFERENCE, reference)
            torch.onnx.export(
                _Wrapper(model, input_names, output),
                args,
                str(directory / GRAPH),
                input_names=input_names,
                output_names=[output],
                dynamic_axes={name: {0: "batch", 1: "sequence"} for name in input_names},
                opset_version=OPSET,
                dynamo=False,
            )
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        raise ModelLoadError(f"cannot export the model to ONNX in {directory.parent}: {reason}") from exc
    finally:
        if previous and hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation(previous)
    log.info("exported the model to ONNX in %.1fs", time.perf_counter() - started)


def quantize_graph(directory: Path, *, reduce_range: bool = False) -> None:
    """Replace the fp32 graph in `directory` by its dynamic int8 quantization (MatMul weights
    int8 per channel, activations quantized per batch; VNNI kernels on x86). `reduce_range`
    keeps weights to 7 bits, as ONNX Runtime advises for x86 CPUs without VNNI."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    started = time.perf_counter()
    log.info("quantizing the ONNX export in %s to int8", directory)
    fp32 = directory / "fp32"
    fp32.mkdir()
    for file in list(directory.iterdir()):
        if file.name not in (REFERENCE, "fp32", PROBE):
            file.rename(fp32 / file.name)
    quantize_dynamic(fp32 / GRAPH, directory / GRAPH, weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul"], use_external_data_format=True,
                     reduce_range=reduce_range)  # fmt: skip
    shutil.rmtree(fp32)
    log.info("quantized the export in %.1fs", time.perf_counter() - started)
