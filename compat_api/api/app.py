"""The FastAPI app factory: routers of every dialect, error handlers, and the model lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline

from compat_api import __version__
from compat_api.api import admin, health, models
from compat_api.api.auth import ApiKeyMiddleware
from compat_api.api.embed import cohere as cohere_embed
from compat_api.api.embed import openai, sibling
from compat_api.api.embed import shared as shared_embed
from compat_api.api.errors import install_error_handlers, route_dialects
from compat_api.api.middleware import BodyMiddleware, StartupErrorMiddleware
from compat_api.api.observability import Metrics, ObservabilityMiddleware
from compat_api.api.rerank import cohere, shared, tei
from compat_api.core.errors import CoreError, ModelLoadError
from compat_api.core.models.base import check_model_dir
from compat_api.core.registry import ModelRegistry, model_specs
from compat_api.provision import ProvisionError, provision
from compat_api.settings import Settings

log = logging.getLogger(__name__)

DESCRIPTION = """
Rerank and embedding API server (BAAI/bge-reranker-v2-m3, bge-m3 and friends).

* `POST /rerank` — the original API `{query, compare_to}` → `{data, object}`; also TEI's
  `{query, texts}` → `[{index, score}]` and Cohere/Jina's `{query, documents}`
* `POST /v1/rerank` — Cohere v1 / Jina / Xinference: `{query, documents, top_n, return_documents}`
* `POST /v2/rerank` — Cohere v2: `{query, documents, top_n, max_tokens_per_doc}`
* `POST /v1/embeddings` (also `/embeddings`) — OpenAI / Jina / LocalAI / infinity: `{input, model,
  encoding_format, dimensions}`; `input` may be cl100k_base token arrays
* `POST /embedding`, `POST /similarity` — the original embedding template: `{input}`
* `POST /v1/embed`, `/v2/embed`, `/v1/tokenize`, `/v1/detokenize` — Cohere: `{texts, input_type, embedding_types}`
* `GET /info` (TEI), `GET /v1/models`, `GET /v1/models/{id}` (OpenAI / Xinference)

