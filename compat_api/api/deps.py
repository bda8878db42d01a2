"""Request-scoped access to the core: the registry, and scoring that stops when the client leaves."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated

from fastapi import Depends, Request

from compat_api.core.errors import DeadlineExceeded, ModelNotReady, RequestCancelled
from compat_api.core.registry import ModelRegistry
from compat_api.core.rerank import RerankOutcome, RerankQuery, rerank


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


async def run_rerank(request: Request, registry: ModelRegistry, query: RerankQuery) -> RerankOutcome:
    """Rerank within the request deadline, dropping the pending work if the client disconnects
    or the deadline passes first."""
    timeout = registry.settings.request_timeout
    work = asyncio.ensure_future(rerank(registry, query))
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({work, watcher}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if work in done:
            return work.result()
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work
        if watcher in done:
            raise RequestCancelled("the client closed the connection before the answer was ready")
        raise DeadlineExceeded(
            f"the request took longer than {timeout:g}s (RERANK_REQUEST_TIMEOUT); its pending work was dropped"
        )
    finally:
        watcher.cancel()
        if not work.done():
            work.cancel()
