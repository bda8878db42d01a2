"""Liveness, readiness, metrics and the landing redirect: `GET /health`, `GET /metrics`, `GET /`.

`/health` is 200 when every required model answers a real scoring call: one finished within
`RERANK_HEALTH_MAX_AGE` seconds, or a model call that started less than BUSY_WINDOW_S ago is
still running (a busy model is a healthy one), or else a probe scored now. The probe is never
refused by admission and goes before queued work, so a full queue cannot make a healthy instance
look dead. `/health` waits at most `RERANK_HEALTH_TIMEOUT` seconds for the probe (below the
platform's own health-check timeout, so the platform reads our answer rather than its timeout);
a probe still running then keeps running, one at a time per model, the busy rule judges the
model meanwhile (a call stuck for BUSY_WINDOW_S is a 503), and a later check counts its result.
With API keys set, a request without a valid key gets the status alone: the detail (paths,
fingerprints, reload errors) needs a key, as `/metrics` does.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import weakref

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field

from compat_api.api.auth import has_valid_key
from compat_api.core.engine import BatchEngine
from compat_api.core.errors import CoreError
from compat_api.core.registry import WARMUP_DOCUMENTS, WARMUP_QUERY, ModelRegistry, ReloadResult, ServedModel

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)

BUSY_WINDOW_S = 10.0  # a model call running for less than this shows a working model

# The probe in flight for each engine (one at a time; it outlives a /health that stopped waiting).
_probes: weakref.WeakKeyDictionary[BatchEngine, asyncio.Task[object]] = weakref.WeakKeyDictionary()


class EngineCounters(BaseModel):
    """What the model's engines have done since start-up, over every version a hot swap served."""

    batches: int
    pairs: int
    real_tokens: int
    padded_tokens: int
    padding_waste: float
    model_seconds: float
    queued: int
    cache_entries: int
    cache_hits: int
    cache_misses: int


class ReloadOutcome(BaseModel):
    """The last reload attempt: a failed one leaves the previous version serving."""

    ok: bool
    at: float
    fingerprint: str
    error: str | None = None
    seconds: float


def reload_outcome(result: ReloadResult | None) -> ReloadOutcome | None:
    if result is None:
        return None
    return ReloadOutcome(ok=result.ok, at=result.at, fingerprint=result.fingerprint, error=result.error,
                         seconds=round(result.seconds, 3))  # fmt: skip


class ModelHealth(BaseModel):
    name: str
    kind: str
    device: str
    dtype: str
    backend: str
    max_length: int
    load_seconds: float
    ready: bool
    error: str | None = None
    required: bool = True
    path: str
    fingerprint: str
    loaded_at: float
    last_reload: ReloadOutcome | None = None
    watch_error: str | None = Field(None, description="Why the last check of the directory for a new version failed.")
    engine: EngineCounters


class HealthResponse(BaseModel):
    status: str
    models: list[ModelHealth] | None = Field(
        None, description="Each model's detail; absent when API keys are set and the request has none of them."
    )


def counters(served: ServedModel) -> EngineCounters:
    """The model's counters since start-up, over every version a hot swap served."""
    now = served.counters()
    totals = now.totals
    return EngineCounters(
        batches=totals.batches,
        pairs=totals.items,
        real_tokens=totals.real_tokens,
        padded_tokens=totals.padded_tokens,
        padding_waste=round(totals.padding_waste, 4),
        model_seconds=round(totals.model_seconds, 3),
        queued=now.queued,
        cache_entries=now.cache_entries,
        cache_hits=now.cache_hits,
        cache_misses=now.cache_misses,
    )


def _busy_for(engine: BatchEngine) -> float:
    """How long the engine's oldest running model call has run (inf: none runs)."""
    since = engine.busy_since
    return math.inf if since is None else time.monotonic() - since


def _probe_task(engine: BatchEngine) -> asyncio.Task[object]:
    """The engine's probe scoring call: the one in flight, or a new one."""
    task = _probes.get(engine)
    if task is None or task.done():
        task = asyncio.get_running_loop().create_task(
            engine.score(WARMUP_QUERY, list(WARMUP_DOCUMENTS), priority=True), name="health-probe"
        )
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # read even when no check waits
        _probes[engine] = task
    return task


async def probe(served: ServedModel, max_age: float, timeout: float) -> str | None:
    """None when a real scoring call works (recently seen, running now, or tried now); else why not."""
    engine = served.engine
    if time.monotonic() - engine.last_success <= max_age or _busy_for(engine) < BUSY_WINDOW_S:
        return None
    task = _probe_task(engine)
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        age = _busy_for(engine)
        if age == math.inf:
            return f"the probe scoring call has not started after {timeout:g}s"
        if age < BUSY_WINDOW_S:
            return None  # the probe's call (or another) is running: a busy model is a healthy one
        return f"a model call has been running for {age:.1f}s (more than {BUSY_WINDOW_S:g}s)"
    if task.cancelled():
        return "the probe scoring call was cancelled"
    error = task.exception()
    if error is None:
        return None
    if isinstance(error, CoreError):
        return error.message
    # A bug below the engine (say, the tokenizer raising on the probe's text): the model cannot
    # answer, so /health says why in a 503 instead of failing with a 500 of its own.
    log.error("the health probe of %s failed", served.info.name, exc_info=error)
    return f"the probe failed: {type(error).__name__}: {error}"


def _answer(body: HealthResponse, ok: bool) -> JSONResponse:
    return JSONResponse(body.model_dump(exclude_none=True), status_code=200 if ok else 503)


@router.get("/health", response_model=HealthResponse, response_model_exclude_none=True,
            responses={503: {"model": HealthResponse}})  # fmt: skip
async def health(request: Request) -> JSONResponse:
    """200 when every model answers a real scoring call; 503 while loading, broken or stopping."""
    registry: ModelRegistry | None = getattr(request.app.state, "registry", None)
    state = getattr(request.app.state, "status", "loading")
    detailed = has_valid_key(request)
    if state == "stopping" or registry is None or not registry.models:
        return _answer(HealthResponse(status=state, models=[] if detailed else None), False)
    max_age, timeout = registry.settings.health_max_age, registry.settings.health_timeout
    required = registry.settings.required_model_list
    models = []
    # Every model's probe at once: /health answers within one timeout however many models it has.
    errors = await asyncio.gather(*(probe(served, max_age, timeout) for served in registry.models))
    for served, error in zip(registry.models, errors, strict=True):
        info = served.info
        models.append(
            ModelHealth(
                name=info.name,
                kind=info.kind,
                device=info.device,
                dtype=info.dtype,
                backend=info.backend,
                max_length=info.max_length,
                load_seconds=round(info.load_seconds, 3),
                ready=error is None,
                error=error,
                required=not required or served.spec.name in required,
                path=served.spec.path,
                fingerprint=served.fingerprint,
                loaded_at=served.loaded_at,
                last_reload=reload_outcome(served.last_reload),
                watch_error=served.watch_error,
                engine=counters(served),
            )
        )
    ok = all(m.ready for m in models if m.required)
    return _answer(HealthResponse(status="ok" if ok else "unhealthy", models=models if detailed else None), ok)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus metrics (text exposition format), rendered off the event loop."""
    return Response(await asyncio.to_thread(request.app.state.metrics.render), media_type=CONTENT_TYPE_LATEST)


@router.get("/", include_in_schema=False)
async def landing() -> RedirectResponse:
    return RedirectResponse(url="/docs")
