"""`/health` answers 200 only when a real scoring call works; `/` leads to the Swagger UI."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from compat_api.api import health
from compat_api.api.app import create_app
from compat_api.api.errors import ErrorBody
from compat_api.api.health import HealthResponse
from compat_api.core.registry import ModelRegistry
from tests.conftest import make_settings


def test_health_reports_the_ready_model(tiny_client: TestClient) -> None:
    response = tiny_client.get("/health")
    assert response.status_code == 200
    body = HealthResponse.model_validate(response.json())
    assert body.status == "ok"
    assert body.models is not None
    [model] = body.models
    assert (model.name, model.kind, model.device, model.dtype) == (
        "tiny-bge-reranker",
        "cross-encoder",
        "cpu",
        "float32",
    )
    assert model.ready and model.error is None


def test_health_is_503_before_the_model_is_loaded(tiny_reranker_dir: Path) -> None:
    client = TestClient(create_app(make_settings(model_path=str(tiny_reranker_dir))))  # lifespan not run
    response = client.get("/health")
    assert response.status_code == 503
    assert HealthResponse.model_validate(response.json()).status == "loading"
    rerank = client.post("/rerank", json={"query": "a", "compare_to": ["b"]})
    assert rerank.status_code == 503
    assert "loading" in rerank.json()["message"]


def test_health_is_503_when_the_model_cannot_score(tiny_reranker_dir: Path) -> None:
    settings = make_settings(model_path=str(tiny_reranker_dir), health_max_age=0.0)
    with TestClient(create_app(settings)) as client:
        assert client.get("/health").status_code == 200
        engine = client.app.state.registry.models[0].engine  # type: ignore[attr-defined]

        def broken(items: Sequence[Any]) -> list[Any]:
            raise RuntimeError("CUDA error: device-side assert triggered")

        engine.scorer.forward = broken
        response = client.get("/health")
        assert response.status_code == 503
        body = HealthResponse.model_validate(response.json())
        assert body.status == "unhealthy"
        assert body.models is not None and "RuntimeError" in (body.models[0].error or "")
        failed = client.post("/rerank", json={"query": "a", "compare_to": ["b"]})
        assert failed.status_code == 500
        assert failed.json()["type"] == "backend"


def test_a_probe_that_raises_a_bug_is_a_503_that_says_why(tiny_reranker_dir: Path) -> None:
    settings = make_settings(model_path=str(tiny_reranker_dir), health_max_age=0.0)
    with TestClient(create_app(settings)) as client:
        engine = client.app.state.registry.models[0].engine  # type: ignore[attr-defined]

        async def broken(*args: Any, **kwargs: Any) -> Any:
            raise ValueError("the tokenizer choked")

        engine.score = broken
        response = client.get("/health")
        assert response.status_code == 503
        body = HealthResponse.model_validate(response.json())
        assert body.status == "unhealthy"
        assert body.models is not None and body.models[0].error == "the probe failed: ValueError: the tokenizer choked"


def test_a_slow_probe_answers_within_the_health_timeout_and_counts_later(
    tiny_reranker_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The platform stops waiting after its own timeout (FC: 3 s), so /health answers within
    RERANK_HEALTH_TIMEOUT; the probe keeps running, one at a time; a call stuck past the busy
    window is a 503; the probe's result counts once it has scored."""
    monkeypatch.setattr(health, "BUSY_WINDOW_S", 1.0)
    settings = make_settings(model_path=str(tiny_reranker_dir), health_max_age=2.0, health_timeout=0.2)
    with TestClient(create_app(settings)) as client:
        engine = client.app.state.registry.models[0].engine  # type: ignore[attr-defined]
        real, started, release = engine.scorer.forward, threading.Event(), threading.Event()
        real_score, probes = engine.score, []

        def hung(items: Sequence[Any]) -> list[Any]:
            started.set()
            assert release.wait(timeout=30)
            return real(items)  # type: ignore[no-any-return]

        def counted(*args: Any, **kwargs: Any) -> Any:
            probes.append(args)
            return real_score(*args, **kwargs)

        engine.scorer.forward, engine.score = hung, counted
        engine.last_success = time.monotonic() - 10  # the last real call is older than health_max_age
        assert client.get("/health").status_code == 200, "a model call running for 0.2 s is a busy model"
        assert started.wait(timeout=10)
        time.sleep(1.1)
        for _ in range(2):
            began = time.monotonic()
            response = client.get("/health")
            assert response.status_code == 503 and time.monotonic() - began < 5, "answered, not hung"
            body = HealthResponse.model_validate(response.json())
            assert body.models is not None and "a model call has been running for" in (body.models[0].error or "")
        assert len(probes) == 1, "one probe in flight, not one per check"
        release.set()
        deadline = time.monotonic() + 30
        while client.get("/health").status_code != 200:
            assert time.monotonic() < deadline, "the finished probe never counted"
            time.sleep(0.05)
        assert len(probes) == 1


def test_root_redirects_to_swagger_ui(tiny_client: TestClient) -> None:
    response = tiny_client.get("/", follow_redirects=False)
    assert response.status_code in (302, 307)
    assert response.headers["location"] == "/docs"
    assert "swagger" in tiny_client.get("/docs").text.lower()


def test_health_reports_engine_counters(tiny_client: TestClient) -> None:
    tiny_client.post("/rerank", json={"query": "counters", "compare_to": ["a b c", "d"]})
    [model] = HealthResponse.model_validate(tiny_client.get("/health").json()).models or []
    engine = model.engine
    assert engine.batches >= 1 and engine.pairs >= 2
    assert engine.padded_tokens >= engine.real_tokens > 0
    assert 0.0 <= engine.padding_waste < 1.0
    assert engine.cache_misses >= 2 and engine.queued == 0


def test_the_command_lines_server_answers_503_while_its_models_load(
    tiny_reranker_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A platform's health check (FC, Kubernetes) must find a live server during a long first
    start: it answers 503 `loading` (and the routes a JSON 503) until the models are ready."""
    release = threading.Event()
    real_load = ModelRegistry.load

    def slow_load(self: ModelRegistry) -> None:
        assert release.wait(timeout=60)
        real_load(self)

    monkeypatch.setattr(ModelRegistry, "load", slow_load)
    app = create_app(make_settings(model_path=str(tiny_reranker_dir)), background_load=True)
    with TestClient(app) as client:
        loading = client.get("/health")
        assert loading.status_code == 503 and HealthResponse.model_validate(loading.json()).status == "loading"
        early = client.post("/v1/rerank", json={"query": "q", "documents": ["a"]})
        assert early.status_code == 503 and "still loading" in ErrorBody.model_validate(early.json()).message
        release.set()
        deadline = time.monotonic() + 60
        while client.get("/health").status_code != 200:
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.05)
        assert client.post("/v1/rerank", json={"query": "q", "documents": ["a"]}).status_code == 200


def test_a_model_that_fails_to_load_in_the_background_stops_the_server(tmp_path: Path) -> None:
    stopped = threading.Event()
    app = create_app(make_settings(model_path=str(tmp_path / "missing")), background_load=True)
    app.state.on_startup_failure = stopped.set
    with TestClient(app) as client:
        assert stopped.wait(timeout=30), "the server is told to stop"
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "failed"
    assert "is not a directory" in app.state.startup_error
