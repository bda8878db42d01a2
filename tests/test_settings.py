"""Settings: RERANK_ variables, the original MODEL_PATH, command-line flags and --help."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from compat_api.settings import Settings


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


def test_command_line_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODEL_PATH", raising=False)
    settings = Settings(_cli_parse_args=["--host", "127.0.0.1", "--port", "8123", "--model-path", "/m"])
    assert (settings.host, settings.port, settings.model_path) == ("127.0.0.1", 8123, "/m")


def test_bad_values_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RERANK_DEVICE", "tpu")
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
