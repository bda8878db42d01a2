"""A cheap fingerprint of a model directory: what changes when someone uploads a new model over it.

It hashes every model file's name, size and modification time (those of the directory and of
its subdirectories one level down, where sentence-transformers keeps its modules), and a sample of
each file's content: small files whole, large ones (weights) in 16 blocks of 4 KiB at evenly
spaced offsets. So a checkpoint replaced in place with the same size and a preserved mtime
(`rsync -a --inplace` of a same-shape model) still changes the fingerprint, while a poll reads
about 64 KiB per weight file rather than gigabytes. A filesystem error propagates (OSError):
callers decide whether to retry.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

MODEL_FILES = (".json", ".safetensors", ".bin", ".pt", ".pth", ".model", ".txt", ".py", ".tiktoken", ".onnx")
WHOLE_FILE = 256 * 1024
SAMPLES = 16
BLOCK = 4096


def _sample(file: Path, size: int, digest: hashlib._Hash) -> None:
    with file.open("rb") as handle:
        if size <= WHOLE_FILE:
            digest.update(handle.read())
            return
        step = (size - BLOCK) // (SAMPLES - 1)
        for i in range(SAMPLES):
            handle.seek(i * step)
            digest.update(handle.read(BLOCK))


def fingerprint(path: str | Path, salt: str = "") -> str:
    """Hash of config.json and every model file's name, size, modification time and sampled bytes."""
    directory = Path(path)
    digest = hashlib.sha256(salt.encode())
    if not directory.is_dir():
        return "missing"
    for file in _model_files(directory):
        info = file.stat()
        digest.update(f"{file.relative_to(directory).as_posix()}|{info.st_size}|{info.st_mtime_ns}".encode())
        _sample(file, info.st_size, digest)
    return digest.hexdigest()[:16]


def _model_files(directory: Path) -> list[Path]:
    """The directory's model files, and those of its subdirectories one level down (a
    sentence-transformers model keeps its pooling and normalization in `1_Pooling/`, `2_Normalize/`)."""
    files: list[Path] = []
    for entry in _visible(directory):
        if entry.is_dir():
            files += [f for f in _visible(entry) if _is_model_file(f)]
        elif _is_model_file(entry):
            files.append(entry)
    return files


def _visible(directory: Path) -> list[Path]:
    return [entry for entry in sorted(directory.iterdir()) if not entry.name.startswith(".")]


def _is_model_file(entry: Path) -> bool:
    return entry.is_file() and entry.suffix in MODEL_FILES


def code_fingerprint(path: str | Path) -> str:
    """Hash of the model directory's own Python code (what `trust_remote_code` would run)."""
    digest = hashlib.sha256()
    directory = Path(path)
    for file in sorted(directory.glob("*.py")) if directory.is_dir() else []:
        digest.update(file.name.encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()[:16]
