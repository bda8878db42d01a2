"""Runtimes: where and in which precision a loaded torch model runs.

| backend | runs | precision | where |
|---|---|---|---|
| `torch` | PyTorch eager (CPU: Linear layers on oneDNN) | fp32 (fp16 on a GPU by default) | CPU, GPU |
| `bf16` | PyTorch eager, oneDNN bf16 kernels | bf16 | CPUs with AVX512-BF16 or AMX only |
| `int8` | ONNX Runtime, the export's MatMuls dynamic int8 | int8 weights | CPU |
| `onnx` | ONNX Runtime | fp32 | CPU |
| `openvino` | OpenVINO | fp32 | CPU |
| `openvino-int8` | OpenVINO, static int8 (weights and activations, calibrated once) | int8 (bf16 elsewhere) | CPU |

The torch backends take the weights out of the memory-mapped file one tensor at a time (see
`own_memory`), converting as they go, so loading never holds two copies; a large input
embedding (XLM-R's 250k pieces) is not loaded at all: its rows are read as tokens use them
from a copy kept in the export cache (lazy_rows.py). The others load a cached export and never
read the torch weights at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from compat_api.core.errors import ModelLoadError
from compat_api.core.models.cpu import this_cpu

log = logging.getLogger(__name__)

Backend = Literal["torch", "bf16", "int8", "onnx", "openvino", "openvino-int8"]
CPU_ONLY = ("bf16", "int8", "onnx", "openvino", "openvino-int8")


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
    lanes: int = 1
    onednn_linear: bool | None = None  # fp32 Linears on oneDNN (CPU torch backend; None: by CPU; onednn.py)

    def __post_init__(self) -> None:
        if self.backend in CPU_ONLY and self.device != "cpu":
            raise ModelLoadError(
                f"the {self.backend} backend runs on the CPU only (device is {self.device!r}); use fp16 on GPUs"
            )
        if self.backend == "bf16":
            require_native_bf16()


@dataclass(frozen=True)
class Prepared:
    """A model ready to serve: callable like the torch model, and what it runs as."""

    module: Any
    dtype: str


def prepare(model: Any, path: str, output: str, runtime: Runtime, probe: Callable[[], dict[str, Any]]) -> Prepared:
    """The loaded (still memory-mapped) model made ready to serve on its backend. `probe` gives a
    small batch of real inputs, on which an ONNX export is checked before it serves."""
    import torch

    backend = runtime.backend
    if backend in ("openvino", "openvino-int8"):
        from compat_api.core.models.openvino import OpenVinoModule

        converted = OpenVinoModule.load(path=path, output=output, runtime=runtime, lanes=runtime.lanes, probe=probe)
        return Prepared(converted, "int8" if backend == "openvino-int8" else "float32")
    if backend in ("onnx", "int8"):
        from compat_api.core.models.onnx import OnnxModule

        module = OnnxModule.load(path=path, output=output, runtime=runtime, probe=probe)
        return Prepared(module, "int8" if backend == "int8" else "float32")
    pin = _pin(path, runtime)
    if backend == "bf16":
        from compat_api.core.models.bf16_attention import use_bf16_attention

        own_memory(model, torch.bfloat16, pin=pin)
        log.info("bf16 attention: %s", "bf16 matrix products" if use_bf16_attention(model) else "the model's own")
        return Prepared(model.eval(), "bfloat16")
    if runtime.fp16 and runtime.device != "cpu":
        model = model.half()
    if runtime.device == "cpu":
        own_memory(model, pin=pin)
        trim_heap()
    model = model.to(runtime.device).eval()
    if runtime.device == "cpu":
        from compat_api.core.models.onednn import policy, use_onednn_linears

        switch, mkl_rows = policy(runtime.onednn_linear)
        if switch:
            log.info("fp32 Linear layers on oneDNN's kernels: %d", use_onednn_linears(model, mkl_rows))
    return Prepared(model, str(next(model.parameters()).dtype).removeprefix("torch."))


def _pin(path: str, runtime: Runtime) -> Pin:
    def pin(source: str, offset: int, nbytes: int) -> Path:
        from compat_api.core.models.lazy_rows import pin_rows

        return pin_rows(path, runtime.cache_dir, source, offset, nbytes)

    return pin


def trim_heap() -> None:
    """Give the C heap's freed pages back to the system (glibc keeps them otherwise): loading
    leaves tens of MB of them behind, which would count at the load's peak."""
    import contextlib
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to give back this way
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _cpu_has(probes: tuple[str, ...], flags: tuple[str, ...]) -> bool:
    """Whether torch's CPU probes (`torch.cpu._is_<probe>_supported`) say yes to any of `probes`;
    with an older torch that lacks them, whether /proc/cpuinfo lists any of `flags`."""
    import torch

    try:
        return any(bool(getattr(torch.cpu, f"_is_{probe}_supported")()) for probe in probes)
    except AttributeError:
        cpu = this_cpu()
        return cpu is not None and not cpu.flags.isdisjoint(flags)


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX): emulated bf16 is slower than fp32."""
    return _cpu_has(("avx512_bf16", "amx_tile"), ("avx512_bf16", "amx_bf16"))


def native_int8_dot() -> bool:
    """Whether this CPU has int8 dot-product instructions (VNNI, AMX-INT8). Without them, ONNX
    Runtime's int8 kernels multiply with 16-bit saturating sums, so weights need 7 bits."""
    return _cpu_has(("vnni", "amx_tile"), ("avx512_vnni", "avx_vnni", "amx_int8"))


