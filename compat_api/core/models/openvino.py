"""The OpenVINO backend: the loaded model converted once to OpenVINO and run on the CPU in fp32
(`openvino`: the same scores as the model, the fastest exact path measured here).

OpenVINO plans the whole graph with fused attention, LayerNorm and GELU kernels for x86 and
keeps weights in the layouts its matrix kernels want, which beats PyTorch's eager forward at
the same fp32 precision (docs/benchmarks.md). The conversion (`openvino.convert_model` from the
torch module, no ONNX step) is saved as IR in the private export cache and verified on a probe
batch before it serves (compat_api/core/models/export_cache.py). Each lane runs its own infer
request on one compiled model (one copy of the weights), with its own threads.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from compat_api.core.errors import ModelLoadError
from compat_api.core.models.export_cache import (
    REFERENCE,
    Tolerance,
    load_verified,
    make_in_child,
    model_cache,
    version_key,
)
from compat_api.core.models.runtime import Runtime

log = logging.getLogger(__name__)

IR = "model.xml"
TOLERANCE = Tolerance(1e-3, 1e-4)


class OpenVinoModule:
    """Callable like the torch model it replaces: `module(**inputs).logits` (or `.last_hidden_state`)."""

    def __init__(self, ir: Path, *, output: str, threads: int, lanes: int) -> None:
        import openvino as ov

        self.output = output
        core = ov.Core()
        config = {
            "INFERENCE_PRECISION_HINT": "f32",  # never silently bf16 on AMX CPUs
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": lanes,
            "INFERENCE_NUM_THREADS": threads * lanes,
        }
        try:
            self.compiled = core.compile_model(core.read_model(ir), "CPU", config)
        except Exception as exc:
            raise ModelLoadError(f"cannot load the OpenVINO model {ir}: {exc}") from exc
        self.input_names = {port.get_any_name() for port in self.compiled.inputs}
        self._local = threading.local()

    @classmethod
    def load(cls, *, path: str, output: str, runtime: Runtime, lanes: int,
             probe: Callable[[], dict[str, Any]]) -> OpenVinoModule:  # fmt: skip
        """The model's conversion from the cache (made first, in a child process, if missing),
        verified on `probe`. The server process never reads the torch weights for it."""
        import openvino

        inputs = probe()
        version = model_cache(path, runtime.cache_dir) / version_key(
            path, "openvino", f"{output}|{openvino.__version__}"
        )

        def open_(directory: Path) -> OpenVinoModule:
            return cls(directory / IR, output=output, threads=runtime.threads, lanes=lanes)

        def make(directory: Path) -> None:
            make_in_child("openvino", path, output, directory, inputs, threads=runtime.threads,
                          trust_remote_code=runtime.trust_remote_code)  # fmt: skip

        return load_verified(version, complete=lambda d: (d / IR).is_file(), make=make, open_=open_,
                             run=lambda module: getattr(module(**inputs), output).numpy(),
                             tolerance=TOLERANCE, what="OpenVINO model")  # fmt: skip

    def __call__(self, return_dict: bool = True, **inputs: Any) -> SimpleNamespace:
        import torch

        request = getattr(self._local, "request", None)
        if request is None:  # one infer request per lane thread
            request = self._local.request = self.compiled.create_infer_request()
        feed = {name: value.cpu().numpy() for name, value in inputs.items() if name in self.input_names}
        result = request.infer(feed)
        return SimpleNamespace(**{self.output: torch.from_numpy(result[0].copy())})

    def eval(self) -> OpenVinoModule:
        return self


def convert(model: Any, output: str, directory: Path, probe: dict[str, Any]) -> None:
    """Convert the torch model to OpenVINO IR (fp32 weights) in `directory`, with the model's own
    outputs on the probe batch beside it."""
    import numpy as np
    import openvino as ov
    import torch

    started = time.perf_counter()
    log.info("converting the model to OpenVINO in %s (once per model version)", directory)
    names = list(probe)

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
            return getattr(self.model(input_ids=input_ids, attention_mask=attention_mask, **extra, return_dict=True),
                           output)  # fmt: skip

    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer chatter
            np.save(directory / REFERENCE, getattr(model(**probe, return_dict=True), output).float().numpy())
            ids = torch.full((2, 8), 5, dtype=torch.long)
            mask = torch.ones((2, 8), dtype=torch.long)
            mask[1, 5:] = 0
            example = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
            converted = ov.convert_model(Wrapped(), example_input={n: example[n] for n in names})
            ov.save_model(converted, str(directory / IR), compress_to_fp16=False)
    except Exception as exc:
        raise ModelLoadError(f"cannot convert the model to OpenVINO in {directory.parent}: "
                             f"{type(exc).__name__}: {exc}") from exc  # fmt: skip
    log.info("converted the model to OpenVINO in %.1fs", time.perf_counter() - started)
