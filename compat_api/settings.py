"""The server's configuration: one pydantic-settings class, the only reader of the environment.

Every setting is an environment variable `RERANK_<NAME>` and a command-line flag `--<name>`
(kebab case). `MODEL_PATH`, the original Function Compute template's variable, still works.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

CGROUP = Path("/sys/fs/cgroup")


def cpu_quota(cgroup: Path = CGROUP) -> float | None:
    """The CPUs a container's CPU limit allows (`docker run --cpus`, Kubernetes limits), from
    cgroup v2's cpu.max or v1's cfs quota; None: no limit (or no cgroup to read)."""
    try:
        if (cgroup / "cpu.max").is_file():
            quota, _, period = (cgroup / "cpu.max").read_text().partition(" ")
            return None if quota.strip() == "max" else int(quota) / int(period)
        quota = (cgroup / "cpu" / "cpu.cfs_quota_us").read_text()
        period = (cgroup / "cpu" / "cpu.cfs_period_us").read_text()
        return None if int(quota) <= 0 else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def available_cores(cgroup: Path = CGROUP) -> int:
    """The cores this process may use: its CPU affinity, capped by a container CPU limit (rounded
    up; a limit of 1.5 CPUs gets 2 threads)."""
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        cores = max(1, os.cpu_count() or 1)
    quota = cpu_quota(cgroup)
    return cores if quota is None else max(1, min(cores, math.ceil(quota)))


class _EnvironmentSource(EnvSettingsSource):
    """Environment variables, a blank one (empty or only spaces) counted as unset: a template's
    `MODEL_PATH=" "` must not hide RERANK_MODEL_PATH and serve the bundled model instead."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {name: value for name, value in super()._load_env_vars().items() if value is None or value.strip()}


