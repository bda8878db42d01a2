"""Model provisioning: fetched into place verified, never over a user's model, failures clean."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from compat_api.provision import MARKER, ProvisionError, provision, status


def test_copies_verifies_and_marks(tiny_reranker_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "nas" / "bge-reranker-v2-m3"
    assert provision(target, source=str(tiny_reranker_dir)) == "downloaded"
    assert (target / "config.json").is_file() and (target / "model.safetensors").is_file()
    marker = json.loads((target / MARKER).read_text())
    assert "model.safetensors" in marker["files"]
    assert status(target) == "ours"
    assert provision(target, source=str(tiny_reranker_dir)) == "verified"
    assert not list(target.parent.glob(".*partial*")), "no staging left behind"


def test_a_model_the_user_replaced_is_never_overwritten(tiny_reranker_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "model"
    provision(target, source=str(tiny_reranker_dir))
    (target / "config.json").write_text((target / "config.json").read_text() + " ")  # a fine-tuned upload
    before = (target / "config.json").read_text()
    assert status(target) == "changed"
    assert provision(target, source=str(tiny_reranker_dir)) == "kept"
    assert (target / "config.json").read_text() == before


def test_a_foreign_model_is_kept_unless_forced_then_backed_up(tiny_reranker_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "model"
    shutil.copytree(tiny_reranker_dir, target)
    assert status(target) == "foreign"
    assert provision(target, source=str(tiny_reranker_dir)) == "kept"
    assert not (target / MARKER).exists()
    assert provision(target, source=str(tiny_reranker_dir), force=True) == "downloaded"
    assert (target / MARKER).exists()
    assert len(list(tmp_path.glob("model.backup-*"))) == 1


@pytest.mark.parametrize("damage", ["truncate-weights", "bad-config", "no-weights"])
def test_a_broken_source_fails_and_leaves_the_target_untouched(
    tiny_reranker_dir: Path, tmp_path: Path, damage: str
) -> None:
    source = tmp_path / "source"
    shutil.copytree(tiny_reranker_dir, source)
    weights = source / "model.safetensors"
    if damage == "truncate-weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "bad-config":
        (source / "config.json").write_text("{not json")
    else:
        weights.unlink()
    target = tmp_path / "model"
    with pytest.raises(ProvisionError):
        provision(target, source=str(source))
    assert not target.exists()
    assert not list(tmp_path.glob(".*partial*"))


def test_cli_without_internet_fails_clearly(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "compat_api", "download-model", "--target", str(tmp_path / "m")],
        capture_output=True, text=True, timeout=120,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 2
    assert "cannot download BAAI/bge-reranker-v2-m3 from the Hugging Face hub" in result.stderr
    assert not (tmp_path / "m").exists()


def test_cli_copies_from_a_directory(tiny_reranker_dir: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "compat_api", "download-model", "--source", str(tiny_reranker_dir),
         "--target", str(tmp_path / "m")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "downloaded"


def test_the_server_provisions_an_empty_model_path_at_start_up(tiny_reranker_dir: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from compat_api.api.app import create_app
    from tests.conftest import make_settings

    target = tmp_path / "nas" / "bge"
    target.mkdir(parents=True)  # an empty mount point
    settings = make_settings(model_path=str(target), provision_model="BAAI/bge-reranker-v2-m3",
                             provision_source=str(tiny_reranker_dir))  # fmt: skip
    with TestClient(create_app(settings)) as client:
        assert client.post("/rerank", json={"query": "q", "compare_to": ["a"]}).status_code == 200
    assert status(target) == "ours"


def test_a_failed_provisioning_stops_start_up(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from compat_api.api.app import create_app
    from compat_api.core.errors import ModelLoadError
    from tests.conftest import make_settings

    settings = make_settings(model_path=str(tmp_path / "m"), provision_model="BAAI/bge-reranker-v2-m3",
                             provision_source=str(tmp_path / "nowhere"))  # fmt: skip
    with pytest.raises(ModelLoadError, match="cannot provision"), TestClient(create_app(settings)):
        pass
