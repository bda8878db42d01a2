"""The ONNX Runtime backend: a loaded model exported once to ONNX and run by ORT on the CPU.

ORT fuses attention, LayerNorm and GELU and plans memory for the whole graph, which beats
PyTorch's eager CPU forward at the same fp32 precision (docs/benchmarks.md). The export is
cached under a directory named by the model's fingerprint (config and weight files), so a
restart or another instance on the same disk reuses it and a replaced model is exported anew.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from compat_api.core.errors import ModelLoadError
from compat_api.core.fingerprint import fingerprint

log = logging.getLogger(__name__)

OPSET = 17


def export_key(path: str, output: str) -> str:
    """The model directory's fingerprint, salted with what shapes the export."""
    import torch
    import transformers

    return fingerprint(path, salt=f"{output}|{OPSET}|{torch.__version__}|{transformers.__version__}")


class OnnxModule:
    """Callable like the torch model it replaces: `module(**inputs).logits` (or `.last_hidden_state`)."""

    def __init__(self, model: Any, *, path: str, input_names: list[str], output: str, threads: int,
                 cache_dir: str) -> None:  # fmt: skip
        import onnxruntime as ort

        self.output = output
        self.input_names = input_names
        target = Path(cache_dir) / export_key(path, output) / "model.onnx"
        if not target.is_file():
            export(model, input_names, output, target)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(target), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelLoadError(f"cannot load the ONNX export {target}: {exc} (delete it to re-export)") from exc
        self.path = target

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


def export(model: Any, input_names: list[str], output: str, target: Path) -> None:
    """Trace the model to ONNX with dynamic batch and sequence axes; written atomically."""
    import torch

    started = time.perf_counter()
    log.info("exporting the model to ONNX at %s (once per model version)", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # A padded dummy batch, so that the traced graph keeps the attention-mask path.
    ids = torch.full((2, 8), 5, dtype=torch.long)
    mask = torch.ones((2, 8), dtype=torch.long)
    mask[1, 5:] = 0
    dummies = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    args = tuple(dummies[name] for name in input_names)
    previous = getattr(model.config, "_attn_implementation", None)
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")  # plain ops, no data-dependent mask shortcuts
    partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer and deprecation chatter from the exporter
            torch.onnx.export(
                _Wrapper(model, input_names, output),
                args,
                str(partial),
                input_names=input_names,
                output_names=[output],
                dynamic_axes={name: {0: "batch", 1: "sequence"} for name in input_names},
                opset_version=OPSET,
                dynamo=False,
            )
        partial.replace(target)
    except Exception as exc:
        raise ModelLoadError(f"cannot export the model to ONNX: {type(exc).__name__}: {exc}") from exc
    finally:
        partial.unlink(missing_ok=True)
        if previous and hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation(previous)
    log.info("exported the model to ONNX in %.1fs", time.perf_counter() - started)