class Settings(BaseSettings):
    """Rerank API server. Every option is also an environment variable RERANK_<OPTION>
    (upper case, underscores); MODEL_PATH works as in the original deployment."""

    model_config = SettingsConfigDict(
        env_prefix="RERANK_",
        cli_kebab_case=True,
        cli_implicit_flags=True,  # an on/off setting is a bare flag: --trust-remote-code, --no-warmup
        cli_prog_name="python -m compat_api",
        populate_by_name=True,
        extra="ignore",
        # `MODEL_PATH=` (empty) must not shadow RERANK_MODEL_PATH and serve the bundled model instead
        env_ignore_empty=True,
        allow_inf_nan=False,  # RERANK_SHUTDOWN_GRACE=inf and the like are refused, named
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _EnvironmentSource(settings_cls), dotenv_settings, file_secret_settings

    model_path: str | None = Field(
        None,
        validation_alias=AliasChoices("model_path", "RERANK_MODEL_PATH", "MODEL_PATH"),
        description=(
            "Model directory (e.g. the NAS mount holding bge-reranker-v2-m3). Unset: serve the "
            "bundled all-MiniLM-L6-v2 embedding model. Env RERANK_MODEL_PATH or MODEL_PATH."
        ),
    )
    embedding_model_path: str | None = Field(
        None,
        validation_alias=AliasChoices("embedding_model_path", "RERANK_EMBEDDING_MODEL_PATH", "EMBEDDING_MODEL_PATH"),
        description=(
            "Embedding model directory served beside the reranker (e.g. /mnt/auto/bge-m3) on the embedding "
            "routes. Env RERANK_EMBEDDING_MODEL_PATH or EMBEDDING_MODEL_PATH."
        ),
    )
    embedding_model_name: str | None = Field(
        None, description="Served name of the embedding model (default: its directory name)."
    )
    embedding_query_instruction: str = Field(
        "",
        description=(
            "Prefix for queries (Cohere input_type search_query, and the query of a rerank an embedding model "
            "answers by cosine), e.g. 'Represent this sentence for searching relevant passages: ' for "
            "bge-*-v1.5; empty: none (bge-m3 needs none)."
        ),
    )
    models: str = Field(
        "", description="More models, as comma-separated name=path entries (e.g. m3=/mnt/auto/m3,base=/mnt/auto/base)."
    )
    models_root: str | None = Field(
        None, description="A directory whose subdirectories (each with a config.json) are served, named after them."
    )
    model_kind: Literal["auto", "cross-encoder", "llm", "llm-layerwise", "llm-lightweight", "embedding"] = Field(
        "auto", description="The models' kind; auto reads each directory's config.json."
    )
    llm_cutoff_layer: int | None = Field(
        None, ge=1, description="Layer whose score the layer-wise LLM reranker reports (its default when unset)."
    )
    reload_interval: float = Field(
        10.0,
        ge=0,
        description="Seconds between checks of the model directories for a new version (0: only the admin route).",
    )
    required_models: str = Field(
        "", description="Comma-separated models /health requires to be ready (default: every served model)."
    )
    reload_settle: float = Field(
        10.0,
        ge=0,
        description=(
            "Seconds a changed model directory must stay unchanged before it is loaded, so that an upload "
            "in progress (new config, old weights) is never taken for a new version."
        ),
    )
    admin_key: str = Field("", description="Key for the admin routes (POST /admin/models/{name}/reload); empty: off.")
    provision_model: str | None = Field(
        None,
        description=(
            "Hub model id (e.g. BAAI/bge-reranker-v2-m3) to download into the model path at start-up when it "
            "holds no model yet; a model already there, or replaced by a user, is never overwritten."
        ),
    )
    provision_source: str = Field(
        "huggingface", description="Where provision_model comes from: huggingface, modelscope or a directory."
    )
    provision_endpoint: str = Field(
        "",
        description=(
            "Hugging Face endpoint for provision_model, e.g. https://hf-mirror.com where huggingface.co is out of "
            "reach (mainland China regions); empty: huggingface.co."
        ),
    )
    model_name: str | None = Field(
        None, description="Served model name reported in responses (default: the directory name)."
    )
    model_aliases: str = Field("", description="Comma-separated extra names accepted for the served model.")
    device: str = Field("auto", description="Device for the model: auto (CUDA when present), cpu, cuda, cuda:N.")
    fp16: bool | None = Field(None, description="Half precision weights (default: on for CUDA, off on CPU).")
    max_length: int = Field(
        1024,
        ge=16,
        le=8192,
        description=(
            "Model window: tokens per (query, document) pair. 1024 covers typical RAG chunks at a CPU cost "
            "that stays sane (attention grows with the square); bge-reranker-v2-m3 accepts up to 8192."
        ),
    )
    long_documents: Literal["chunk", "truncate"] = Field(
        "chunk",
        description="A document longer than the window: split into overlapping chunks (best chunk wins) or truncate.",
    )
    max_chunks_per_doc: int = Field(10, ge=1, le=1000, description="Most chunks per document (Cohere's default).")
    chunk_overlap: int = Field(64, ge=0, description="Tokens shared by consecutive chunks of a document.")
    backend: Literal["torch", "bf16", "int8", "onnx", "openvino", "openvino-int8"] = Field(
        "torch",
        description=(
            "torch: the model as stored (fp32; fp16 on GPUs); bf16: bf16 on CPUs that compute it natively "
            "(AVX512-BF16, AMX; refused elsewhere); int8: the model exported to ONNX with int8 MatMuls, run by "
            "ONNX Runtime; onnx: the same fp32 model run by ONNX Runtime; openvino: the same fp32 model run by "
            "OpenVINO; openvino-int8: OpenVINO statically quantized to int8 (weights and activations, scales "
            "calibrated once on real text; bf16 elsewhere on CPUs with native bf16). All but torch run on the "
            "CPU only; exports are made once and cached (RERANK_CACHE_DIR)."
        ),
    )
    cache_dir: str = Field(
        "",
        validation_alias=AliasChoices("cache_dir", "RERANK_CACHE_DIR", "RERANK_ONNX_CACHE_DIR"),
        description=(
            "Where exported and quantized models are kept, per model and version (default: .compat-api-cache "
            "beside the model directory, i.e. on the NAS next to the model). Must belong to this service; it is "
            "made private (0700). Env RERANK_CACHE_DIR (or RERANK_ONNX_CACHE_DIR)."
        ),
    )
    trust_remote_code: bool = Field(
        False,
        description=(
            "Let a model directory's own Python code run (needed by the layer-wise and lightweight LLM "
            "rerankers). Off: such a model is refused. On: the code is trusted as it is at start-up; a hot "
            "swap never runs changed code."
        ),
    )
    cache_mb: int = Field(64, ge=0, description="Memory for the (query, document) score cache in MiB; 0 disables.")
    batch_size: int = Field(32, ge=1, le=4096, description="Most pairs in one model call.")
    max_batch_tokens: int | None = Field(
        None,
        ge=64,
        description=(
            "Most padded tokens in one model call (like TEI's max_batch_tokens), fixed. Default on a CPU: "
            "what the model scores in RERANK_BATCH_SECONDS at its measured speed; 32768 on a GPU."
        ),
    )
    batch_seconds: float = Field(
        0.3,
        gt=0,
        le=60,
        description=(
            "CPU: the time one model call should take. The token budget follows the model's measured speed "
            "(small models get larger batches, bge-reranker-v2-m3 one pair at a time), and a new request waits "
            "about this long for the call in progress."
        ),
    )
    max_queue_pairs: int = Field(
        4096,
        ge=1,
        description=("Most model items (pairs and chunks) admitted and waiting per model; beyond it requests get 429."),
    )
    max_queue_tokens: int = Field(
        2_000_000, ge=1, description="Most tokens admitted and waiting per model; beyond it requests get 429."
    )
    max_request_items: int = Field(
        4096,
        ge=1,
        description=(
            "Most model items one request may need: its documents and their chunks, each sent with the query (413)."
        ),
    )
    max_documents: int = Field(
        1000,
        ge=1,
        description="Most documents (or embedding inputs) in one request (Cohere recommends at most 1,000).",
    )
    max_body_bytes: int = Field(2 * 1024 * 1024, ge=1024, description="Largest request body (TEI's default: 2 MB).")
    max_query_chars: int = Field(20_000, ge=1, description="Longest query, in characters.")
    max_document_chars: int = Field(200_000, ge=1, description="Longest document (or embedding input), in characters.")
    max_request_tokens: int = Field(
        1_000_000, ge=1, description="Most tokens one request may send to the model (all pairs and chunks)."
    )
    request_timeout: float = Field(
        120.0, gt=0, description="Seconds a request may take; past it: 504 and its pending work is dropped."
    )
    header_timeout: float = Field(
        10.0, gt=0, description="Seconds a client has to send a request's line and headers; past it: 408."
    )
    body_timeout: float = Field(
        30.0, gt=0, description="Seconds a client has to send a request's body once its headers are in; past it: 408."
    )
    send_timeout: float = Field(
        60.0,
        gt=0,
        description=(
            "Seconds an answer may wait for its client to read on (the bytes still to send not shrinking); past "
            "it the connection is dropped, with the memory the answer held."
        ),
    )
    max_connections: int = Field(
        1024, ge=1, description="Most open client connections; beyond it a new connection gets 429 and is closed."
    )
    keep_alive_timeout: int = Field(
        75,
        ge=1,
        description=(
            "Seconds an idle keep-alive connection stays open. Longer than the proxies' and clients' idle "
            "timeouts, so that the server never closes a connection a client is just reusing."
        ),
    )
    shutdown_grace: float = Field(
        30.0, ge=0, description="Seconds admitted requests get to finish after SIGTERM before the server exits."
    )
    api_keys: str = Field(
        "",
        description="Comma-separated API keys. Set: scoring and model routes need 'Authorization: Bearer <key>'.",
    )
    torch_threads: int = Field(
        default_factory=available_cores,
        ge=1,
        description="torch intra-op threads (default: the cores this process may use, within a container's CPU limit).",
    )
    lanes: int = Field(
        1,
        ge=1,
        le=64,
        description=(
            "Model lanes: forward passes that run at once on one copy of the weights, each with "
            "torch_threads / lanes threads, fed by the same batcher (CPU; see the README for sizing)."
        ),
    )
    onednn_linear: bool | None = Field(
        None,
        description=(
            "The torch backend on the CPU runs its fp32 Linear layers on oneDNN's kernels (the same math, "
            "1.6-1.8x faster on AMD CPUs with AVX-512, which PyTorch's default MKL path leaves unused). Default: "
            "on every CPU, except that where MKL already runs the widest vectors (Intel CPUs; CPUs without "
            "AVX-512) calls of 512 tokens or more run on MKL, faster there at those sizes; true: oneDNN always; "
            "false: PyTorch's default kernels."
        ),
    )
    tokenize_on_lane: bool | None = Field(
        None,
        description=(
            "Tokenize on the model's thread, taking turns with its calls instead of running beside them "
            "(default: on for CPUs with one lane, where the model's threads fill the cores)."
        ),
    )
    warmup: bool = Field(True, description="Score a pair at start-up before reporting ready.")
    host: str = Field("0.0.0.0", description="Address to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    log_format: Literal["text", "json"] = Field("text", description="Log lines as text or as JSON objects.")
    cors_origins: str = Field("", description="Comma-separated origins allowed by CORS ('*' for any); empty: CORS off.")
    health_max_age: float = Field(
        5.0, ge=0, description="Seconds a successful model call counts as a passing health check."
    )
    health_timeout: float = Field(
        2.5,
        gt=0,
        le=60,
        description=(
            "Seconds /health waits for its probe scoring call; a probe still running then keeps running and the "
            "next check counts it. Keep it below the platform's health-check timeout (s.yaml: 3 s)."
        ),
    )

    @field_validator("model_path", "model_name", "models_root", "embedding_model_path", "embedding_model_name",
                     mode="before")  # fmt: skip
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("models")
    @classmethod
    def _name_path_entries(cls, value: str) -> str:
        for entry in value.split(","):
            name, equals, path = entry.partition("=")
            if entry.strip() and not (equals and name.strip() and path.strip()):
                raise ValueError(f"entry {entry.strip()!r} is not name=path (RERANK_MODELS: m3=/mnt/auto/m3,...)")
        return value

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        value = value.strip().lower()
        if value in ("auto", "cpu", "cuda", "mps") or (
            value.startswith("cuda:") and value[5:].isascii() and value[5:].isdigit()
        ):
            return value
        raise ValueError("device must be auto, cpu, cuda, cuda:N or mps")

    @model_validator(mode="after")
    def _requests_fit_the_queue(self) -> Settings:
        """A request larger than the queue bound would be admitted only into an empty queue and
        refused (429) at any other time, however often it retried; a request of more documents
        than the item cap (each document is at least one item) would be refused only after some
        of its work. A limit left at its default follows a smaller bound it must fit; one set
        above it is refused at start-up."""
        fits = (
            ("max_request_items", "max_queue_pairs", "could never wait in the queue beside another one"),
            ("max_request_tokens", "max_queue_tokens", "could never wait in the queue beside another one"),
            ("max_documents", "max_request_items", "needs more model items than one request may have"),
        )
        for request, bound, why in fits:
            request_value, bound_value = getattr(self, request), getattr(self, bound)
            if request_value <= bound_value:
                continue
            if request not in self.model_fields_set:
                setattr(self, request, bound_value)
                continue
            request_name, bound_name = f"RERANK_{request.upper()}", f"RERANK_{bound.upper()}"
            raise ValueError(
                f"{request_name}={request_value} is larger than {bound_name}={bound_value}: a request that size "
                f"{why}; raise {bound_name} or lower {request_name}"
            )
        return self

    def batch_tokens(self, device: str) -> int:
        """The (initial) token budget of one model call on this device."""
        if self.max_batch_tokens is not None:
            return self.max_batch_tokens
        return 2048 if device == "cpu" else 32768

    def adaptive_batches(self, device: str) -> bool:
        """Whether the token budget follows the model's measured speed (CPU, not fixed by a setting)."""
        return device == "cpu" and self.max_batch_tokens is None

    @property
    def required_model_list(self) -> list[str]:
        return [name.strip() for name in self.required_models.split(",") if name.strip()]

    @property
    def model_entries(self) -> list[str]:
        return [entry.strip() for entry in self.models.split(",") if entry.strip()]

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    @property
    def api_key_list(self) -> list[str]:
        return [key.strip() for key in self.api_keys.split(",") if key.strip()]

    @property
    def aliases(self) -> list[str]:
        return [name.strip() for name in self.model_aliases.split(",") if name.strip()]


def settings_problems(exc: ValidationError) -> str:
    """A validation error as one line per setting, for a start-up message."""
    return "\n".join(f"  {'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