def require_native_bf16() -> None:
    if not native_bf16():
        raise ModelLoadError(
            "RERANK_BACKEND=bf16 needs a CPU with native bf16 (AVX512-BF16 or AMX, e.g. Intel Xeon Cooper Lake, "
            "Sapphire Rapids or later); this CPU has neither, and emulated bf16 is slower than fp32. "
            "Use RERANK_BACKEND=int8 (fastest on such CPUs) or torch"
        )


LAZY_MIN_BYTES = 64 << 20  # XLM-R's 250k x 1024 fp32 is 977 MiB; BERT's 30k x 384, 45 MiB
Pin = Callable[[str, int, int], Path]  # (weight file, offset, bytes) -> a stable copy of those bytes


def own_memory(model: Any, dtype: Any = None, *, pin: Pin | None = None) -> None:
    """Move weights that still live in a memory-mapped weight file into the process's own memory
    (converting floating-point ones to `dtype` when given).

    transformers maps safetensors files and hands out views into the mapping, faulted in lazily.
    A new model uploaded over the file in place (as NAS uploads do) would pull the pages from
    under the running model and kill the process with SIGBUS, so the server owns its weights.
    Copying through the mapping would make every page resident twice (the mapped file and the
    copy: 2x the weights at the peak); instead each tensor is read from the file itself into its
    new memory, in 64 MiB pieces on a few threads (page faults and reads overlap), so the mapping
    is never touched and the peak stays at one copy. Tensors that are not mapped (computed
    buffers, GPU tensors) are copied (or converted) as they are. With `pin`, the input embedding
    is not loaded: `pin` keeps a copy of its bytes where no upload reaches them, from which its
    rows are read as tokens use them (lazy_rows.py).
    """
    import torch

    mapped = _mapped_files()
    copies: dict[tuple[int, Any], Any] = {}
    reads: list[tuple[str, int, Any, Any]] = []
    with torch.no_grad():
        lazy = _read_rows_lazily(model, mapped, dtype, pin) if pin is not None else 0
        tensors = [t for t in (*model.parameters(), *model.buffers()) if not (lazy and t.data_ptr() == lazy)]
        for tensor in tensors:
            target = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
            key = (tensor.data_ptr(), target)
            if key in copies:
                continue
            source = _mapping_of(tensor, mapped)
            if source is None:
                copies[key] = tensor.data.to(target, copy=True)
            else:
                copies[key] = torch.empty(tensor.shape, dtype=target)
                reads.append((source[0], source[1], tensor, copies[key]))
        _read_all(reads)
        for tensor in tensors:
            target = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
            tensor.data = copies[(tensor.data_ptr(), target)]


