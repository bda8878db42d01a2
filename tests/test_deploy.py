"""Deployment files: s.yaml against the fc3 schema, env names that are settings, the Dockerfile."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from compat_api.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT.parent / "shared" / "fc3" / "schema.json"


def fc3_resources() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load((ROOT / "s.yaml").read_text())
    variables = doc.get("vars", {})

    def resolve(value: Any) -> Any:
        if isinstance(value, str):
            return re.sub(r"\$\{vars\.(\w+)\}", lambda m: str(variables[m.group(1)]), value)
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v) for v in value]
        return value

    resources = {name: resolve(r["props"]) for name, r in doc["resources"].items() if r.get("component") == "fc3"}
    assert resources, "s.yaml must declare at least one fc3 resource"
    return resources


@pytest.mark.skipif(not SCHEMA.is_file(), reason="../shared/fc3/schema.json is only present beside the checkout")
def test_every_fc3_resource_matches_the_schema() -> None:
    import jsonschema

    schema = json.loads(SCHEMA.read_text())
    for name, props in fc3_resources().items():
        errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(props), key=str)
        assert not errors, f"{name}: {[e.message for e in errors]}"


def test_fc3_resources_fit_function_compute_rules() -> None:
    for name, props in fc3_resources().items():
        ratio = props["memorySize"] / 1024 / props["cpu"]
        assert 1 <= ratio <= 4, f"{name}: cpu:memory must be between 1:1 and 1:4 GB"
        container = props["customContainerConfig"]
        check = container["healthCheckConfig"]
        assert check["httpGetUrl"] == "/health"
        # FC's CustomHealthCheckConfig ranges (the fc3 schema leaves them open; the API refuses others)
        assert 1 <= check["timeoutSeconds"] <= 3 and 0 <= check["initialDelaySeconds"] <= 120
        waits = float(props["environmentVariables"].get("RERANK_HEALTH_TIMEOUT", Settings().health_timeout))
        assert waits < check["timeoutSeconds"], f"{name}: /health answers before FC stops waiting for it"
        assert all(1 <= check[k] <= 120 for k in ("periodSeconds", "failureThreshold", "successThreshold"))
        assert str(container["port"]) == props["environmentVariables"]["RERANK_PORT"]
        assert props["environmentVariables"]["MODEL_PATH"].startswith("/mnt/auto/")
        assert any(t["triggerType"] == "http" for t in props["triggers"])


def test_env_names_in_s_yaml_are_settings() -> None:
    known = {"MODEL_PATH"} | {"RERANK_" + name.upper() for name in Settings.model_fields}
    for name, props in fc3_resources().items():
        unknown = set(props["environmentVariables"]) - known
        assert not unknown, f"{name}: not settings: {unknown}"


def test_dockerfile_runs_the_server_without_a_baked_model() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    assert re.search(r"^USER 10001$", text, re.M), "runs as a non-root user"
    assert "HEALTHCHECK" in text and "COPY requirements.txt" in text
    assert not re.search(r"^(COPY|ADD)\s+\S*(safetensors|model)", text, re.M | re.I)


def test_dockerfile_cmd_is_the_readme_run_command() -> None:
    cmd = re.search(r"^CMD (\[.*\])$", (ROOT / "Dockerfile").read_text(), re.M)
    assert cmd is not None
    command = " ".join(json.loads(cmd.group(1)))
    readme = (ROOT / "README.md").read_text()
    two_commands = readme.split("## Two commands", 1)[1].split("##", 1)[0]
    assert two_commands.count(f"&& {command}\n") == 1, f"the README's run command is {command!r}"
    docker = readme.split("## Run with Docker", 1)[1].split("\n## ", 1)[0]
    assert "docker run" in docker and "MODEL_PATH" in docker


def test_dockerfile_passes_hadolint() -> None:
    import shutil
    import subprocess

    binary = shutil.which("hadolint")
    if binary is None:
        pytest.skip("hadolint is not installed (pip install -r requirements-dev.txt)")
    result = subprocess.run([binary, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_gpu_variant_runs_fp16_on_a_gpu() -> None:
    gpu = fc3_resources()["rerank-gpu"]
    assert gpu["gpuConfig"]["gpuType"].startswith("fc.gpu.")
    assert gpu["environmentVariables"]["RERANK_DEVICE"] == "cuda"
    assert gpu["environmentVariables"]["RERANK_FP16"] == "true"
    cpu = fc3_resources()["rerank-cpu"]
    assert "gpuConfig" not in cpu and cpu["environmentVariables"]["RERANK_DEVICE"] == "cpu"


def test_the_docker_build_context_is_only_what_the_image_copies() -> None:
    """A local .venv (GBs) or bench/'s models must not travel to the docker daemon."""
    root = Path(__file__).resolve().parent.parent
    ignore = (root / ".dockerignore").read_text().splitlines()
    rules = [line.strip() for line in ignore if line.strip() and not line.startswith("#")]
    assert rules[0] == "**", "everything is excluded first"
    copied = {line.split()[1] for line in (root / "Dockerfile").read_text().splitlines() if line.startswith("COPY ")}
    assert {f"!{c.rstrip('/')}" for c in copied} <= {r.rstrip("/") for r in rules}, (copied, rules)
