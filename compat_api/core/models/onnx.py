"""The ONNX Runtime backends: a loaded model exported once to ONNX and run by ORT on the CPU, in
fp32 (`onnx`) or with its MatMul weights quantized to int8 (`onnx-int8`, ORT's dynamic
quantization, per channel; VNNI kernels).

ORT fuses attention, LayerNorm and GELU and plans memory for the whole graph, which beats
PyTorch's eager CPU forward at the same fp32 precision (docs/benchmarks.md).

Exports are files that the server will run, so they are trusted only as far as the directory
that holds them: the cache (`RERANK_CACHE_DIR`, by default `.compat-api-cache` beside the model
directory, so on the NAS next to the model) must be owned by this service and private to it
(mode 0700; created so, refused otherwise). Exports live under a directory per model path and
one per model fingerprint (config, file names, sizes, times and sampled content), are written
into a staging directory and renamed into place (atomic, safe with several instances starting
at once). At export the torch model's outputs on a probe batch are stored beside the graph;
every load runs the graph on that batch and compares before it serves, so a mismatching export
is replaced, and a cached export is used without ever reading the torch weights (they stay
unmapped: loading holds one copy of the model). Older exports of the same model are pruned.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from compat_api.core.errors import ModelLoadError
from compat_api.core.fingerprint import fingerprint
from compat_api.core.models.runtime import Runtime

log = logging.getLogger(__name__)

OPSET = 17
GRAPH = "model.onnx"
REFERENCE = "probe-outputs.npy"
KEEP_VERSIONS = 2  # the one in use and the one before it (an instance may still be starting with it)
# Largest difference from the torch model's outputs on the probe batch an export may show:
# fp32 graphs reproduce the model; int8 ones move logits by a few hundredths (docs/benchmarks.md),
# while a different model's graph differs by whole units.
TOLERANCE = {"fp32": 1e-3, "int8": 0.25}


def private_dir(path: Path) -> Path:
    """`path` as a directory owned by this process's user and closed to everyone else.

    Created with mode 0700 (parents too); an existing one owned by us is narrowed to 0700; one
    owned by another user is refused, since whoever can write there chooses what we run.
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.stat()
    except OSError as exc:
        raise ModelLoadError(
            f"cannot use {path} as the export cache: {exc.strerror or exc} (set RERANK_CACHE_DIR to a "
            "writable directory of this service)"
        ) from exc
    if info.st_uid != os.geteuid():
        raise ModelLoadError(
            f"the export cache {path} belongs to uid {info.st_uid}, not to this service (uid {os.geteuid()}); "
            "refusing to run model graphs from it: remove it or set RERANK_CACHE_DIR"
        )
    if stat.S_IMODE(info.st_mode) & 0o077:
        log.warning("narrowing the export cache %s to mode 0700 (it was %o)", path, stat.S_IMODE(info.st_mode))
        try:
            path.chmod(0o700)
        except OSError as exc:
            raise ModelLoadError(f"cannot make the export cache {path} private: {exc}") from exc
    return path


def default_cache_root(model_path: str) -> Path:
    """`.compat-api-cache` beside the model directory (on FC: on the NAS, next to the model)."""
    return Path(model_path).resolve().parent / ".compat-api-cache"


def cache_root(model_path: str, configured: str) -> Path:
    """The configured cache, or the default beside the model, or (when the model's parent is
    read-only) the user's cache directory."""
    if configured:
        return private_dir(Path(configured))
    default = default_cache_root(model_path)
    try:
        return private_dir(default)
    except ModelLoadError as exc:
        fallback = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "compat-api"
        log.warning("%s; keeping exports in %s instead", exc.message, fallback)
        return private_dir(fallback)


def model_cache(model_path: str, configured: str) -> Path:
    """The directory of one model's exports: named after the model and its absolute path."""
    resolved = str(Path(model_path).resolve())
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(resolved).name)[:64] or "model"
    digest = hashlib.sha256(resolved.encode()).hexdigest()[:12]
    return private_dir(cache_root(model_path, configured) / f"{slug}-{digest}")