def _read_rows_lazily(model: Any, mapped: list[tuple[int, int, str, int]], dtype: Any, pin: Pin) -> int:
    """Turn the model's input embedding, when it is mapped from its weight file, into rows read on
    demand from `pin`'s copy (see lazy_rows.py); the address of its new matrix, or 0 (loaded whole)."""
    from compat_api.core.models.lazy_rows import LazyRows, input_embedding

    embedding = input_embedding(model)
    source = _mapping_of(embedding.weight, mapped) if embedding is not None else None
    if source is None:
        return 0
    weight = embedding.weight
    nbytes = weight.numel() * weight.element_size()
    if nbytes < LAZY_MIN_BYTES:  # a small vocabulary: not worth a copy on disk
        return 0
    try:
        rows = pin(source[0], source[1], nbytes)
        target = dtype if dtype is not None and weight.is_floating_point() else weight.dtype
        lazy = LazyRows(embedding, str(rows), 0, target)  # opens the copy first: on failure nothing changed
    except (ModelLoadError, OSError) as exc:
        log.warning("input embedding loaded whole: no copy of its rows could be kept (%s)", exc)
        return 0
    log.info("input embedding %s: rows read from %s as tokens use them", tuple(lazy.matrix.shape), rows)
    return int(lazy.matrix.data_ptr())


_CHUNK = 64 << 20
_READERS = 4


def _mapped_files() -> list[tuple[int, int, str, int]]:
    """(start, end, path, file offset) of every weight file this process has mapped."""
    found = []
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:  # not Linux: every tensor is simply copied
        return []
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].endswith((".safetensors", ".bin")):
            start, end = (int(x, 16) for x in parts[0].split("-"))
            found.append((start, end, parts[5], int(parts[2], 16)))
    return found


def _mapping_of(tensor: Any, mapped: list[tuple[int, int, str, int]]) -> tuple[str, int] | None:
    if tensor.device.type != "cpu" or not tensor.is_contiguous() or not mapped:
        return None
    pointer, size = tensor.data_ptr(), tensor.numel() * tensor.element_size()
    for start, end, path, offset in mapped:
        if start <= pointer and pointer + size <= end:
            return path, pointer - start + offset
    return None


def _read_all(reads: list[tuple[str, int, Any, Any]]) -> None:
    """Fill each destination tensor with the bytes of its source tensor read from the file at
    its offset (converted to the destination's dtype), in pieces spread over a few threads."""
    from concurrent.futures import ThreadPoolExecutor

    pieces = []
    for path, offset, like, out in reads:
        size = like.element_size()
        nbytes = like.numel() * size
        step = max(size, _CHUNK // size * size)
        pieces += [(path, offset, like, out, start, min(step, nbytes - start)) for start in range(0, nbytes, step)]
    with ThreadPoolExecutor(_READERS) as pool:
        for _ in pool.map(lambda piece: _read_piece(*piece), pieces):
            pass


def _read_piece(path: str, offset: int, like: Any, out: Any, start: int, size: int) -> None:
    import torch

    first, count = start // like.element_size(), size // like.element_size()
    if out.dtype == like.dtype:
        buffer = out.view(-1)[first : first + count].view(torch.uint8)
    else:
        buffer = torch.empty(size, dtype=torch.uint8)
    view = memoryview(buffer.numpy().data)
    with open(path, "rb", buffering=0) as handle:
        handle.seek(offset + start)
        while view.nbytes:
            read = handle.readinto(view)
            if not read:
                raise OSError(f"{path} ended before its tensor did (was it replaced while loading?)")
            view = view[read:]
    if out.dtype != like.dtype:
        out.view(-1)[first : first + count] = buffer.view(like.dtype)
