"""The OpenVINO backends: the loaded model converted once to OpenVINO and run on the CPU, in fp32
(`openvino`: the same scores as the model) or with int8 weights (`openvino-int8`).

OpenVINO plans the whole graph with fused attention, LayerNorm and GELU kernels for x86 and
keeps weights in the layouts its matrix kernels want, which beats PyTorch's eager forward at
the same fp32 precision (docs/benchmarks.md). The conversion (`openvino.convert_model` from the
torch module, no ONNX step) is saved as IR in the private export cache and verified on a probe
batch before it serves (compat_api/core/models/export_cache.py). Each lane runs its own infer
request on one compiled model (one copy of the weights), with its own threads.

`openvino-int8` quantizes the converted model statically (NNCF's post-training quantization,
model type TRANSFORMER: int8 weights per output channel and int8 activations, attention's own
products included, each activation's scale calibrated on real query–passage text tokenized by
the model's tokenizer, calibration.py); the export child does it once. Every MatMul then runs
on the CPU's int8 instructions (VNNI, AMX) and the rest of the graph in bf16 where the CPU
computes bf16 natively, fp32 elsewhere. The embedding tables (Gather) are left in fp32: OpenVINO
reads them from the memory-mapped IR as they are, where an int8 table would be decompressed into
a private fp32 copy at compile time (1 GiB more for XLM-R's 250k pieces). On CPUs without VNNI,
whose int8 kernels sum pairs of products in saturating 16 bits, every layer's weights take 7
bits (NNCF's overflow fix; cache kind `openvino-int8r`), as the `int8` backend does. Measured on the
v2-m3-size model (`python -m bench.realsize`, docs/benchmarks.md): about twice as fast as ONNX
Runtime's dynamic int8 (the `int8` backend) on an AMX Xeon; on an AVX2 EPYC without VNNI no faster
than fp32 (1.02x, where `int8` ran 1.77x), so there it serves with a warning that says so.
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
TOLERANCE = {"openvino": Tolerance(1e-3, 1e-4), "openvino-int8": Tolerance(0.25, 0.3),
             "openvino-int8r": Tolerance(0.25, 0.3)}  # fmt: skip
METHOD = "static-1"  # how openvino-int8 quantizes: part of its cache key, so a changed method makes it again


class OpenVinoModule:
    """Callable like the torch model it replaces: `module(**inputs).logits` (or `.last_hidden_state`)."""

    def __init__(self, ir: Path, *, output: str, threads: int, lanes: int, int8: bool = False) -> None:
        import openvino as ov

        from compat_api.core.models.runtime import native_bf16

        self.output = output
        core = ov.Core()
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": "f32",  # never silently bf16 on AMX CPUs
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": lanes,
            "INFERENCE_NUM_THREADS": threads * lanes,
        }
        if int8:  # the MatMuls are int8 already; the rest in bf16 where that is native
            config["INFERENCE_PRECISION_HINT"] = "bf16" if native_bf16() else "f32"
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

        from compat_api.core.models.runtime import native_int8_dot

        inputs = probe()
        kind = "openvino"
        if runtime.backend == "openvino-int8":
            # int8r: 7-bit weights for CPUs without VNNI, whose int8 kernels sum pairs in saturating
            # 16 bits; its own cache entry, so instances on other CPUs sharing the NAS keep theirs
            kind = "openvino-int8" if native_int8_dot() else "openvino-int8r"
            if kind == "openvino-int8r":
                log.warning("RERANK_BACKEND=openvino-int8 on a CPU without VNNI: OpenVINO's int8 kernels run here "
                            "no faster than fp32 (measured on an AVX2 EPYC, docs/benchmarks.md); RERANK_BACKEND=int8 "
                            "(ONNX Runtime) is about 1.8x fp32 on such CPUs")  # fmt: skip
        salt = f"{output}|{openvino.__version__}" + (f"|{METHOD}" if kind != "openvino" else "")
        version = model_cache(path, runtime.cache_dir) / version_key(path, kind, salt)

        def open_(directory: Path) -> OpenVinoModule:
            return cls(directory / IR, output=output, threads=runtime.threads, lanes=lanes, int8=kind != "openvino")

        def make(directory: Path) -> None:
            make_in_child(kind, path, output, directory, inputs, threads=runtime.threads,
                          trust_remote_code=runtime.trust_remote_code)  # fmt: skip

        return load_verified(version, complete=lambda d: (d / IR).is_file(), make=make, open_=open_,
                             run=lambda module: getattr(module(**inputs), output).float().numpy(),
                             tolerance=TOLERANCE[kind], what="OpenVINO model")  # fmt: skip

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


def quantize(directory: Path, samples: list[dict[str, Any]], *, seven_bit: bool = False) -> None:
    """Quantize the converted model in `directory` to int8, in place: NNCF's static post-training
    quantization calibrated on `samples` (calibration.py), embedding lookups left in fp32; with
    `seven_bit`, every layer's weights in 7 bits (NNCF's overflow fix, for CPUs without VNNI)."""
    import nncf  # type: ignore[import-untyped,unused-ignore]
    import openvino as ov

    started = time.perf_counter()
    log.info("quantizing the OpenVINO model to int8 on %d calibration inputs (once per model version)", len(samples))
    model = nncf.quantize(ov.Core().read_model(str(directory / IR)), nncf.Dataset(samples),
                          model_type=nncf.ModelType.TRANSFORMER, subset_size=len(samples),
                          ignored_scope=nncf.IgnoredScope(types=["Gather"]),
                          advanced_parameters=nncf.AdvancedQuantizationParameters(
                              overflow_fix=nncf.OverflowFix.ENABLE if seven_bit else None))  # fmt: skip
    staged = directory / "int8" / IR
    staged.parent.mkdir()
    ov.save_model(model, str(staged), compress_to_fp16=False)
    del model
    for name in (IR, IR.replace(".xml", ".bin")):
        (staged.parent / name).replace(directory / name)
    staged.parent.rmdir()
    log.info("quantized the OpenVINO model to int8 in %.1fs", time.perf_counter() - started)