def export_key(path: str, output: str, kind: str = "fp32") -> str:
    """The model directory's fingerprint, salted with what shapes the export."""
    import torch
    import transformers

    return fingerprint(path, salt=f"{kind}|{output}|{OPSET}|{torch.__version__}|{transformers.__version__}")


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
    def load(cls, model: Any, *, path: str, output: str, runtime: Runtime,
             probe: Callable[[], dict[str, Any]]) -> OnnxModule:  # fmt: skip
        """The model's export from the cache (exported first if missing), verified on `probe`.
        `model` is only read when the export must be made."""
        import numpy as np

        inputs = probe()
        input_names: list[str] = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in inputs]
        kind = "int8" if runtime.backend == "onnx-int8" else "fp32"
        directory = model_cache(path, runtime.cache_dir)
        version = directory / export_key(path, output, kind)
        difference = float("inf")
        for attempt in range(2):
            if not (version / GRAPH).is_file() or not (version / REFERENCE).is_file():
                export(model, input_names, output, version, inputs, quantize=kind == "int8")
            module = cls(version / GRAPH, input_names=input_names, output=output, threads=runtime.threads)
            difference = module.deviation(inputs, np.load(version / REFERENCE))
            if difference <= TOLERANCE[kind]:
                break
            log.error("the ONNX export %s differs from the model by %.3g on the probe batch; %s", version,
                      difference, "exporting it again" if attempt == 0 else "giving up")  # fmt: skip
            shutil.rmtree(version, ignore_errors=True)
        else:
            raise ModelLoadError(f"the ONNX export of {path} does not reproduce the model (max difference "
                                 f"{difference:.3g} on the probe batch)")  # fmt: skip
        os.utime(version)
        prune(directory, keep=version)
        return module

    def deviation(self, inputs: dict[str, Any], expected: Any) -> float:
        import numpy as np

        got = getattr(self(**inputs), self.output).numpy()
        if got.shape != expected.shape:
            return float("inf")
        return float(np.max(np.abs(got - expected))) if got.size else 0.0

    def __call__(self, return_dict: bool = True, **inputs: Any) -> SimpleNamespace:
        import torch

        feed = {name: inputs[name].cpu().numpy() for name in self.input_names if name in inputs}
        result = self.session.run([self.output], feed)[0]
        return SimpleNamespace(**{self.output: torch.from_numpy(result)})

    def eval(self) -> OnnxModule:
        return self


def prune(directory: Path, keep: Path) -> None:
    """Delete all but the most recently used exports of one model (and abandoned staging dirs)."""
    versions = sorted((p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")),
                      key=lambda p: p.stat().st_mtime, reverse=True)  # fmt: skip
    for old in [v for v in versions if v != keep][KEEP_VERSIONS - 1 :]:
        log.info("pruning an old ONNX export %s", old)
        shutil.rmtree(old, ignore_errors=True)
    for staging in directory.glob(".staging-*"):
        if time.time() - staging.stat().st_mtime > 24 * 3600:
            shutil.rmtree(staging, ignore_errors=True)


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


def export(model: Any, input_names: list[str], output: str, target: Path, probe: dict[str, Any], *,
           quantize: bool = False) -> None:  # fmt: skip
    """Trace the model to ONNX with dynamic batch and sequence axes into `target` (a directory),
    with the model's own outputs on the probe batch beside it, through a uniquely named staging
    directory renamed into place. `quantize` stores the int8 quantization of the graph instead."""
    import numpy as np
    import torch

    started = time.perf_counter()
    log.info("exporting the model to ONNX at %s (once per model version%s)", target, ", then int8" if quantize else "")
    # A padded dummy batch, so that the traced graph keeps the attention-mask path.
    ids = torch.full((2, 8), 5, dtype=torch.long)
    mask = torch.ones((2, 8), dtype=torch.long)
    mask[1, 5:] = 0
    dummies = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    args = tuple(dummies[name] for name in input_names)
    previous = getattr(model.config, "_attn_implementation", None)
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")  # plain ops, no data-dependent mask shortcuts
    staging: Path | None = None
    try:
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer and deprecation chatter from the exporter
            reference = getattr(model(**probe, return_dict=True), output).float().numpy()
            np.save(staging / REFERENCE, reference)
            torch.onnx.export(
                _Wrapper(model, input_names, output),
                args,
                str(staging / GRAPH),
                input_names=input_names,
                output_names=[output],
                dynamic_axes={name: {0: "batch", 1: "sequence"} for name in input_names},
                opset_version=OPSET,
                dynamo=False,
            )
        if quantize:
            quantize_graph(staging)
        try:
            staging.rename(target)
        except OSError:
            if not (target / GRAPH).is_file():  # not another instance's finished export: a real failure
                raise
            log.info("another instance exported %s meanwhile; using theirs", target)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        raise ModelLoadError(f"cannot export the model to ONNX in {target.parent}: {reason}") from exc
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if previous and hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation(previous)
    log.info("exported the model to ONNX in %.1fs", time.perf_counter() - started)


def quantize_graph(directory: Path) -> None:
    """Replace the fp32 graph in `directory` by its dynamic int8 quantization (MatMul weights
    int8 per channel, activations quantized per batch; VNNI kernels on x86)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = directory / "fp32"
    fp32.mkdir()
    for file in list(directory.iterdir()):
        if file.name not in (REFERENCE, "fp32"):
            file.rename(fp32 / file.name)
    quantize_dynamic(fp32 / GRAPH, directory / GRAPH, weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul"], use_external_data_format=True)  # fmt: skip
    shutil.rmtree(fp32)
