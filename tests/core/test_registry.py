"""The model registry's configuration: model lists, a models root, kinds, the bundled default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compat_api.core.errors import ModelLoadError
from compat_api.core.kinds import detect_kind
from compat_api.core.registry import model_specs
from tests.conftest import make_settings


def model_dir(root: Path, name: str, architectures: list[str], model_type: str = "x", modules: bool = False) -> Path:
    directory = root / name
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps({"architectures": architectures, "model_type": model_type}))
    (directory / "tokenizer.json").write_text("{}")  # present (the directory check), never read by these tests
    if modules:
        (directory / "modules.json").write_text("[]")
    return directory


@pytest.mark.parametrize(
    ("architectures", "model_type", "modules", "kind"),
    [
        (["XLMRobertaForSequenceClassification"], "xlm-roberta", False, "cross-encoder"),  # bge-reranker-v2-m3
        (["BertForSequenceClassification"], "bert", False, "cross-encoder"),  # bge-reranker-base
        (["GemmaForCausalLM"], "gemma", False, "llm"),  # bge-reranker-v2-gemma
        (["LlamaForCausalLM"], "llama", False, "llm"),
        (["LayerWiseMiniCPMForCausalLM"], "minicpm", False, "llm-layerwise"),  # bge-reranker-v2-minicpm-layerwise
        (["CostWiseGemmaForCausalLM"], "cost_wise_gemma", False, "llm-lightweight"),  # v2.5-gemma2-lightweight
        (["BertModel"], "bert", True, "embedding"),  # all-MiniLM-L6-v2
        (["XLMRobertaModel"], "xlm-roberta", False, "embedding"),  # bge-m3
    ],
)
def test_kind_detection(tmp_path: Path, architectures: list[str], model_type: str, modules: bool, kind: str) -> None:
    assert detect_kind(model_dir(tmp_path, "m", architectures, model_type, modules)) == kind


def test_unknown_kind_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="RERANK_MODEL_KIND"):
        detect_kind(model_dir(tmp_path, "m", ["SomethingElse"]))


@pytest.mark.parametrize("content", ["null", "[]", '"bert"'])
def test_a_config_that_is_not_an_object_is_a_clear_error(tmp_path: Path, content: str) -> None:
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(ModelLoadError, match="not a model configuration"):
        detect_kind(tmp_path)


def test_bundled_only_when_nothing_is_configured(tmp_path: Path) -> None:
    [spec] = model_specs(make_settings(model_path=None))
    assert spec.bundled and spec.kind == "embedding"
    [configured] = model_specs(make_settings(model_path=str(tmp_path / "bge-reranker-v2-m3")))
    assert not configured.bundled and configured.name == "bge-reranker-v2-m3"


def test_lists_and_a_models_root_combine(tmp_path: Path) -> None:
    root = tmp_path / "root"
    model_dir(root, "alpha", ["BertForSequenceClassification"])
    model_dir(root, "beta", ["GemmaForCausalLM"])
    (root / "not-a-model").mkdir()
    settings = make_settings(model_path=str(tmp_path / "main"), models=f"extra={tmp_path / 'x'}", models_root=str(root))
    assert [s.name for s in model_specs(settings)] == ["main", "extra", "alpha", "beta"]


def test_duplicate_names_are_refused(tmp_path: Path) -> None:
    settings = make_settings(model_path=str(tmp_path / "m"), models=f"m={tmp_path / 'other'}")
    with pytest.raises(ModelLoadError, match="distinct name"):
        model_specs(settings)


def test_a_missing_models_root_is_a_start_up_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a directory"):
        model_specs(make_settings(models_root=str(tmp_path / "nope")))


def test_a_models_root_without_models_is_a_start_up_error(tmp_path: Path) -> None:
    """An unmounted NAS leaves its mount point empty: that is not "no model configured"."""
    (tmp_path / "root" / "not-a-model").mkdir(parents=True)
    with pytest.raises(ModelLoadError, match="holds no model directory"):
        model_specs(make_settings(models_root=str(tmp_path / "root")))


def test_required_models_must_be_served(tmp_path: Path) -> None:
    """A misspelt name in RERANK_REQUIRED_MODELS would leave /health requiring nothing."""
    settings = make_settings(model_path=str(tmp_path / "bge"), required_models="bge,bgee")
    with pytest.raises(ModelLoadError, match="RERANK_REQUIRED_MODELS names 'bgee', not served here; served: bge"):
        model_specs(settings)
    assert [s.name for s in model_specs(make_settings(model_path=str(tmp_path / "bge"), required_models="bge"))] == [
        "bge"
    ]


@pytest.mark.parametrize(
    ("kind", "flag_class"),
    [("llm", "FlagLLMReranker"), ("llm-layerwise", "LayerWiseFlagLLMReranker"),
     ("llm-lightweight", "LightWeightFlagLLMReranker")],
)  # fmt: skip
def test_llm_kinds_route_to_flagembeddings_classes(kind: str, flag_class: str, tmp_path: Path) -> None:
    """The layer-wise and lightweight models need their own remote code, so their loading is
    checked up to FlagEmbedding's class: the right class is asked for, with trust_remote_code
    when the operator allows it."""
    import FlagEmbedding

    from compat_api.core.models import llm
    from compat_api.core.registry import ModelSpec, load_scorer

    calls: list[tuple[str, dict[str, object]]] = []

    class Recorder:
        def __init__(self, path: str, **kwargs: object) -> None:
            calls.append((path, kwargs))
            raise RuntimeError("recorded")

    assert llm.FLAG_LLM_CLASSES[kind] == flag_class
    directory = model_dir(tmp_path, "m", {"llm": ["GemmaForCausalLM"], "llm-layerwise": ["LayerWiseMiniCPMForCausalLM"],
                                          "llm-lightweight": ["CostWiseGemmaForCausalLM"]}[kind])  # fmt: skip
    original = getattr(FlagEmbedding, flag_class)
    setattr(FlagEmbedding, flag_class, Recorder)
    try:
        with pytest.raises(ModelLoadError, match=f"cannot load {kind} reranker"):
            load_scorer(ModelSpec("m", str(directory)), make_settings(llm_cutoff_layer=28, trust_remote_code=True))
    finally:
        setattr(FlagEmbedding, flag_class, original)
    [(path, kwargs)] = calls
    assert path == str(directory)
    assert kwargs["trust_remote_code"] is True, "the operator's RERANK_TRUST_REMOTE_CODE is passed on"


@pytest.mark.parametrize("architecture", ["LayerWiseMiniCPMForCausalLM", "CostWiseGemmaForCausalLM"])
def test_models_that_need_their_own_code_are_refused_unless_trusted(architecture: str, tmp_path: Path) -> None:
    from compat_api.core.registry import ModelSpec, load_scorer

    directory = model_dir(tmp_path, "m", [architecture])
    with pytest.raises(ModelLoadError, match="RERANK_TRUST_REMOTE_CODE"):
        load_scorer(ModelSpec("m", str(directory)), make_settings())


def test_fp16_on_the_cpu_says_it_runs_fp32(tiny_reranker_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An operator who asks for fp16 on a CPU is told the model runs fp32 there, and what to use."""
    import logging

    from compat_api.core.registry import load_scorer

    settings = make_settings(model_path=str(tiny_reranker_dir), fp16=True, max_length=64)
    [spec] = model_specs(settings)
    with caplog.at_level(logging.WARNING, logger="compat_api.core.registry"):
        scorer = load_scorer(spec, settings)
    assert scorer.info.dtype == "float32"
    assert "runs in fp32" in caplog.text and "RERANK_BACKEND=bf16" in caplog.text
