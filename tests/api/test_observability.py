"""Metrics, request ids, access logs and CORS."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from compat_api.api.app import create_app
from compat_api.api.observability import JsonFormatter, RequestIdFilter
from tests.conftest import make_settings


def metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} {labels} in metrics")


def test_metrics_count_requests_pairs_tokens_batches_and_cache(tiny_client: TestClient) -> None:
    tiny_client.post("/rerank", json={"query": "metrics", "compare_to": ["a", "b", "c"]})
    tiny_client.post("/rerank", json={"query": "metrics", "texts": ["d"]})
    tiny_client.post("/v1/rerank", json={"query": "metrics", "documents": []})
    response = tiny_client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert metric(text, "compat_api_requests_total", route="/rerank", dialect="legacy", status="200") >= 1
    assert metric(text, "compat_api_requests_total", route="/rerank", dialect="tei", status="200") >= 1
    assert metric(text, "compat_api_requests_total", route="/v1/rerank", dialect="cohere-v1", status="400") >= 1
    assert metric(text, "compat_api_request_seconds_count", route="/rerank", dialect="legacy") >= 1
    assert metric(text, "compat_api_pairs_total", model="tiny-bge-reranker") >= 4
    assert metric(text, "compat_api_tokens_total", model="tiny-bge-reranker") > 0
    assert metric(text, "compat_api_batch_size_count", model="tiny-bge-reranker") >= 1
    assert metric(text, "compat_api_cache_misses_total", model="tiny-bge-reranker") >= 4
    assert metric(text, "compat_api_queue_items", model="tiny-bge-reranker") == 0
    assert metric(text, "compat_api_model_load_seconds", model="tiny-bge-reranker") > 0
    assert metric(text, "compat_api_model_info", model="tiny-bge-reranker", kind="cross-encoder") == 1


def test_request_id_is_honoured_or_made(tiny_client: TestClient) -> None:
    sent = tiny_client.get("/health", headers={"X-Request-ID": "abc-123"})
    assert sent.headers["x-request-id"] == "abc-123"
    made = tiny_client.get("/health")
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    hostile = tiny_client.get("/health", headers={"X-Request-ID": "bad id\twith junk" * 20})
    assert re.fullmatch(r"[0-9a-f]{32}", hostile.headers["x-request-id"])


def test_one_access_line_per_request_with_its_id(tiny_client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="compat_api.access"):
        tiny_client.post("/rerank", json={"query": "q", "compare_to": ["a"]}, headers={"X-Request-ID": "req-42"})
    lines = [r for r in caplog.records if r.name == "compat_api.access"]
    assert len(lines) == 1
    assert lines[0].status == 200 and lines[0].path == "/rerank"  # type: ignore[attr-defined]


def test_json_log_lines_carry_the_request_id() -> None:
    record = logging.LogRecord("compat_api.access", logging.INFO, __file__, 1, "POST /rerank 200", (), None)
    record.status = 200
    RequestIdFilter().filter(record)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "POST /rerank 200" and entry["status"] == 200 and entry["level"] == "info"
    assert "request_id" in entry


def test_cors_is_off_by_default(tiny_client: TestClient) -> None:
    response = tiny_client.options(
        "/rerank", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in response.headers


@pytest.fixture(scope="module")
def cors_client(tiny_reranker_dir: Path) -> Iterator[TestClient]:
    with TestClient(
        create_app(make_settings(model_path=str(tiny_reranker_dir), cors_origins="https://app.example"))
    ) as c:
        yield c


def test_cors_on_by_setting(cors_client: TestClient) -> None:
    preflight = cors_client.options(
        "/rerank", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    )
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    other = cors_client.options(
        "/rerank", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert other.headers.get("access-control-allow-origin") != "https://evil.example"


def test_swagger_ui_assets_are_served_locally(tiny_client: TestClient) -> None:
    page = tiny_client.get("/docs").text
    assert "cdn.jsdelivr.net" not in page and "unpkg.com" not in page
    scripts = re.findall(r'src="([^"]+\.js)"', page)
    assert scripts, page
    for script in scripts:
        assert script.startswith("/"), script
        assert tiny_client.get(script).status_code == 200
