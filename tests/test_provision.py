"""Model provisioning: fetched into place verified, never over a user's model, failures clean."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from compat_api.provision import MARKER, ProvisionError, provision, status
from tests.servers import serving, start, stop, wait_ready


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


@pytest.mark.parametrize("damage", ["truncate-weights", "bad-config", "no-weights", "dangling-link"])
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
    elif damage == "dangling-link":
        (source / "tokenizer.model").symlink_to(tmp_path / "gone")  # copying it fails (shutil.Error)
    else:
        weights.unlink()
    target = tmp_path / "model"
    with pytest.raises(ProvisionError, match="cannot copy" if damage == "dangling-link" else None):
        provision(target, source=str(source))
    assert not target.exists()
    assert not list(tmp_path.glob(".*partial*"))


def test_a_download_abandoned_by_a_stopped_server_is_removed(tiny_reranker_dir: Path, tmp_path: Path) -> None:
    """A server stopped during its first start leaves its partial download; the next start
    removes it once it is a day old, and leaves a recent one (another instance's) alone."""
    target = tmp_path / "model"
    old, recent = tmp_path / ".model.partial-old", tmp_path / ".model.partial-recent"
    for partial in (old, recent):
        (partial / "sub").mkdir(parents=True)
        (partial / "sub" / "model.safetensors").write_bytes(b"x" * 10)
    day_ago = time.time() - 25 * 3600
    for path in (old, old / "sub", old / "sub" / "model.safetensors"):
        os.utime(path, (day_ago, day_ago))
    assert provision(target, source=str(tiny_reranker_dir)) == "downloaded"
    assert not old.exists() and recent.exists()


@pytest.mark.parametrize(
    ("env", "says"),
    [({"HF_HUB_OFFLINE": "1"}, ["cannot download BAAI/bge-reranker-v2-m3 from the Hugging Face hub"]),
     ({"RERANK_PORT": "abc"}, ["invalid settings", "port:"])],
    ids=["no-internet", "bad-setting"],
)  # fmt: skip
def test_cli_failures_are_one_clear_message(tmp_path: Path, env: dict[str, str], says: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "compat_api", "download-model", "--target", str(tmp_path / "m")],
        capture_output=True, text=True, timeout=120,
        env={**env, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 2
    assert all(words in result.stderr for words in says) and "Traceback" not in result.stderr, result.stderr
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


# ---------------------------------------------------------------- the first deploy, end to end


class FakeHub:
    """The Hugging Face hub's file API for one repository, served from a local directory on
    127.0.0.1: model info, the file tree, and `resolve` (HEAD and GET) with ETag and commit."""

    def __init__(self, files: Path, repo: str) -> None:
        self.files, self.repo, self.sha = files, repo, hashlib.sha1(repo.encode()).hexdigest()
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                hub.requests.append(f"{self.command} {self.path}")

            def reply(self, status: int, body: bytes, headers: dict[str, str], head: bool = False) -> None:
                self.send_response(status)
                for key, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(key, value)
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def resolve(self, head: bool) -> None:
                prefix = f"/{hub.repo}/resolve/"
                path = self.path.split("?")[0]
                file = hub.files / path.removeprefix(prefix).split("/", 1)[-1]
                if not path.startswith(prefix) or not file.is_file():
                    self.reply(404, b"{}", {"Content-Type": "application/json"}, head)
                    return
                data = file.read_bytes()
                headers = {"ETag": f'"{hashlib.sha256(data).hexdigest()}"', "X-Repo-Commit": hub.sha}
                self.reply(200, data, headers, head)

            def do_HEAD(self) -> None:
                self.resolve(head=True)

            def do_GET(self) -> None:
                api = f"/api/models/{hub.repo}/"
                if self.path.startswith(api + "tree/"):
                    entries = [
                        {"type": "file", "path": f.name, "size": f.stat().st_size,
                         "oid": hashlib.sha1(f.read_bytes()).hexdigest()}
                        for f in sorted(hub.files.iterdir())
                    ]  # fmt: skip
                    self.reply(200, json.dumps(entries).encode(), {"Content-Type": "application/json"})
                elif self.path.startswith(api + "revision/"):
                    info = {
                        "id": hub.repo,
                        "sha": hub.sha,
                        "siblings": [{"rfilename": f.name} for f in hub.files.iterdir()],
                    }
                    self.reply(200, json.dumps(info).encode(), {"Content-Type": "application/json"})
                else:
                    self.resolve(head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def image_environment() -> dict[str, str]:
    """The ENV lines of the Dockerfile: the environment the server runs with in the image."""
    dockerfile = (Path(__file__).resolve().parent.parent / "Dockerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in dockerfile.splitlines():
        if line.startswith("ENV "):
            for pair in shlex.split(line[4:]):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


@pytest.mark.parametrize("endpoint_variable", ["HF_ENDPOINT", "RERANK_PROVISION_ENDPOINT"])
def test_the_first_deploy_downloads_the_model_with_the_images_environment(
    tiny_reranker_dir: Path, tmp_path: Path, endpoint_variable: str
) -> None:
    """s.yaml's first start: an empty NAS path, RERANK_PROVISION_MODEL, the image's offline
    environment; the model comes from the hub (here a local one behind HF_ENDPOINT, or a mirror
    named by the server's own setting) and serves."""
    image = image_environment()
    assert image["HF_HUB_OFFLINE"] == "1", "the image keeps the server itself offline"
    target = tmp_path / "nas" / "bge-reranker-v2-m3"
    target.mkdir(parents=True)
    with FakeHub(tiny_reranker_dir, "BAAI/bge-reranker-v2-m3") as hub:
        env = {**image, "PATH": os.environ["PATH"], "HOME": str(tmp_path), endpoint_variable: hub.url,
               "MODEL_PATH": str(target), "RERANK_PROVISION_MODEL": "BAAI/bge-reranker-v2-m3"}  # fmt: skip
        with serving([], env=env) as url:
            response = httpx.post(url + "/rerank", json={"query": "q", "compare_to": ["a", "b"]}, timeout=30)
            assert response.status_code == 200 and len(response.json()["data"]) == 2
        assert any("/resolve/" in request and "model.safetensors" in request for request in hub.requests)
    assert status(target) == "ours"
    assert not (target / ".cache").exists(), "the hub client's bookkeeping is not left in the model"


@pytest.mark.parametrize("marker", ["garbage", "[1, 2]", '{"files": 3}'])
def test_a_corrupt_download_marker_keeps_the_model_and_says_so(
    tiny_reranker_dir: Path, tmp_path: Path, marker: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The marker is our bookkeeping: a damaged one does not stop an instance from serving the
    model beside it; it is named in the log, and --force replaces the model."""
    target = tmp_path / "m"
    provision(target, source=str(tiny_reranker_dir))
    (target / MARKER).write_text(marker)
    assert provision(target, source=str(tiny_reranker_dir)) == "kept"
    assert re.search(r"download marker .* is unreadable", caplog.text)
    cli = subprocess.run([sys.executable, "-m", "compat_api", "download-model", "--source", str(tiny_reranker_dir),
                          "--target", str(target)], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert cli.returncode == 0 and "is unreadable" in cli.stderr and "Traceback" not in cli.stderr
    args = ["--model-path", str(target), "--provision-model", "BAAI/bge-reranker-v2-m3",
            "--provision-source", str(tiny_reranker_dir)]  # fmt: skip
    proc, url = start(args)
    try:
        wait_ready(proc, url)
        response = httpx.post(url + "/rerank", json={"query": "q", "compare_to": ["a", "b"]}, timeout=30)
        assert response.status_code == 200 and len(response.json()["data"]) == 2
    finally:
        out = stop(proc)
    assert "is unreadable" in out and "Traceback" not in out
    assert provision(target, source=str(tiny_reranker_dir), force=True) == "downloaded"
    assert status(target) == "ours"


def test_two_instances_with_the_same_pid_provision_one_target(
    tiny_reranker_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Containers on one NAS often have the same PID: staging directories must not collide."""
    source = tmp_path / "source"
    shutil.copytree(tiny_reranker_dir, source)
    (source / "padding.txt").write_bytes(b"x" * (64 << 20))  # a copy slow enough to overlap
    monkeypatch.setattr(os, "getpid", lambda: 1)
    target = tmp_path / "nas" / "model"
    outcomes: list[str] = []
    errors: list[BaseException] = []

    def instance(delay: float) -> None:
        time.sleep(delay)
        try:
            outcomes.append(provision(target, source=str(source)))
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=instance, args=(delay,)) for delay in (0.0, 0.05)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert sorted(outcomes) == ["downloaded", "verified"]
    assert status(target) == "ours"
    assert not list(target.parent.glob(".*partial*"))
