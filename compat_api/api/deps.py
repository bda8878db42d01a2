"""Request-scoped access to the core: the registry, and work that stops when the client leaves,
the deadline passes, or the server's shutdown grace runs out."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request

from compat_api.core.embed import EmbedOutcome, EmbedQuery, embed
from compat_api.core.errors import DeadlineExceeded, ModelNotReady, RequestCancelled
from compat_api.core.registry import ModelRegistry
from compat_api.core.rerank import RerankOutcome, RerankQuery, rerank

T = TypeVar("T")


def get_registry(request: Request) -> ModelRegistry:
    registry: ModelRegistry | None = getattr(request.app.state, "registry", None)
    if registry is None:
        raise ModelNotReady("the model is still loading")
    return registry


Registry = Annotated[ModelRegistry, Depends(get_registry)]


async def _disconnected(request: Request) -> None:
    """Returns once the client has gone (the body is already read, so only that can arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def bounded(request: Request, registry: ModelRegistry, work: Coroutine[Any, Any, T]) -> T:
    """Run `work` within the request deadline, dropping its pending work if the client
    disconnects, the deadline passes, or the shutdown grace ends first (a JSON 503, never a
    connection cut mid-answer)."""
    timeout = registry.settings.request_timeout
    task = asyncio.ensure_future(work)
    watchers: set[asyncio.Future[Any]] = {asyncio.ensure_future(_disconnected(request))}
    draining: asyncio.Event | None = getattr(request.app.state, "draining", None)
    if draining is not None:
        watchers.add(asyncio.ensure_future(draining.wait()))
    try:
        done, _ = await asyncio.wait({task, *watchers}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if draining is not None and draining.is_set():
            raise ModelNotReady("the server is shutting down and its grace period ran out; retry the request")
        if done:
            raise RequestCancelled("the client closed the connection before the answer was ready")
        raise DeadlineExceeded(
            f"the request took longer than {timeout:g}s (RERANK_REQUEST_TIMEOUT); its pending work was dropped"
        )
    finally:
        for watcher in watchers:
            watcher.cancel()
        if not task.done():
            task.cancel()


async def run_rerank(request: Request, registry: ModelRegistry, query: RerankQuery) -> RerankOutcome:
    """Rerank within the request's bounds (see `bounded`)."""
    return await bounded(request, registry, rerank(registry, query))


async def run_embed(request: Request, registry: ModelRegistry, query: EmbedQuery) -> EmbedOutcome:
    """Embed within the request's bounds (see `bounded`)."""
    return await bounded(request, registry, embed(registry, query))
