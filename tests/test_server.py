"""The server as a user starts it: `python -m compat_api` under uvicorn on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from compat_api.api.rerank.legacy import SEED_EXAMPLE, LegacyRerankResponse
from tests.servers import output, serving, start, stop, wait_ready


@pytest.fixture()
def served_tiny(tiny_reranker_dir: Path) -> Iterator[str]:
    with serving(["--model-path", str(tiny_reranker_dir)]) as url:
        yield url


def test_seed_example_over_real_http(served_tiny: str) -> None:
    response = httpx.post(served_tiny + "/rerank", json=SEED_EXAMPLE, timeout=30)
    assert response.status_code == 200
    assert len(LegacyRerankResponse.model_validate(response.json()).data) == 3
    cohere = httpx.post(served_tiny + "/v1/rerank", json={"query": "q", "documents": ["a", "b"]}, timeout=30)
    assert cohere.status_code == 200
    assert cohere.json()["model"] == "tiny-bge-reranker"


def test_bundled_default_serves_with_no_model_configured() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL_PATH", "RERANK_MODEL_PATH")}
    proc, url = start([], env=env)
    try:
        wait_ready(proc, url)
        response = httpx.post(url + "/rerank", json=SEED_EXAMPLE, timeout=30)
        assert len(LegacyRerankResponse.model_validate(response.json()).data) == 3
        health = httpx.get(url + "/health", timeout=10).json()
        assert health["models"][0]["name"] == "all-MiniLM-L6-v2-embedding-cosine"
    finally:
        out = stop(proc)
    assert "bundled all-MiniLM-L6-v2" in out and "MODEL_PATH" in out


def test_a_configured_model_that_cannot_load_stops_start_up(tmp_path: Path) -> None:
    proc, _url = start(["--model-path", str(tmp_path / "missing")])
    proc.wait(timeout=120)
    out = output(proc)
    assert proc.returncode != 0
    assert "is not a directory" in out
    assert "Uvicorn running" not in out


def test_a_port_in_use_ends_start_up_before_any_model_loads() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "compat_api", "--host", "127.0.0.1", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "RERANK_TORCH_THREADS": "1"},
        )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 3, out
    assert f"cannot listen on 127.0.0.1:{port}" in out and "address already in use" in out.lower()
    assert "loading" not in out, "the model load must not start when the server cannot listen"
