"""Model provisioning: put a reranker on the model volume (the NAS), verified, never over a user's model.

`python -m compat_api download-model --target /mnt/auto/bge-reranker-v2-m3` fetches
BAAI/bge-reranker-v2-m3 from the Hugging Face hub (or ModelScope, or copies a local directory)
into a uniquely named staging directory beside the target (several instances on one NAS may
provision at once), checks that it is a loadable model (config, tokenizer, weights whose
safetensors headers read), records every file's SHA-256 in `.compat-api-download.json`, and only
then moves it into place. A target that holds anything this tool did not write, or that was
changed since (a fine-tuned model uploaded over it), is left alone unless `--force` is given,
and then the old one is kept as a backup.

The download runs in a child process whose environment turns the hub's offline mode off
(`HF_HUB_OFFLINE=0`): the image keeps the server itself offline (nothing it loads may reach
the internet), and only this explicit step talks to the hub (`HF_ENDPOINT` applies).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pydantic import ValidationError

from compat_api.core.children import child_environment, die_with_parent
from compat_api.settings import Settings, settings_problems

log = logging.getLogger(__name__)

MARKER = ".compat-api-download.json"
DEFAULT_MODEL = "BAAI/bge-reranker-v2-m3"
DEFAULT_TARGET = "/mnt/auto/bge-reranker-v2-m3"
WANTED = ["*.json", "*.safetensors", "*.model", "*.txt", "*.py", "*.tiktoken"]


class ProvisionError(Exception):
    """The model could not be fetched or did not verify; the target was not touched."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest(directory: Path) -> dict[str, str]:
    """SHA-256 of every file below the directory, by relative path (the marker excluded)."""
    return {
        str(p.relative_to(directory)): sha256(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MARKER and ".cache" not in p.parts
    }


def verify(directory: Path) -> None:
    """A loadable model: config.json, a tokenizer, weights whose safetensors headers read."""
    config = directory / "config.json"
    if not config.is_file():
        raise ProvisionError(f"{directory} has no config.json")
    try:
        json.loads(config.read_text())
    except ValueError as exc:
        raise ProvisionError(f"{config} is not valid JSON: {exc}") from exc
    tokenizer = ("tokenizer.json", "tokenizer_config.json", "sentencepiece.bpe.model", "vocab.txt")
    if not any((directory / name).is_file() for name in tokenizer):
        raise ProvisionError(f"{directory} has no tokenizer files")
    weights = sorted(directory.glob("*.safetensors")) + sorted(directory.glob("pytorch_model*.bin"))
    if not weights:
        raise ProvisionError(f"{directory} has no weights (*.safetensors or pytorch_model.bin)")
    from safetensors import safe_open

    for file in weights:
        if file.suffix != ".safetensors":
            continue
        try:
            with safe_open(str(file), framework="pt") as handle:
                names = list(handle.keys())
                for name in names:
                    handle.get_slice(name)  # reads the header's offsets against the file size
        except Exception as exc:
            raise ProvisionError(f"{file} is not a readable safetensors file: {exc}") from exc


def status(target: Path) -> str:
    """`missing`, `ours` (downloaded here, unchanged), `changed` (ours, modified since; or its
    marker unreadable) or `foreign`."""
    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        return "missing"
    marker = target / MARKER
    if not marker.is_file():
        return "foreign"
    try:
        recorded = json.loads(marker.read_text())
        files = recorded["files"] if isinstance(recorded, dict) else None
        if not isinstance(files, dict):
            raise ValueError("it holds no file list")
    except (OSError, ValueError, KeyError) as exc:
        # Our bookkeeping, not the model: the files are left as they are (the load checks them)
        # rather than an instance refusing to start over a damaged note.
        log.warning("the download marker %s is unreadable (%s: %s): the model there is kept as it is, as "
                    "one changed since its download; download-model --force replaces it", marker,
                    type(exc).__name__, exc)  # fmt: skip
        return "changed"
    return "ours" if files == manifest(target) else "changed"


def fetch(source: str, model_id: str, staging: Path, revision: str | None, endpoint: str | None = None) -> None:
    """Fill `staging` from the hub or ModelScope (in a child process that may go online), or
    from a local directory. `endpoint`: another Hugging Face endpoint (a mirror, e.g.
    https://hf-mirror.com, where huggingface.co is out of reach)."""
    if source in ("huggingface", "modelscope"):
        command = [sys.executable, "-m", "compat_api", "download-model", "--fetch-into", str(staging),
                   "--source", source, "--model-id", model_id]  # fmt: skip
        if revision:
            command += ["--revision", revision]
        env = child_environment({**os.environ, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0"})
        if endpoint:
            env["HF_ENDPOINT"] = endpoint
        last = ""
        with subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as child:
            assert child.stderr is not None
            for line in child.stderr:  # the download's progress, passed on to our log
                if line.strip():
                    last = line.strip()
                    log.info("download: %s", last[:300])
        if child.returncode != 0:
            raise ProvisionError(last or f"the download exited with {child.returncode}")
        return
    origin = Path(source)
    if not origin.is_dir():
        raise ProvisionError(f"source {source!r} is neither huggingface, modelscope nor a directory")
    try:
        shutil.copytree(origin, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns(MARKER, ".cache"))
    except OSError as exc:  # shutil.Error (a file that could not be copied) included
        raise ProvisionError(f"cannot copy {source}: {exc}") from exc


def download(source: str, model_id: str, staging: Path, revision: str | None) -> None:
    """The child process's part of `fetch`: talk to the hub (or ModelScope)."""
    if source == "huggingface":
        try:
            from huggingface_hub import snapshot_download

            snapshot_download(repo_id=model_id, revision=revision, local_dir=str(staging), allow_patterns=WANTED)
        except Exception as exc:
            raise ProvisionError(f"cannot download {model_id} from the Hugging Face hub: {exc}") from exc
        return
    try:
        from modelscope import snapshot_download as modelscope_download
    except ImportError as exc:
        raise ProvisionError("the modelscope source needs `pip install modelscope`") from exc
    try:
        modelscope_download(model_id, revision=revision, local_dir=str(staging), allow_patterns=WANTED)
    except Exception as exc:
        raise ProvisionError(f"cannot download {model_id} from ModelScope: {exc}") from exc


ABANDONED_S = 24 * 3600


def _drop_abandoned(target: Path) -> None:
    """Remove downloads into `target` that a stopped server left behind (untouched for a day:
    another instance's download in progress is left alone)."""
    for partial in target.parent.glob(f".{target.name}.partial-*"):
        try:
            age = time.time() - max(f.stat().st_mtime for f in (partial, *partial.rglob("*")))
        except (OSError, ValueError):  # gone meanwhile: another instance finished with it
            continue
        if age > ABANDONED_S:
            log.info("removing an abandoned download %s", partial)
            shutil.rmtree(partial, ignore_errors=True)


def provision(target: Path, *, model_id: str = DEFAULT_MODEL, source: str = "huggingface",
              revision: str | None = None, force: bool = False, endpoint: str | None = None) -> str:  # fmt: skip
    """Put the model at `target`; returns what happened (`downloaded`, `verified`, `kept`)."""
    state = status(target)
    if state == "ours":
        log.info("%s already holds the downloaded model, unchanged", target)
        return "verified"
    if state in ("foreign", "changed") and not force:
        log.warning("%s holds a model this tool did not write or that was changed since (%s): left as it is; "
                    "use --force to replace it (the old one is kept as a backup)", target, state)  # fmt: skip
        return "kept"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _drop_abandoned(target)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
        staging.chmod(0o755)  # a model directory others may read, as any upload would be
    except OSError as exc:
        raise ProvisionError(f"cannot write beside {target}: {exc}") from exc
    started = time.monotonic()
    log.info("fetching %s from %s into %s", model_id, source, staging)
    try:
        fetch(source, model_id, staging, revision, endpoint)
        shutil.rmtree(staging / ".cache", ignore_errors=True)  # huggingface_hub's download bookkeeping
        log.info("verifying %s", staging)
        verify(staging)
        files = manifest(staging)
        marker = {"model_id": model_id, "source": source, "revision": revision, "files": files,
                  "downloaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
        (staging / MARKER).write_text(json.dumps(marker, indent=2))
        now = status(target)
        if now == "ours" and not force:
            log.info("another instance put the model at %s meanwhile; keeping it", target)
            return "verified"
        if now != "missing":
            backup = target.parent / f"{target.name}.backup-{time.strftime('%Y%m%d%H%M%S')}"
            log.warning("moving the existing %s to %s", target, backup)
            target.rename(backup)
        elif target.exists():
            target.rmdir()  # an empty directory (a fresh mount point)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("model ready at %s (%d files) in %.0fs", target, len(files), time.monotonic() - started)
    return "downloaded"


def main(argv: list[str]) -> int:
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"download-model: invalid settings in the environment:\n{settings_problems(exc)}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(
        prog="python -m compat_api download-model",
        description="Put a reranker model on the model volume (NAS), verified; never over a user's model.",
    )
    parser.add_argument("--model-id", default=DEFAULT_MODEL, help=f"hub model id (default {DEFAULT_MODEL})")
    parser.add_argument("--target", default=settings.model_path or DEFAULT_TARGET,
                        help="model directory to create (default: $MODEL_PATH or %(default)s)")  # fmt: skip
    parser.add_argument("--source", default="huggingface",
                        help="huggingface (default), modelscope, or a local directory to copy from")  # fmt: skip
    parser.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    parser.add_argument("--endpoint", default=settings.provision_endpoint or None,
                        help="Hugging Face endpoint, e.g. https://hf-mirror.com (default: $RERANK_PROVISION_ENDPOINT, "
                             "else huggingface.co)")  # fmt: skip
    parser.add_argument("--force", action="store_true", help="replace a model this tool did not write")
    parser.add_argument("--fetch-into", default=None, help=argparse.SUPPRESS)  # the download's child process
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.fetch_into:
        die_with_parent()  # a server stopped during its first start must not leave the download running
        try:
            download(args.source, args.model_id, Path(args.fetch_into), args.revision)
        except ProvisionError as exc:
            print(exc, file=sys.stderr)
            return 2
        return 0
    try:
        outcome = provision(Path(args.target), model_id=args.model_id, source=args.source,
                            revision=args.revision, force=args.force, endpoint=args.endpoint)  # fmt: skip
    except ProvisionError as exc:
        log.error("%s", exc)
        return 2
    print(outcome)
    return 0
