"""Which kind of model a directory holds, from its config.json (architectures, model_type).

| kind | served with | example |
|---|---|---|
| `cross-encoder` | FlagEmbedding `FlagReranker` | bge-reranker-base/large/v2-m3 |
| `llm` | `FlagLLMReranker` | bge-reranker-v2-gemma |
| `llm-layerwise` | `LayerWiseFlagLLMReranker` | bge-reranker-v2-minicpm-layerwise |
| `llm-lightweight` | `LightWeightFlagLLMReranker` | bge-reranker-v2.5-gemma2-lightweight |
| `embedding` | mean-pooled embeddings, cosine | all-MiniLM-L6-v2, bge-m3 |
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from compat_api.core.errors import ModelLoadError

Kind = Literal["cross-encoder", "llm", "llm-layerwise", "llm-lightweight", "embedding"]
KINDS: tuple[Kind, ...] = ("cross-encoder", "llm", "llm-layerwise", "llm-lightweight", "embedding")


def detect_kind(path: str | Path) -> Kind:
    """The model kind of a Hugging Face model directory."""
    config_path = Path(path) / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {config_path}: {exc}") from exc
    if not isinstance(config, dict):
        raise ModelLoadError(f"{config_path} holds {type(config).__name__}, not a model configuration (a JSON object)")
    architectures = [str(a) for a in config.get("architectures") or []]
    model_type = str(config.get("model_type", ""))
    if any("LayerWise" in a for a in architectures):
        return "llm-layerwise"
    if any("CostWise" in a or "Lightweight" in a or "LightWeight" in a for a in architectures):
        return "llm-lightweight"
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return "cross-encoder"
    if any(a.endswith("ForCausalLM") for a in architectures):
        return "llm"
    if (Path(path) / "modules.json").is_file() or any(a.endswith("Model") for a in architectures):
        return "embedding"
    raise ModelLoadError(
        f"cannot tell what kind of model {path} holds (architectures={architectures}, model_type={model_type!r}); "
        f"set RERANK_MODEL_KIND to one of {', '.join(KINDS)}"
    )
