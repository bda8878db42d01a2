"""The model registry: builds the configured model's scorer and engine, and answers by name."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from compat_api.core.cache import ScoreCache
from compat_api.core.engine import BatchEngine
from compat_api.core.errors import ModelNotFound, ModelNotReady
from compat_api.core.scorers import (
    BUNDLED_MODEL_NAME,
    CrossEncoderScorer,
    EmbeddingScorer,
    ModelInfo,
    Scorer,
    bundled_model_path,
    resolve_device,
)
from compat_api.settings import Settings

log = logging.getLogger(__name__)

WARMUP_QUERY = "what is function compute"
WARMUP_DOCUMENTS = ("function compute is a serverless computing service", "hello")


@dataclass
class ServedModel:
    """A loaded model with its engine and the names it answers to."""

    engine: BatchEngine
    aliases: tuple[str, ...] = ()
    loaded_at: float = field(default_factory=time.time)

    def answers_to(self, name: str) -> bool:
        return name == self.info.name or name in self.aliases

    @property
    def info(self) -> ModelInfo:
        return self.engine.scorer.info


def load_scorer(settings: Settings) -> Scorer:
    """Load the configured model; the bundled embedding model only when none is configured."""
    import torch

    torch.set_num_threads(settings.torch_threads)
    device = resolve_device(settings.device)
    fp16 = settings.fp16 if settings.fp16 is not None else device.startswith("cuda")
    if settings.model_path is None:
        path = bundled_model_path()
        log.warning(
            "no model configured: serving the bundled all-MiniLM-L6-v2 embedding model (English, cosine "
            "similarity) as %r. For real reranking set MODEL_PATH (or --model-path) to a "
            "bge-reranker directory, e.g. MODEL_PATH=/mnt/auto/bge-reranker-v2-m3",
            settings.model_name or BUNDLED_MODEL_NAME,
        )
        return EmbeddingScorer(
            path,
            name=settings.model_name or BUNDLED_MODEL_NAME,
            device=device,
            fp16=fp16,
            max_length=settings.max_length,
            backend=settings.backend,
            threads=settings.torch_threads,
            onnx_cache_dir=settings.onnx_cache_dir,
        )
    name = settings.model_name or _dir_name(settings.model_path)
    return CrossEncoderScorer(
        settings.model_path, name=name, device=device, fp16=fp16, max_length=settings.max_length,
        backend=settings.backend, threads=settings.torch_threads, onnx_cache_dir=settings.onnx_cache_dir,
    )  # fmt: skip


def _dir_name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1] or "model"


class ModelRegistry:
    """Holds the served models. With one model served, any requested name resolves to it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._models: dict[str, ServedModel] = {}

    def load(self) -> None:
        """Load and build engines for every configured model (blocking; call off the event loop)."""
        scorer = load_scorer(self.settings)
        log.info(
            "loaded model %r (%s, %s, %s) in %.1fs",
            scorer.info.name,
            scorer.info.kind,
            scorer.info.device,
            scorer.info.dtype,
            scorer.info.load_seconds,
        )
        engine = BatchEngine(
            scorer,
            max_batch_tokens=self.settings.batch_tokens(scorer.info.device),
            max_batch_size=self.settings.batch_size,
            max_queue_items=self.settings.max_queue_pairs,
            cache=ScoreCache(self.settings.cache_mb * 1024 * 1024) if self.settings.cache_mb else None,
            max_request_tokens=self.settings.max_request_tokens,
        )
        self._models[scorer.info.name] = ServedModel(engine, tuple(self.settings.aliases))

    def warm_up(self) -> None:
        """Score a fixed pair on every model so the first request pays no lazy initialisation."""
        for served in self._models.values():
            started = time.perf_counter()
            scores = served.engine.scorer.score(WARMUP_QUERY, list(WARMUP_DOCUMENTS))
            log.info(
                "warmed up %r in %.2fs (scores %s)",
                served.info.name,
                time.perf_counter() - started,
                [round(s, 4) for s in scores],
            )

    def start(self) -> None:
        for served in self._models.values():
            served.engine.start()

    async def close(self) -> None:
        for served in self._models.values():
            await served.engine.close()

    @property
    def models(self) -> list[ServedModel]:
        return list(self._models.values())

    def get(self, name: str | None = None) -> ServedModel:
        """The model a request asks for; with one model served, every name resolves to it."""
        if not self._models:
            raise ModelNotReady("no model is loaded yet")
        if len(self._models) == 1:
            return next(iter(self._models.values()))
        return self.find(name or "")

    def find(self, name: str) -> ServedModel:
        """The model with exactly this name or alias."""
        for served in self._models.values():
            if served.answers_to(name):
                return served
        raise ModelNotFound(
            f"model {name!r} is not served here; served: {', '.join(sorted(self._models))}", field="model"
        )
