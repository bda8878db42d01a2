"""Where exported and converted models are kept, and why they can be trusted.

Exports are files the server will run, so they are trusted only as far as the directory that
holds them: the cache (`RERANK_CACHE_DIR`, by default `.compat-api-cache` beside the model
directory, so on the NAS next to the model) must be owned by this service and private to it
(mode 0700; created so, refused otherwise). Each model has a directory named after its path,
with one directory per version (a fingerprint of the model's files salted with what shapes the
export); a version is written into a uniquely named staging directory and renamed into place
(atomic, safe with several instances starting at once), with the torch model's outputs on a
probe batch stored beside it. Every load runs the export on that batch and compares before it
serves; a mismatching export is deleted and made again. Older versions are pruned.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from compat_api.core.children import child_environment, die_with_parent
from compat_api.core.errors import ModelLoadError
from compat_api.core.fingerprint import fingerprint

log = logging.getLogger(__name__)

REFERENCE = "probe-outputs.npy"
PROBE = "probe.npz"
KEEP_VERSIONS = 2  # the one in use and the one before it (an instance may still be starting with it)
M = TypeVar("M")


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


def version_key(path: str, kind: str, salt: str) -> str:
    """`<kind>-<fingerprint>`: the export's kind (onnx-fp32, onnx-int8, openvino), then the model
    directory's fingerprint salted with what shapes the export (its settings, the exporter's
    versions). Each kind keeps its own versions."""
    import torch
    import transformers

    return f"{kind}-" + fingerprint(path, salt=f"{kind}|{salt}|{torch.__version__}|{transformers.__version__}")


def prune(directory: Path, keep: Path) -> None:
    """Delete all but the most recently used versions of `keep`'s kind in one model's directory
    (other kinds are other backends' exports), and abandoned staging directories."""
    kind = keep.name.rsplit("-", 1)[0]
    versions = sorted((p for p in directory.iterdir() if p.is_dir() and p.name.rsplit("-", 1)[0] == kind),
                      key=_mtime, reverse=True)  # fmt: skip
    for old in [v for v in versions if v != keep][KEEP_VERSIONS - 1 :]:
        log.info("pruning an old export %s", old)
        shutil.rmtree(old, ignore_errors=True)
    for abandoned in directory.glob(".staging-*"):
        if time.time() - _mtime(abandoned) > 24 * 3600:
            shutil.rmtree(abandoned, ignore_errors=True)


def _mtime(path: Path) -> float:
    """When `path` was last modified; now if it is gone meanwhile (another instance renamed or
    removed it between the listing and this look), so that it is left alone."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return time.time()


def _sync(directory: Path) -> None:
    """Flush every file under `directory`, then the directories, itself last, to the disk."""
    for path in [*sorted(directory.rglob("*"), key=lambda p: p.is_dir()), directory]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextmanager
def staging(target: Path) -> Iterator[Path]:
    """A uniquely named directory beside `target`, renamed to it when the block succeeds (or
    dropped if another instance finished `target` first); removed if the block fails."""
    directory = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    try:
        yield directory
        _sync(directory)  # on disk before it is named: a crash must not leave a named, truncated export
        try:
            directory.rename(target)
        except OSError:
            if not target.is_dir() or not any(target.iterdir()):  # not another instance's finished export
                raise
            log.info("another instance made %s meanwhile; using theirs", target)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@dataclass(frozen=True)
class Tolerance:
    """How far an export's probe outputs may be from the torch model's: within `absolute` at
    every element, or within `relative` in L2 norm over the whole output (hidden states of
    embedding models have a few large dimensions, where int8's error is larger in absolute terms).
    """

    absolute: float
    relative: float

    def excess(self, got: Any, expected: Any) -> float:
        """At most 1 when `got` is within tolerance (and how far it is otherwise)."""
        import numpy as np

        if got.shape != expected.shape:
            return float("inf")
        if not got.size:
            return 0.0
        absolute = float(np.max(np.abs(got - expected)))
        norm = float(np.linalg.norm(expected))
        relative = float(np.linalg.norm(got - expected)) / norm if norm else absolute
        return min(absolute / self.absolute, relative / self.relative)


def load_verified(version: Path, *, complete: Callable[[Path], bool], make: Callable[[Path], None],
                  open_: Callable[[Path], M], run: Callable[[M], Any], tolerance: Tolerance,
                  what: str) -> M:  # fmt: skip
    """The export in `version`, made first if missing, whose probe outputs (`run`) reproduce the
    stored ones within `tolerance`; made once more if they do not; then the model's older
    versions pruned."""
    import numpy as np

    excess = float("inf")
    for attempt in range(2):
        if not complete(version) or not (version / REFERENCE).is_file():
            shutil.rmtree(version, ignore_errors=True)
            with staging(version) as directory:
                make(directory)
        try:
            module = open_(version)
            excess = tolerance.excess(run(module), np.load(version / REFERENCE))
        except (ModelLoadError, OSError, ValueError) as exc:  # a damaged file (a copy cut short, a full disk)
            if attempt:
                raise
            log.error("the %s %s cannot be used (%s); making it again", what, version, exc)
            shutil.rmtree(version, ignore_errors=True)
            continue
        if excess <= 1:
            os.utime(version)
            prune(version.parent, keep=version)
            return module
        log.error("the %s %s differs from the model by %.3g times its tolerance on the probe batch; %s", what,
                  version, excess, "making it again" if attempt == 0 else "giving up")  # fmt: skip
        shutil.rmtree(version, ignore_errors=True)
    raise ModelLoadError(f"the {what} in {version.parent} does not reproduce the model ({excess:.3g} times the "
                         "tolerance on the probe batch)")  # fmt: skip


def make_in_child(kind: str, path: str, output: str, directory: Path, inputs: dict[str, Any], *, threads: int,
                  trust_remote_code: bool) -> None:  # fmt: skip
    """Make an export (`kind`: onnx, int8, int8r (7-bit weights), openvino, openvino-int8,
    openvino-int8r (7-bit weights)) of the model at `path` into `directory` in a child process:
    making one holds the torch model and another copy of its weights for a while (ONNX Runtime's
    quantizer about three), and none of that may stay in the server."""
    import numpy as np

    probe_file = directory / PROBE
    np.savez(probe_file, **{name: value.numpy() for name, value in inputs.items()})
    command = [sys.executable, "-m", "compat_api.core.models.export_cache", kind, path, output, str(directory),
               str(threads)] + (["--trust-remote-code"] if trust_remote_code else [])  # fmt: skip
    last = ""
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          env=child_environment()) as child:  # fmt: skip
        assert child.stderr is not None
        for line in child.stderr:  # the child's progress, passed on to our log
            if line.strip():
                last = line.strip()
                log.info("export: %s", last[:300])
    probe_file.unlink(missing_ok=True)
    if child.returncode != 0:
        raise ModelLoadError(f"cannot make the {kind} export of {path}: {last or f'exit status {child.returncode}'}")


def _child(argv: list[str]) -> int:
    """The child process of `make_in_child`: load the model as the server would, and export it."""
    import gc

    import numpy as np
    import torch

    kind, path, output, directory, threads = argv[:5]
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    die_with_parent()  # a server stopped while it exports must not leave the export running
    torch.set_num_threads(int(threads))
    from transformers import AutoModel, AutoModelForSequenceClassification

    family = AutoModelForSequenceClassification if output == "logits" else AutoModel
    model = family.from_pretrained(path, trust_remote_code="--trust-remote-code" in argv).float().eval()
    with np.load(Path(directory) / PROBE) as saved:
        probe = {name: torch.from_numpy(saved[name]) for name in saved.files}
    target = Path(directory)
    if kind.startswith("openvino"):
        from compat_api.core.models.openvino import convert, quantize

        convert(model, output, target, probe)
        del model
        gc.collect()
        if kind != "openvino":
            from transformers import AutoTokenizer

            from compat_api.core.models.calibration import calibration_inputs

            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code="--trust-remote-code" in argv)
            samples = calibration_inputs(tokenizer, pairs=output == "logits", names=set(probe))
            quantize(target, samples, seven_bit=kind == "openvino-int8r")
        return 0
    from compat_api.core.models.onnx import export, quantize_graph

    export(model, output, target, probe)
    del model
    gc.collect()
    if kind in ("int8", "int8r"):
        quantize_graph(target, reduce_range=kind == "int8r")
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
