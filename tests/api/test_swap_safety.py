"""A hot swap that cannot go wrong (review of 2026-11-25, rows 4, 6, 7, 8, 12, 26, S1): files
dropped into a served directory never run as code, a version that scores NaN never serves, a
request keeps the version it started on, and the watcher survives filesystem errors."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from compat_api.api.app import create_app
from compat_api.api.errors import ErrorBody, TeiErrorBody
from compat_api.api.health import HealthResponse
from compat_api.core import registry as registry_module
from compat_api.core.engine import BatchEngine
from compat_api.core.errors import ModelLoadError
from compat_api.core.fingerprint import fingerprint
from compat_api.core.ranking import Normalization, normalize
from compat_api.core.registry import ModelRegistry, bundled_model_path
from compat_api.core.rerank import RerankQuery, rerank
from tests.conftest import make_settings

ADMIN = {"Authorization": "Bearer adm"}
QUERY = "what is the capital of france"
DOCS = ["paris is the capital of france", "cats", "berlin is the capital of germany"]


@pytest.fixture()
def served_dir(tiny_reranker_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "nas" / "m"
    shutil.copytree(tiny_reranker_dir, target)
    return target


def poisoned(source: Path, target: Path, value: float) -> Path:
    """A copy of the model whose classifier bias is `value` (NaN or infinity): every score is too."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target, dirs_exist_ok=True)
    weights = load_file(str(target / "model.safetensors"))
    bias = weights["classifier.out_proj.bias"]
    weights["classifier.out_proj.bias"] = bias.new_full(bias.shape, value)
    save_file(weights, str(target / "model.safetensors"), metadata={"format": "pt"})
    return target


def rerank_status(client: TestClient) -> list[float]:
    response = client.post("/rerank", json={"query": QUERY, "compare_to": DOCS})
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


