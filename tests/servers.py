"""Start the real server as a user would (`python -m compat_api` under uvicorn on 127.0.0.1)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(args: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    """Start the server the way the README does; `env` replaces the environment when given."""
    port = free_port()
    # Output goes to a file, not a pipe: a pipe nobody reads fills up and blocks the server.
    log = tempfile.NamedTemporaryFile("w+", prefix="compat-api-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "compat_api", "--host", "127.0.0.1", "--port", str(port), *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        env={**(os.environ if env is None else env), "RERANK_TORCH_THREADS": "1"},
    )
    proc.log_path = log.name  # type: ignore[attr-defined]
    log.close()
    return proc, f"http://127.0.0.1:{port}"


def output(proc: subprocess.Popen[str]) -> str:
    """Everything the server has written so far."""
    return Path(str(getattr(proc, "log_path", ""))).read_text() if getattr(proc, "log_path", None) else ""


def stop(proc: subprocess.Popen[str]) -> str:
    proc.terminate()
    proc.wait(timeout=30)
    return output(proc)


def wait_ready(proc: subprocess.Popen[str], url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {output(proc)}")
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError("server did not become ready")


@contextmanager
def serving(args: list[str], env: dict[str, str] | None = None) -> Iterator[str]:
    """A ready server for the duration of the block; yields its base URL."""
    proc, url = start(args, env)
    try:
        wait_ready(proc, url)
        yield url
    finally:
        stop(proc)
