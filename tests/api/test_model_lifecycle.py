"""Several models, the admin reload route, and hot swap of a model directory under load."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from compat_api.api.app import create_app
from compat_api.api.errors import ErrorBody
from compat_api.api.health import HealthResponse, ReloadOutcome
from compat_api.api.models import ModelList
from tests.conftest import make_settings
from tests.servers import serving

QUERY = "what is the capital of france"
DOCS = ["paris is the capital of france", "cats", "berlin is the capital of germany"]


def flag_scores(path: Path) -> list[float]:
    from FlagEmbedding import FlagReranker

    reranker = FlagReranker(str(path), use_fp16=False, devices=["cpu"], max_length=512)
    return [float(s) for s in reranker.compute_score([[QUERY, d] for d in DOCS], normalize=True)]


def scores(client: TestClient, model: str | None, path: str = "/v1/rerank") -> list[float]:
    body: dict[str, object] = {"query": QUERY, "documents": DOCS}
    if model is not None:
        body["model"] = model
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    by_index = {r["index"]: r["relevance_score"] for r in response.json()["results"]}
    return [by_index[i] for i in range(len(DOCS))]


def test_each_model_answers_with_its_own_scores(
    two_models: TestClient, tiny_reranker_dir: Path, other_reranker_dir: Path
) -> None:
    assert scores(two_models, "alpha") == pytest.approx(flag_scores(tiny_reranker_dir), abs=1e-4)
    assert scores(two_models, "beta") == pytest.approx(flag_scores(other_reranker_dir), abs=1e-4)
    assert scores(two_models, None) == scores(two_models, "alpha"), "no model named: the first configured one"
    listing = ModelList.model_validate(two_models.get("/v1/models").json())
    assert [m.id for m in listing.data] == ["alpha", "beta"]


def test_an_unknown_model_among_several_is_a_404_listing_them(two_models: TestClient) -> None:
    response = two_models.post("/v1/rerank", json={"model": "gamma", "query": QUERY, "documents": DOCS})
    assert response.status_code == 404
    body = ErrorBody.model_validate(response.json())
    assert body.field == "model" and "alpha, beta" in body.message
    legacy = two_models.post("/rerank", json={"query": QUERY, "compare_to": DOCS})
    assert legacy.status_code == 200, "the original API has no model field and gets the first model"


def test_health_shows_every_model_with_its_version(two_models: TestClient) -> None:
    health = HealthResponse.model_validate(two_models.get("/health").json())
    assert health.models is not None
    assert [(m.name, m.kind, m.ready) for m in health.models] == [("alpha", "cross-encoder", True),
                                                                 ("beta", "cross-encoder", True)]  # fmt: skip
    assert all(len(m.fingerprint) == 16 and m.loaded_at > 0 and m.last_reload is None for m in health.models)


# ---------------------------------------------------------------- admin reload


@pytest.fixture()
def swappable(tiny_reranker_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "nas" / "bge-reranker"
    shutil.copytree(tiny_reranker_dir, target)
    return target


def test_admin_reload_needs_the_admin_key(swappable: Path) -> None:
    with TestClient(create_app(make_settings(model_path=str(swappable), reload_interval=0))) as off:
        assert off.post("/admin/models/bge-reranker/reload").status_code == 403
    settings = make_settings(model_path=str(swappable), reload_interval=0, admin_key="adm", api_keys="user")
    with TestClient(create_app(settings)) as client:
        for headers in ({}, {"Authorization": "Bearer user"}, {"Authorization": "Bearer adm2"}):
            response = client.post("/admin/models/bge-reranker/reload", headers=headers)
            assert response.status_code == 401
            assert ErrorBody.model_validate(response.json()).type == "unauthorized"
        ok = client.post("/admin/models/bge-reranker/reload", headers={"Authorization": "Bearer adm"})
        assert ok.status_code == 200 and ReloadOutcome.model_validate(ok.json()).ok
        before = batch_count(client)
        client.post("/rerank", json={"query": QUERY, "compare_to": DOCS}, headers={"Authorization": "Bearer user"})
        assert batch_count(client) > before, "the swapped-in version's model calls reach the metrics"
        missing = client.post("/admin/models/nope/reload", headers={"Authorization": "Bearer adm"})
        assert missing.status_code == 404


def batch_count(client: TestClient) -> float:
    for line in client.get("/metrics", headers={"Authorization": "Bearer user"}).text.splitlines():
        if line.startswith('compat_api_batch_size_count{model="bge-reranker"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def copy_over(source: Path, target: Path, seconds: float = 2.0) -> None:
    """Upload a model over another the way a NAS upload does: file by file, weights in pieces."""
    files = sorted(source.iterdir(), key=lambda f: f.suffix == ".safetensors")
    for file in files:
        data = file.read_bytes()
        with (target / file.name).open("wb") as sink:
            pieces = 8 if file.suffix == ".safetensors" else 1
            step = max(1, len(data) // pieces)
            for start in range(0, len(data), step):
                sink.write(data[start : start + step])
                sink.flush()
                time.sleep(seconds / (pieces * len(files)))


def test_a_broken_upload_keeps_the_old_model_and_says_why(swappable: Path, other_reranker_dir: Path) -> None:
    settings = make_settings(model_path=str(swappable), reload_interval=0, admin_key="adm")
    auth = {"Authorization": "Bearer adm"}
    with TestClient(create_app(settings)) as client:
        before = scores(client, None)
        weights = swappable / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:5000])  # truncated upload
        failed = client.post("/admin/models/bge-reranker/reload", headers=auth)
        assert failed.status_code == 422 and "previous version keeps serving" in failed.json()["message"]
        assert scores(client, None) == before
        health = HealthResponse.model_validate(client.get("/health").json())
        assert health.status == "ok"
        assert health.models is not None
        reload = health.models[0].last_reload
        assert reload is not None and not reload.ok and "cannot load" in (reload.error or "")
        (swappable / "config.json").write_text("{broken")
        assert client.post("/admin/models/bge-reranker/reload", headers=auth).status_code == 422
        assert scores(client, None) == before
        copy_over(other_reranker_dir, swappable, seconds=0.2)  # the next, complete upload is tried again
        assert client.post("/admin/models/bge-reranker/reload", headers=auth).status_code == 200
        assert scores(client, None) == pytest.approx(flag_scores(other_reranker_dir), abs=1e-4)


def test_hot_swap_under_load_fails_no_request(
    swappable: Path, tiny_reranker_dir: Path, other_reranker_dir: Path
) -> None:
    old, new = flag_scores(tiny_reranker_dir), flag_scores(other_reranker_dir)
    args = ["--model-path", str(swappable), "--reload-interval", "0.3", "--reload-settle", "1.5", "--cache-mb", "0"]
    with serving(args) as url:
        failures: list[str] = []
        seen: list[list[float]] = []
        stop = threading.Event()

        def client() -> None:
            with httpx.Client(timeout=30) as http:
                while not stop.is_set():
                    try:
                        response = http.post(url + "/rerank", json={"query": QUERY, "compare_to": DOCS})
                        if response.status_code != 200:
                            failures.append(f"{response.status_code} {response.text[:200]}")
                        else:
                            seen.append(response.json()["data"])
                    except httpx.HTTPError as exc:
                        failures.append(repr(exc))

        workers = [threading.Thread(target=client) for _ in range(4)]
        for worker in workers:
            worker.start()
        try:
            time.sleep(1.0)
            copy_over(other_reranker_dir, swappable, seconds=3.0)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not (seen and seen[-1] == pytest.approx(new, abs=1e-4)):
                time.sleep(0.2)
            time.sleep(1.0)
        finally:
            stop.set()
            for worker in workers:
                worker.join(timeout=30)
        health = HealthResponse.model_validate(httpx.get(url + "/health", timeout=10).json())
    assert not failures, failures[:5]
    assert seen[0] == pytest.approx(old, abs=1e-4)
    assert seen[-1] == pytest.approx(new, abs=1e-4), "scores change to the new model's"
    assert all(s == pytest.approx(old, abs=1e-4) or s == pytest.approx(new, abs=1e-4) for s in seen)
    assert health.models is not None
    reload = health.models[0].last_reload
    assert reload is not None and reload.ok


def test_a_hot_swap_never_resets_the_models_counters(swappable: Path) -> None:
    """Prometheus reads a counter that falls as a restart: a swap keeps counting from where the
    previous version stopped, its work included."""
    settings = make_settings(model_path=str(swappable), reload_interval=0, admin_key="adm")
    with TestClient(create_app(settings)) as client:

        def counted() -> list[float]:
            text = client.get("/metrics").text
            names = ("compat_api_pairs_total", "compat_api_batches_total", "compat_api_cache_misses_total")
            return [next(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                         if line.startswith(f'{name}{{model="bge-reranker"}}')) for name in names]  # fmt: skip

        client.post("/rerank", json={"query": QUERY, "compare_to": DOCS})
        before = counted()
        assert before[0] >= 3
        assert client.post("/admin/models/bge-reranker/reload", headers={"Authorization": "Bearer adm"}).is_success
        deadline = time.monotonic() + 10
        while client.app.state.registry.models[0].draining and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.05)
        swapped = counted()
        assert all(now >= then for now, then in zip(swapped, before, strict=True)), (swapped, before)
        client.post("/rerank", json={"query": "another query", "compare_to": DOCS})
        after = counted()
        assert after[0] == swapped[0] + 3 and after[1] > swapped[1] and after[2] == swapped[2] + 3
        health = HealthResponse.model_validate(client.get("/health").json())
        assert health.models is not None and health.models[0].engine.pairs >= after[0]
