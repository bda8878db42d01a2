"""Observability: request ids, one access-log line per request, JSON logs, Prometheus metrics,
and the JSON answer to a bug.

Every request gets an id (the client's `X-Request-ID` when it sends a sane one, otherwise a new
one), echoed in the response header and carried by every log line written while it is
handled. `GET /metrics` exposes request counts and latencies by route, dialect and status, the
engine's pairs, tokens, batch sizes and padding, queue depth, cache hits and model load times.
Every label comes from a closed set (route templates, known methods and dialects, status
codes), so no client can grow the series. A request path reaches the log with control
characters escaped and cut to 200 characters, so it cannot forge lines. An exception that
escapes a route is logged once, with its traceback and the request id, and answered as a JSON
500 that carries `X-Request-ID`.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
import uuid
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from compat_api.api.errors import DIALECTS, unexpected_error
from compat_api.core.engine import BatchStats
from compat_api.core.registry import ModelRegistry
from compat_api.core.text import clip

access_log = logging.getLogger("compat_api.access")
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"})
PATH_IN_LOG = 200
log = logging.getLogger(__name__)


class RequestIdFilter(logging.Filter):
    """Stamps every log record with the id of the request being handled."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, and any extras."""

    _STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "request_id"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in self._STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(level: str, json_format: bool) -> None:
    """Root logging for the server: text or JSON lines, each with the request id."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    if json_format:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


class Metrics:
    """The app's Prometheus registry (one per app, so several apps can live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("compat_api_requests", "HTTP requests", ["route", "method", "dialect", "status"],
                                registry=self.registry)  # fmt: skip
        self.latency = Histogram("compat_api_request_seconds", "HTTP request latency", ["route", "dialect"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)  # fmt: skip
        self.batch_size = Histogram("compat_api_batch_size", "Items per model call", ["model"],
                                    buckets=BATCH_BUCKETS, registry=self.registry)  # fmt: skip
        self.batch_seconds = Histogram("compat_api_batch_seconds", "Model call latency", ["model"],
                                       buckets=LATENCY_BUCKETS, registry=self.registry)  # fmt: skip
        self._models: ModelRegistry | None = None
        self.registry.register(_EngineCollector(self))

    def watch(self, models: ModelRegistry) -> None:
        """Observe every model call of the registry's engines, hot-swapped ones included, and
        expose their totals."""
        self._models = models
        models.batch_observers.append(self._observe_batch)

    def _observe_batch(self, model: str, stats: BatchStats) -> None:
        self.batch_size.labels(model).observe(stats.size)
        self.batch_seconds.labels(model).observe(stats.seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EngineCollector(Collector):
    """Engine and cache totals read at scrape time, so nothing is counted twice."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        models = self.metrics._models
        if models is None:
            return []
        pairs = CounterMetricFamily("compat_api_pairs", "Items (pairs or chunks) scored by the model", labels=["model"])
        tokens = CounterMetricFamily("compat_api_tokens", "Real tokens scored", labels=["model"])
        padded = CounterMetricFamily("compat_api_padded_tokens", "Token slots including padding", labels=["model"])
        batches = CounterMetricFamily("compat_api_batches", "Model calls", labels=["model"])
        hits = CounterMetricFamily("compat_api_cache_hits", "Score cache hits", labels=["model"])
        misses = CounterMetricFamily("compat_api_cache_misses", "Score cache misses", labels=["model"])
        queue = GaugeMetricFamily("compat_api_queue_items", "Items admitted and not finished", labels=["model"])
        load = GaugeMetricFamily("compat_api_model_load_seconds", "Model load time", labels=["model"])
        info = GaugeMetricFamily("compat_api_model_info", "Served model", labels=["model", "kind", "device", "dtype"])
        for served in models.models:
            name, now = served.info.name, served.counters()  # every version's, so hot swaps never reset them
            totals = now.totals
            pairs.add_metric([name], totals.items)
            tokens.add_metric([name], totals.real_tokens)
            padded.add_metric([name], totals.padded_tokens)
            batches.add_metric([name], totals.batches)
            hits.add_metric([name], now.cache_hits)
            misses.add_metric([name], now.cache_misses)
            queue.add_metric([name], now.queued)
            load.add_metric([name], served.info.load_seconds)
            info.add_metric([name, served.info.kind, served.info.device, served.info.dtype], 1)
        return [pairs, tokens, padded, batches, hits, misses, queue, load, info]


class ObservabilityMiddleware:
    """Request id in and out, one access-log line and the request metrics per HTTP request."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent_id = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
        request_id = sent_id if _SANE_ID.match(sent_id) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500
        status_sent = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, status_sent
            if message["type"] == "http.response.start":
                status, status_sent = message["status"], True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unexpected error on %s %s", clip(scope["method"], 16), clip(scope["path"], PATH_IN_LOG))
            if status_sent:
                raise
            dialect = str(scope.get("state", {}).get("dialect", "-"))
            response = unexpected_error(dialect if dialect in DIALECTS else "default")
            await response(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", "unmatched")
            dialect = str(scope.get("state", {}).get("dialect", "-"))
            dialect = dialect if dialect in DIALECTS else "-"
            method = scope["method"] if scope["method"] in METHODS else "other"
            self.metrics.requests.labels(route, method, dialect, str(status)).inc()
            self.metrics.latency.labels(route, dialect).observe(elapsed)
            path = clip(scope["path"], PATH_IN_LOG)
            access_log.info(
                "%s %s %d %.1fms dialect=%s", method, path, status, elapsed * 1000, dialect,
                extra={"method": method, "path": path, "status": status,
                       "duration_ms": round(elapsed * 1000, 1), "dialect": dialect},
            )  # fmt: skip
            request_id_var.reset(token)
