"""The engine seen over HTTP: 429 with Retry-After on a full queue, dropped work when the client
leaves, cached repeats, chunking through the Cohere v1 `max_chunks_per_doc` field."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import MutableMapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from compat_api.api.app import create_app
from compat_api.api.errors import ErrorBody
from compat_api.api.rerank.cohere import CohereRerankResponse
from compat_api.core.engine import BatchEngine
from compat_api.core.models.base import Item
from tests.conftest import make_settings


def hold_model(app: FastAPI) -> tuple[threading.Event, list[int]]:
    """Make the model wait on a gate; returns the gate and the sizes of the batches it ran."""
    engine: BatchEngine = app.state.registry.models[0].engine
    gate, sizes = threading.Event(), []
    real = engine.scorer.forward

    def gated(items: Sequence[Item]) -> list[Any]:
        gate.wait(timeout=30)
        sizes.append(len(items))
        return real(items)

    engine.scorer.forward = gated  # type: ignore[method-assign]
    return gate, sizes


async def with_app(app: FastAPI, body: Any) -> None:
    async with app.router.lifespan_context(app):
        await body()


def test_full_queue_answers_429_with_retry_after_while_admitted_requests_complete(tiny_reranker_dir: Path) -> None:
    app = create_app(make_settings(model_path=str(tiny_reranker_dir), max_queue_pairs=8, cache_mb=0))

    async def body() -> None:
        gate, _ = hold_model(app)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:

            def post(i: int) -> Any:
                docs = [f"document {i} {j}" for j in range(3)]
                return client.post("/v1/rerank", json={"query": "q", "documents": docs})

            admitted = [asyncio.create_task(post(i)) for i in range(2)]  # 2 x (3 + 1) = 8 items
            await asyncio.sleep(0.3)
            burst = await asyncio.gather(*(post(10 + i) for i in range(5)))
            for response in burst:
                assert response.status_code == 429
                assert int(response.headers["retry-after"]) >= 1
                assert ErrorBody.model_validate(response.json()).type == "overloaded"
            tei = await client.post("/rerank", json={"query": "q", "texts": ["a"]})
            assert tei.status_code == 429 and tei.json()["error_type"] == "overloaded"
            gate.set()
            for i, task in enumerate(admitted):
                done = await task
                assert done.status_code == 200
                parsed = CohereRerankResponse.model_validate(done.json())
                assert sorted(r.index for r in parsed.results) == [0, 1, 2]
                assert i < 2

    asyncio.run(with_app(app, body))


def test_a_disconnected_clients_pending_pairs_are_dropped(tiny_reranker_dir: Path) -> None:
    app = create_app(make_settings(model_path=str(tiny_reranker_dir), cache_mb=0))

    async def call(payload: dict[str, Any], leave_after: float | None) -> list[MutableMapping[str, Any]]:
        body = json.dumps(payload).encode()
        sent: list[MutableMapping[str, Any]] = []
        delivered = False

        async def receive() -> MutableMapping[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.sleep(leave_after if leave_after is not None else 3600)
            return {"type": "http.disconnect"}

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/v1/rerank", "raw_path": b"/v1/rerank", "query_string": b"",
                 "root_path": "", "headers": [(b"content-type", b"application/json")],
                 "client": ("127.0.0.1", 1234), "server": ("127.0.0.1", 80)}  # fmt: skip
        await app(scope, receive, send)
        return sent

    async def body() -> None:
        gate, sizes = hold_model(app)
        engine: BatchEngine = app.state.registry.models[0].engine
        busy = asyncio.create_task(call({"query": "q", "documents": ["first"]}, None))
        await asyncio.sleep(0.3)  # "first" is inside the model now
        leaving = asyncio.create_task(call({"query": "q", "documents": [f"d{i}" for i in range(20)]}, 0.2))
        await asyncio.sleep(0.6)
        assert leaving.done(), "the handler returns as soon as its client is gone"
        gate.set()
        await busy
        assert sizes == [1], "the 20 pairs of the client that left never reach the model"
        assert engine.queued_items == 0

    asyncio.run(with_app(app, body))


@pytest.mark.parametrize("path", ["/v1/rerank", "/rerank"])
def test_max_chunks_per_doc_chunks_long_documents(tiny_reranker_dir: Path, path: str) -> None:
    from fastapi.testclient import TestClient

    settings = make_settings(model_path=str(tiny_reranker_dir), max_length=32, long_documents="truncate")
    long_doc = "cats dogs bread flour water yeast " * 20 + "paris is the capital of france"
    with TestClient(create_app(settings)) as client:

        def ask(**extra: Any) -> CohereRerankResponse:
            response = client.post(path, json={"query": "capital of france", "documents": [long_doc], **extra})
            assert response.status_code == 200
            return CohereRerankResponse.model_validate(response.json())

        truncated, chunked = ask(), ask(max_chunks_per_doc=20)
        assert chunked.meta.tokens.input_tokens > 3 * truncated.meta.tokens.input_tokens
        # the best chunk scores at least the first window (the truncated document), up to the float
        # rounding of another batch shape (a batch of 20 chunks may run on another kernel)
        assert chunked.results[0].relevance_score >= truncated.results[0].relevance_score - 1e-6


def test_repeated_requests_are_served_from_the_cache(tiny_reranker_dir: Path) -> None:
    from fastapi.testclient import TestClient

    with TestClient(create_app(make_settings(model_path=str(tiny_reranker_dir)))) as client:
        engine: BatchEngine = client.app.state.registry.models[0].engine  # type: ignore[attr-defined]
        body = {"query": "q", "documents": ["x y z", "cats"]}
        first = client.post("/v1/rerank", json=body).json()
        batches = engine.batches_run
        second = client.post("/v1/rerank", json=body).json()
        assert engine.batches_run == batches
        assert first["results"] == second["results"] and first["meta"] == second["meta"]
        assert engine.cache is not None and engine.cache.hits >= 2