def test_code_dropped_into_a_served_directory_never_runs(served_dir: Path, tmp_path: Path) -> None:
    canary = tmp_path / "pwned"
    settings = make_settings(model_path=str(served_dir), reload_interval=0, admin_key="adm")
    with TestClient(create_app(settings)) as client:
        before = rerank_status(client)
        (served_dir / "evil.py").write_text(
            f"open({str(canary)!r}, 'a').write('code from the model directory ran')\n"
            "from transformers import PretrainedConfig\n"
            "class EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n"
        )
        (served_dir / "config.json").write_text(json.dumps({
            "architectures": ["LayerWiseMiniCPMForCausalLM"], "model_type": "evil",
            "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}}))  # fmt: skip
        response = client.post("/admin/models/m/reload", headers=ADMIN)
        assert response.status_code == 422
        assert "RERANK_TRUST_REMOTE_CODE" in ErrorBody.model_validate(response.json()).message
        assert not canary.exists()
        assert rerank_status(client) == before, "the old version keeps serving"
    with pytest.raises(ModelLoadError, match="RERANK_TRUST_REMOTE_CODE"):
        registry_module.load_scorer(registry_module.ModelSpec("m", str(served_dir)), settings)
    assert not canary.exists()


def test_with_remote_code_trusted_a_hot_swap_never_runs_changed_code(served_dir: Path) -> None:
    settings = make_settings(model_path=str(served_dir), reload_interval=0, admin_key="adm", trust_remote_code=True)
    with TestClient(create_app(settings)) as client:
        (served_dir / "modeling_new.py").write_text("raise SystemExit('must never be imported')\n")
        response = client.post("/admin/models/m/reload", headers=ADMIN)
        assert response.status_code == 422
        assert "restart the server" in ErrorBody.model_validate(response.json()).message
        rerank_status(client)


def test_a_model_that_scores_nan_never_serves(tiny_reranker_dir: Path, tmp_path: Path) -> None:
    nan_dir = poisoned(tiny_reranker_dir, tmp_path / "nan", float("nan"))
    settings = make_settings(model_path=str(nan_dir))
    with pytest.raises(ModelLoadError, match="NaN or infinity"), TestClient(create_app(settings)):
        pass


def test_a_nan_version_is_never_swapped_in(served_dir: Path, tiny_reranker_dir: Path, tmp_path: Path) -> None:
    settings = make_settings(model_path=str(served_dir), reload_interval=0, admin_key="adm")
    with TestClient(create_app(settings)) as client:
        before = rerank_status(client)
        for value in (float("nan"), float("inf")):
            poisoned(tiny_reranker_dir, served_dir, value)
            response = client.post("/admin/models/m/reload", headers=ADMIN)
            assert response.status_code == 422 and "NaN or infinity" in response.json()["message"]
            assert rerank_status(client) == before
            assert client.get("/health").status_code == 200


def test_a_request_that_meets_a_non_finite_score_gets_the_model_failure_error(
    tiny_reranker_dir: Path, tmp_path: Path
) -> None:
    nan_dir = poisoned(tiny_reranker_dir, tmp_path / "nan", float("nan"))
    settings = make_settings(model_path=str(nan_dir), warmup=False)  # the default health_max_age: traffic counts
    with TestClient(create_app(settings)) as client:
        cohere = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS})
        assert cohere.status_code == 500 and ErrorBody.model_validate(cohere.json()).type == "backend"
        assert "non-finite" in cohere.json()["message"]
        tei = client.post("/rerank", json={"query": QUERY, "texts": DOCS})
        assert tei.status_code == 424 and TeiErrorBody.model_validate(tei.json()).error_type == "backend"
        client.post("/rerank", json={"query": QUERY, "texts": DOCS})  # traffic must not hide it either
        health = client.get("/health")
        assert health.status_code == 503
        parsed = HealthResponse.model_validate(health.json())
        assert parsed.models is not None and "non-finite" in (parsed.models[0].error or "")


def test_a_two_label_head_is_refused_at_load(tiny_reranker_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    target = tmp_path / "two-labels"
    shutil.copytree(tiny_reranker_dir, target)
    config = json.loads((target / "config.json").read_text())
    config.update(id2label={"0": "NO", "1": "YES"}, label2id={"NO": 0, "YES": 1})
    (target / "config.json").write_text(json.dumps(config))
    weights = load_file(str(target / "model.safetensors"))
    for name in ("classifier.out_proj.weight", "classifier.out_proj.bias"):
        weights[name] = weights[name].repeat(2, *([1] * (weights[name].dim() - 1)))
    save_file(weights, str(target / "model.safetensors"), metadata={"format": "pt"})
    settings = make_settings(model_path=str(target), warmup=False)
    with pytest.raises(ModelLoadError, match="2-label classification head"), TestClient(create_app(settings)):
        pass


def test_a_request_keeps_the_version_it_started_on(served_dir: Path, tiny_reranker_dir: Path) -> None:
    """A swap to an embedding model mid-request must not normalize old logits the new way."""
    settings = make_settings(model_path=str(served_dir), reload_interval=0, cache_mb=0)
    gate = threading.Event()

    async def run() -> tuple[list[float], list[float], str]:
        registry = ModelRegistry(settings)
        await asyncio.to_thread(registry.load)
        registry.start()
        served = registry.models[0]
        inner = served.engine.scorer.forward

        def held(items: Any) -> list[Any]:
            gate.wait(timeout=30)
            return inner(items)

        served.engine.scorer.forward = held  # type: ignore[method-assign]
        expected = normalize(served.engine.scorer.score(QUERY, DOCS), Normalization.SIGMOID)
        pending = asyncio.create_task(rerank(registry, RerankQuery(query=QUERY, documents=DOCS)))
        await asyncio.sleep(0.3)
        for file in served_dir.iterdir():
            file.unlink()
        for file in Path(bundled_model_path()).iterdir():
            if file.is_file():
                shutil.copy2(file, served_dir / file.name)
        shutil.copytree(Path(bundled_model_path()) / "1_Pooling", served_dir / "1_Pooling")
        outcome = await registry.reload("m")
        assert outcome.ok, outcome.error
        gate.set()
        result = await pending
        kind = registry.models[0].info.kind
        await registry.close()
        return result.scores, expected, kind

    got, expected, kind = asyncio.run(run())
    assert kind == "embedding", "the swap happened while the request was in flight"
    assert got == pytest.approx(expected, abs=1e-6)


def test_the_watcher_survives_filesystem_errors(served_dir: Path, other_reranker_dir: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    real = fingerprint
    failing = {"on": True}

    def flaky(path: str | Path, salt: str = "") -> str:
        if failing["on"]:
            raise PermissionError(13, "Permission denied", str(Path(path) / "config.json"))
        return real(path, salt)

    settings = make_settings(model_path=str(served_dir), reload_interval=0.1, reload_settle=0.2, admin_key="adm")
    with TestClient(create_app(settings)) as client:
        monkeypatch.setattr(registry_module, "fingerprint", flaky)
        time.sleep(0.5)
        health = HealthResponse.model_validate(client.get("/health").json())
        assert health.models is not None and health.models[0].last_reload is None, "no reload was tried"
        assert "Permission denied" in (health.models[0].watch_error or "")
        failing["on"] = False
        deadline = time.monotonic() + 30
        while (model := HealthResponse.model_validate(client.get("/health").json()).models) and model[0].watch_error:
            assert time.monotonic() < deadline, "a check that works again clears the error"
            time.sleep(0.1)
        failing["on"] = True
        admin = client.post("/admin/models/m/reload", headers=ADMIN)
        assert admin.status_code == 422 and "Permission denied" in admin.json()["message"]
        failing["on"] = False
        from tests.api.test_model_lifecycle import copy_over

        copy_over(other_reranker_dir, served_dir, seconds=0.1)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            health = HealthResponse.model_validate(client.get("/health").json())
            assert health.models is not None
            last = health.models[0].last_reload
            if last is not None and last.ok:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the watcher never picked the new version up after the errors")


def test_a_same_size_same_mtime_replacement_changes_the_fingerprint(served_dir: Path, other_reranker_dir: Path) -> None:
    weights = served_dir / "model.safetensors"
    before = fingerprint(served_dir)
    stamp = weights.stat()
    replacement = (other_reranker_dir / "model.safetensors").read_bytes()
    assert len(replacement) == stamp.st_size, "the other version has the same shape"
    with weights.open("r+b") as handle:  # rsync --inplace: same inode, same size
        handle.write(replacement)
    os.utime(weights, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # and the mtime preserved
    assert weights.stat().st_mtime_ns == stamp.st_mtime_ns
    assert fingerprint(served_dir) != before


def test_closing_an_engine_never_blocks_the_event_loop(tiny_reranker_dir: Path) -> None:
    from compat_api.core.models.cross_encoder import CrossEncoderScorer

    scorer = CrossEncoderScorer(str(tiny_reranker_dir), name="t", max_length=64)
    gate = threading.Event()
    inner = scorer.forward

    def held(items: Any) -> list[Any]:
        gate.wait(timeout=30)
        return inner(items)

    scorer.forward = held  # type: ignore[method-assign]

    async def run() -> float:
        engine = BatchEngine(scorer, max_batch_tokens=1024, max_batch_size=8)
        engine.start()
        request = asyncio.create_task(engine.score("q", ["a"]))
        await asyncio.sleep(0.2)  # its batch is now running, held
        closing = asyncio.create_task(engine.close())
        started = time.monotonic()
        await asyncio.sleep(0.05)
        ticked = time.monotonic() - started
        gate.set()
        await closing
        request.cancel()
        return ticked

    assert asyncio.run(run()) < 0.5, "the loop kept running while the model thread finished"
