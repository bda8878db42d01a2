"""Property-based fuzzing of every route from the app's own OpenAPI document (schemathesis),
against the real server, with and without API keys: no 5xx, every response matches its
documented status codes, headers and schema, schema-violating input is rejected and
authentication is enforced exactly as documented. Bounded: RERANK_FUZZ_EXAMPLES examples per
operation (default 20), a fixed seed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import serving

EXAMPLES = os.environ.get("RERANK_FUZZ_EXAMPLES", "20")


@pytest.mark.parametrize("api_key", [None, "fuzz-key"])
def test_every_route_answers_as_documented(tiny_reranker_dir: Path, tiny_embedder_dir: Path, api_key: str | None,
                                           tmp_path: Path) -> None:  # fmt: skip
    args = ["--model-path", str(tiny_reranker_dir), "--embedding-model-path", str(tiny_embedder_dir),
            "--max-length", "64", "--log-level", "warning"]  # fmt: skip
    env = {**os.environ, "RERANK_API_KEYS": api_key or ""}
    with serving(args, env=env) as url:
        config = Path(__file__).resolve().parent.parent / "schemathesis.toml"
        command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
                   url + "/openapi.json", "--checks", "all"]  # fmt: skip
        command += ["--max-examples", EXAMPLES, "--seed", "20261124", "--no-color", "--request-timeout", "60"]
        if api_key:
            command += ["-H", f"Authorization: Bearer {api_key}"]
        # run from a scratch directory: schemathesis keeps a crash cache in its working directory
        result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    selected = re.search(r"Selected: (\d+)/(\d+)", result.stdout)
    tested = re.search(r"Tested: (\d+)", result.stdout)
    assert selected and tested, result.stdout[-2000:]
    assert int(tested.group(1)) == int(selected.group(2)) >= 8, "every documented operation is fuzzed"