With `RERANK_API_KEYS` set, use the Authorize button (Bearer key).
"""


def provision_or_fail(settings: Settings) -> None:
    """Put the configured hub model on the model volume first, if it holds none yet."""
    assert settings.model_path and settings.provision_model
    try:
        provision(Path(settings.model_path), model_id=settings.provision_model, source=settings.provision_source,
                  endpoint=settings.provision_endpoint or None)  # fmt: skip
    except ProvisionError as exc:
        raise ModelLoadError(f"cannot provision {settings.provision_model} into {settings.model_path}: {exc}") from exc


def _publish_limits(node: Any, limits: dict[str, tuple[str, int]]) -> None:
    """Turn the wire models' `x-limit` markers into this server's limits (`documents`: `maxItems`;
    `dimensions` and `token_id`: the served embedding models' `maximum`)."""
    if isinstance(node, dict):
        marker = node.pop("x-limit", None)
        if marker in limits:
            keyword, value = limits[marker]
            node[keyword] = value
        for value in node.values():
            _publish_limits(value, limits)
    elif isinstance(node, list):
        for value in node:
            _publish_limits(value, limits)


def _limits(app: FastAPI, settings: Settings) -> dict[str, tuple[str, int]]:
    """The limits the OpenAPI document states: documents per request, and what every served
    embedding model takes (the smallest vector size and vocabulary)."""
    limits = {"documents": ("maxItems", settings.max_documents)}
    registry = getattr(app.state, "registry", None)
    embedders = [m.engine.scorer for m in registry.models if m.family == "embedding"] if registry is not None else []
    sizes = [int(getattr(e, "dimensions", 0)) for e in embedders]
    vocabularies = [int(getattr(e, "vocabulary_size", 0)) for e in embedders]
    if sizes and min(sizes) > 0:
        limits["dimensions"] = ("maximum", min(sizes))
    if vocabularies and min(vocabularies) > 0:
        limits["token_id"] = ("maximum", min(vocabularies) - 1)
    return limits


def publish_security_only_when_required(app: FastAPI, settings: Settings) -> None:
    """Without API keys (or an admin key) nothing needs that `Authorization`, so the OpenAPI
    document (and Swagger UI's Authorize button) declares only the schemes actually in force;
    list limits are stated as this server's settings make them."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()
        _publish_limits(schema, _limits(app, settings))
        unused = {"apiKey"} if not settings.api_key_list else set()
        unused |= {"adminKey"} if not settings.admin_key else set()
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                kept = [s for s in operation.get("security", []) if not set(s) & unused]
                if kept:
                    operation["security"] = kept
                else:
                    operation.pop("security", None)
        schemes = schema.get("components", {}).get("securitySchemes", {})
        for name in unused:
            schemes.pop(name, None)
        if not schemes:
            schema.get("components", {}).pop("securitySchemes", None)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def preflight(settings: Settings) -> None:
    """What can fail at once, before the server listens: every configured model directory exists
    with a config.json (a directory the server downloads into on first start is checked after)."""
    provisioned = settings.model_path if settings.provision_model else None
    for spec in model_specs(settings):
        if spec.path != provisioned:
            check_model_dir(spec.path)


async def load_models(app: FastAPI, settings: Settings) -> None:
    """Provision, load and warm every model, then serve them (`app.state.registry`)."""
    registry = ModelRegistry(settings)
    if settings.provision_model and settings.model_path:
        await asyncio.to_thread(provision_or_fail, settings)
    await asyncio.to_thread(registry.load)
    if settings.warmup:
        await asyncio.to_thread(registry.warm_up)
    registry.start()
    app.state.metrics.watch(registry)
    app.state.registry = registry
    app.state.status = "ok"
    log.info("ready: serving %s", ", ".join(m.info.name for m in registry.models))


async def load_in_background(app: FastAPI, settings: Settings) -> None:
    """`load_models` while the server already answers (503 until ready); a model that cannot load
    logs one clear line and stops the server (`app.state.on_startup_failure`)."""
    try:
        await load_models(app, settings)
        return
    except CoreError as exc:
        app.state.startup_error = f"cannot start: {exc.message}"
        log.error("%s", app.state.startup_error)
    except Exception:  # a bug while loading: the server must not linger half-started
        app.state.startup_error = "cannot start: unexpected error while loading the models"
        log.exception("%s", app.state.startup_error)
    app.state.status = "failed"
    stop = getattr(app.state, "on_startup_failure", None)
    if stop is not None:
        stop()


def create_app(settings: Settings | None = None, *, background_load: bool = False) -> FastAPI:
    """Build the app; the lifespan loads and warms the models before traffic is served, or, with
    `background_load` (the command line), while the server already listens and answers 503, so
    that a platform's health check sees a live server during a long first start (a download)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.status = "loading"
        app.state.loop = asyncio.get_running_loop()
        app.state.draining = asyncio.Event()  # set when SIGTERM's grace is about to run out
        loader: asyncio.Task[None] | None = None
        if background_load:
            loader = asyncio.create_task(load_in_background(app, settings), name="load-models")
        else:
            try:
                await load_models(app, settings)
            except CoreError as exc:
                # The server logs this one line (the lifespan middleware hands it over in place of
                # the traceback), so it is not logged here too.
                app.state.startup_error = f"cannot start: {exc.message}"
                log.debug("start-up failure", exc_info=exc)
                raise
        try:
            yield
        finally:
            app.state.status = "stopping"
            if loader is not None and not loader.done():
                loader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loader
            registry: ModelRegistry | None = getattr(app.state, "registry", None)
            if registry is not None:
                await registry.close()

    # Swagger UI's assets come from the fastapi-offline package, not a CDN: FC regions and
    # private networks often cannot reach one.
    app = FastAPIOffline(
        title="compat-api rerank server",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        swagger_ui_parameters={"tryItOutEnabled": True, "displayRequestDuration": True},
    )
    app.state.settings = settings
    metrics = Metrics()
    app.state.metrics = metrics
    install_error_handlers(app)
    # Outermost last: request ids and the JSON 500, then CORS (preflights pass without a key),
    # then the API key (before any body is read), then the body's limits and deadline.
    app.add_middleware(BodyMiddleware, max_bytes=settings.max_body_bytes, timeout=settings.body_timeout,
                       max_documents=settings.max_documents)  # fmt: skip
    app.add_middleware(ApiKeyMiddleware, keys=settings.api_key_list)
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    app.add_middleware(ObservabilityMiddleware, metrics=metrics)
    app.add_middleware(StartupErrorMiddleware, state=app.state)
    publish_security_only_when_required(app, settings)
    routers = (health.router, shared.router, cohere.router, tei.router, openai.router, sibling.router,
               cohere_embed.router, shared_embed.router, shared_embed.per_model, shared_embed.per_model_openai,
               models.router, models.public, admin.router)  # fmt: skip
    for router in routers:
        app.include_router(router)
    app.state.dialect_routes = route_dialects(routers)
    return app
