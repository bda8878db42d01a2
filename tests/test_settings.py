"""Settings: RERANK_ variables, the original MODEL_PATH, command-line flags and --help."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from compat_api.settings import Settings, available_cores


def test_defaults_serve_the_bundled_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODEL_PATH", raising=False)
    monkeypatch.delenv("RERANK_MODEL_PATH", raising=False)
    settings = Settings()
    assert settings.model_path is None
    assert settings.port == 8000 and settings.device == "auto" and settings.fp16 is None


def test_original_model_path_variable_works(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_PATH", "/mnt/auto/bge-reranker-v2-m3")
    assert Settings().model_path == "/mnt/auto/bge-reranker-v2-m3"


def test_prefixed_variables_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RERANK_MODEL_PATH", "/models/x")
    monkeypatch.setenv("RERANK_PORT", "9001")
    monkeypatch.setenv("RERANK_FP16", "true")
    monkeypatch.setenv("RERANK_MAX_LENGTH", "1024")
    settings = Settings()
    assert (settings.model_path, settings.port, settings.fp16, settings.max_length) == ("/models/x", 9001, True, 1024)


def test_blank_model_path_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_PATH", "  ")
    assert Settings().model_path is None


@pytest.mark.parametrize("blank", ["", "  "])
def test_a_blank_model_path_does_not_hide_the_prefixed_one(monkeypatch: pytest.MonkeyPatch, blank: str) -> None:
    """`MODEL_PATH=` left empty (or spaces) in a template must not turn RERANK_MODEL_PATH off (and
    serve the bundled model in place of the configured one)."""
    monkeypatch.setenv("MODEL_PATH", blank)
    monkeypatch.setenv("RERANK_MODEL_PATH", "/mnt/auto/bge-reranker-v2-m3")
    assert Settings().model_path == "/mnt/auto/bge-reranker-v2-m3"


@pytest.mark.parametrize(
    ("variable", "value", "words"),
    [("RERANK_MODELS", "/mnt/auto/m3", "is not name=path"), ("RERANK_MODELS", "m3=", "is not name=path"),
     ("RERANK_SHUTDOWN_GRACE", "inf", "finite number"), ("RERANK_HEALTH_TIMEOUT", "nan", "finite number")],
)  # fmt: skip
def test_malformed_values_are_refused_not_ignored(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, words: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match=words):
        Settings()


def test_command_line_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODEL_PATH", raising=False)
    settings = Settings(_cli_parse_args=["--host", "127.0.0.1", "--port", "8123", "--model-path", "/m"])
    assert (settings.host, settings.port, settings.model_path) == ("127.0.0.1", 8123, "/m")


@pytest.mark.parametrize("device", ["tpu", "cuda:abc", "cuda:"])
def test_bad_values_are_rejected(monkeypatch: pytest.MonkeyPatch, device: str) -> None:
    monkeypatch.setenv("RERANK_DEVICE", device)
    with pytest.raises(ValueError, match="device must be"):
        Settings()


def test_a_per_request_cap_above_the_queue_bound_is_refused_and_a_default_one_follows_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RERANK_MAX_QUEUE_PAIRS", "2048")
    monkeypatch.setenv("RERANK_MAX_QUEUE_TOKENS", "500000")
    settings = Settings()
    assert (settings.max_request_items, settings.max_request_tokens) == (2048, 500_000)
    monkeypatch.setenv("RERANK_MAX_REQUEST_ITEMS", "3000")
    with pytest.raises(ValueError, match="RERANK_MAX_REQUEST_ITEMS=3000 is larger than RERANK_MAX_QUEUE_PAIRS=2048"):
        Settings()
    monkeypatch.delenv("RERANK_MAX_REQUEST_ITEMS")
    with pytest.raises(ValueError, match="RERANK_MAX_REQUEST_TOKENS=600000 is larger than RERANK_MAX_QUEUE_TOKENS"):
        Settings(max_request_tokens=600_000)


def test_a_document_limit_above_the_item_cap_is_refused_and_a_default_one_follows_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each document is at least one model item: more documents than the cap could only be
    refused, after some of their work (idle) or as 429 "retry" (busy)."""
    monkeypatch.setenv("RERANK_MAX_QUEUE_PAIRS", "500")
    settings = Settings()
    assert (settings.max_request_items, settings.max_documents) == (500, 500)
    monkeypatch.setenv("RERANK_MAX_DOCUMENTS", "600")
    with pytest.raises(ValueError, match="RERANK_MAX_DOCUMENTS=600 is larger than RERANK_MAX_REQUEST_ITEMS=500"):
        Settings()


def test_bad_settings_stop_the_server_with_a_message_naming_each_one() -> None:
    env = {**os.environ, "RERANK_DEVICE": "tpu"}
    env.pop("MODEL_PATH", None)
    result = subprocess.run([sys.executable, "-m", "compat_api", "--port", "abc"], capture_output=True, text=True,
                            timeout=60, env=env)  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "invalid settings" in result.stderr
    assert "port: Input should be a valid integer" in result.stderr
    assert "device: Value error, device must be" in result.stderr


def test_help_lists_every_setting() -> None:
    result = subprocess.run([sys.executable, "-m", "compat_api", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for name in Settings.model_fields:
        assert "--" + name.replace("_", "-") in result.stdout, name


def test_readme_documents_every_setting() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for name in Settings.model_fields:
        assert f"RERANK_{name.upper()}" in readme, name


def test_on_off_settings_are_bare_flags_and_model_path_wins_over_its_prefixed_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    on = Settings(_cli_parse_args=["--trust-remote-code", "--no-warmup"])
    assert on.trust_remote_code is True and on.warmup is False
    monkeypatch.setenv("MODEL_PATH", "/mnt/auto/a")
    monkeypatch.setenv("RERANK_MODEL_PATH", "/mnt/auto/b")
    assert Settings().model_path == "/mnt/auto/a", "the original deployment's variable, as the README says"
    assert Settings(_cli_parse_args=["--model-path", "/c"]).model_path == "/c"


@pytest.mark.parametrize(
    ("files", "cores"),
    [
        ({"cpu.max": "150000 100000\n"}, 2),  # cgroup v2, --cpus 1.5
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # cgroup v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_default_threads_follow_a_containers_cpu_limit(
    tmp_path: Path, files: dict[str, str], cores: int | None
) -> None:
    """`docker run --cpus` and Kubernetes limits leave every host core in the affinity mask: torch
    would run more threads than the container may use."""
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    affinity = len(os.sched_getaffinity(0))
    assert available_cores(tmp_path) == (affinity if cores is None else min(affinity, cores))
