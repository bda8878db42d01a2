"""A cheap fingerprint of a model directory: what changes when someone uploads a new model over it."""

from __future__ import annotations

import hashlib
from pathlib import Path

MODEL_FILES = (".json", ".safetensors", ".bin", ".pt", ".pth", ".model", ".txt", ".py", ".tiktoken")


def fingerprint(path: str | Path, salt: str = "") -> str:
    """Hash of config.json's bytes and every model file's name, size and modification time."""
    directory = Path(path)
    digest = hashlib.sha256(salt.encode())
    if not directory.is_dir():
        return "missing"
    config = directory / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    for file in sorted(directory.iterdir()):
        if file.is_file() and file.suffix in MODEL_FILES and not file.name.startswith("."):
            stat = file.stat()
            digest.update(f"{file.name}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]
