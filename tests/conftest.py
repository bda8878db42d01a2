"""Shared fixtures: tiny locally built models and apps served on them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from compat_api.api.app import create_app
from compat_api.settings import Settings
from tests.tiny_models import build_minilm_cross_encoder, build_tiny_xlmr_embedder, build_tiny_xlmr_reranker

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_reranker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bge-reranker-v2-m3's architecture (XLM-R sequence classification), tiny and seeded."""
    return build_tiny_xlmr_reranker(tmp_path_factory.mktemp("models") / "tiny-bge-reranker")


@pytest.fixture(scope="session")
def other_reranker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tiny architecture with other random weights: a "new version" of the model."""
    return build_tiny_xlmr_reranker(tmp_path_factory.mktemp("models") / "tiny-bge-reranker-v2", seed=1)


@pytest.fixture(scope="session")
def tiny_embedder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bge-m3-like embedding model (XLM-R body, CLS pooling), tiny and seeded."""
    return build_tiny_xlmr_embedder(tmp_path_factory.mktemp("models") / "tiny-bge-m3")


@pytest.fixture(scope="session")
def minilm_cross_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cross-encoder on the real all-MiniLM-L6-v2 encoder with a seeded 1-logit head."""
    return build_minilm_cross_encoder(tmp_path_factory.mktemp("models") / "minilm-cross-encoder")


def make_settings(**overrides: object) -> Settings:
    base: dict[str, object] = {"device": "cpu", "torch_threads": 1, "host": "127.0.0.1"}
    base.update(overrides)
    return Settings(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def tiny_client(tiny_reranker_dir: Path) -> Iterator[TestClient]:
    """The app serving the tiny reranker through the real FlagReranker loading path."""
    with TestClient(create_app(make_settings(model_path=str(tiny_reranker_dir)))) as client:
        yield client


@pytest.fixture(scope="module")
def bundled_client() -> Iterator[TestClient]:
    """The app serving the bundled all-MiniLM-L6-v2 default (no model configured)."""
    with TestClient(create_app(make_settings(model_path=None))) as client:
        yield client


@pytest.fixture(scope="module")
def two_models(tiny_reranker_dir: Path, other_reranker_dir: Path) -> Iterator[TestClient]:
    settings = make_settings(models=f"alpha={tiny_reranker_dir},beta={other_reranker_dir}", reload_interval=0)
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture(scope="module")
def stack_client(tiny_reranker_dir: Path, tiny_embedder_dir: Path) -> Iterator[TestClient]:
    """A RAG stack: the tiny reranker (MODEL_PATH) and the tiny bge-m3-like embedder beside it."""
    settings = make_settings(model_path=str(tiny_reranker_dir), embedding_model_path=str(tiny_embedder_dir),
                             reload_interval=0)  # fmt: skip
    with TestClient(create_app(settings)) as client:
        yield client
