"""Embedding throughput: compat-api's `/v1/embeddings` over real HTTP, the raw model in-process, and
infinity-emb's `/embeddings`, side by side in one run.

Workloads (fresh texts of ~100 words every round, so no cache helps): **E1** 1 client × 32 texts;
**E2** 16 concurrent clients × 8 texts. Rounds are interleaved across systems, round 0 warms up
and is not counted, every figure is a median over rounds. The raw ceiling is the same model
called with transformers (tokenize a batch, pad, forward, pool, normalize) at its best batch size.

    python -m bench.embed --model minilm --rounds 3 --infinity bench/.venv-infinity/bin/infinity_emb
    python -m bench.embed --model m3-size --backends torch,int8,onnx,openvino --rounds 2

`minilm` is the bundled all-MiniLM-L6-v2 (mean pooling); `m3-size` is a random body of bge-m3's
exact size (bge-m3 and bge-reranker-v2-m3 share XLM-R large: 568M parameters), CLS pooling, built
locally by `bench.realsize`.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench import host
from bench.run import ROOT, Sample, Server, percentile, running, settle
from bench.workloads import Request, Workload, _text

log = logging.getLogger("bench.embed")
BATCH_SIZES = (8, 16, 32, 64)


def workloads(round_no: int, names: list[str]) -> list[Workload]:
    rng = random.Random(5000 + round_no)

    def texts(count: int, tag: str) -> list[Request]:
        return [Request(tag, [f"{tag} {i} " + _text(rng, rng.randint(90, 110)) for i in range(count)])]

    built = [
        Workload("E1", "1 client x 32 texts", [texts(32, f"e1-{round_no}")]),
        Workload("E2", "16 clients x 8 texts", [texts(8, f"e2-{round_no}-{c}") for c in range(16)]),
    ]
    return [w for w in built if w.name in names]


class RawEmbedder:
    """The model called directly with transformers at its best batch size."""

    def __init__(self, path: Path, threads: int, window: int) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        from compat_api.core.models.embedder import detect_pooling

        torch.set_num_threads(threads)
        self.torch, self.window = torch, window
        self.pooling = detect_pooling(path)
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModel.from_pretrained(str(path)).eval()
        self.best: dict[str, int] = {}

    def run(self, texts: list[str], batch_size: int) -> Sample:
        from compat_api.core.models.embedder import pool

        started = time.perf_counter()
        with self.torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                enc = self.tokenizer(texts[i : i + batch_size], padding=True, truncation=True,
                                     max_length=self.window, return_tensors="pt")  # fmt: skip
                pooled = pool(self.model(**enc).last_hidden_state, enc["attention_mask"], self.pooling)
                self.torch.nn.functional.normalize(pooled, dim=-1).tolist()
        return Sample(len(texts), time.perf_counter() - started)

    def calibrate(self, name: str, texts: list[str]) -> int:
        speeds = {bs: self.run(texts[:64], bs).pairs_per_s for bs in BATCH_SIZES}
        best = max(speeds, key=lambda bs: speeds[bs])
        log.info("raw %s: texts/s by batch size %s -> best %d", name, {k: round(v, 1) for k, v in speeds.items()},
                 best)  # fmt: skip
        return best


def compat_body(workload: Workload, request: Request) -> tuple[str, dict[str, Any]]:
    return "/v1/embeddings", {"model": "bench", "input": request.documents, "encoding_format": "float"}


def infinity_body(workload: Workload, request: Request) -> tuple[str, dict[str, Any]]:
    return "/embeddings", {"model": "default/not-specified", "input": request.documents, "encoding_format": "float"}


def model_dir(kind: str) -> Path:
    if kind == "minilm":
        from compat_api.core.registry import bundled_model_path

        return Path(bundled_model_path())
    from bench.realsize import build

    return build()  # a reranker directory: loaded as an embedding model, its body is bge-m3's


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["minilm", "m3-size"], default="minilm")
    parser.add_argument("--workloads", default="E1,E2")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--backends", default="torch", help="compat-api backends (torch, int8, onnx, openvino)")
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--infinity", default="", help="path of infinity_emb (in its own venv)")
    parser.add_argument("--no-raw", action="store_true", help="skip the in-process raw ceiling")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    names = args.workloads.split(",")
    model = model_dir(args.model)
    out_dir = ROOT / "bench" / ".out"
    out_dir.mkdir(parents=True, exist_ok=True)

    servers = []
    for backend in args.backends.split(","):
        env = {"RERANK_CACHE_MB": "0", "RERANK_MAX_LENGTH": str(args.window), "RERANK_TORCH_THREADS": str(args.threads),
               "RERANK_LOG_LEVEL": "warning", "RERANK_BACKEND": backend,
               "RERANK_CACHE_DIR": str(out_dir / "cache")}  # fmt: skip
        command = [sys.executable, "-m", "compat_api", "--host", "127.0.0.1", "--port", "{port}",
                   "--embedding-model-path", str(model), "--request-timeout", "600"]  # fmt: skip
        name = "compat-api" + ("" if backend == "torch" else f"-{backend}")
        servers.append(Server(name, command, env, compat_body, "/health"))
    if args.infinity:
        command = [args.infinity, "v2", "--model-id", str(model), "--engine", "torch", "--device", "cpu",
                   "--dtype", "float32", "--host", "127.0.0.1", "--port", "{port}", "--no-model-warmup"]  # fmt: skip
        env = {"HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1",
               "OMP_NUM_THREADS": str(args.threads)}  # fmt: skip
        servers.append(Server("infinity-emb", command, env, infinity_body, "/health"))
    raw = None if args.no_raw else RawEmbedder(model, args.threads, args.window)

    samples: dict[tuple[str, str], list[Sample]] = {}
    with running(servers, out_dir):
        started = host.read()
        for round_no in range(args.rounds + 1):  # round 0 warms everything up and is not counted
            for workload in workloads(round_no, names):
                texts = [t for r in workload.requests for t in r.documents]
                systems = ([] if raw is None else ["raw model"]) + [s.name for s in servers]
                for name in systems:
                    if name == "raw model":
                        assert raw is not None
                        if workload.name not in raw.best:
                            raw.best[workload.name] = raw.calibrate(workload.name, texts)
                        sample = raw.run(texts, raw.best[workload.name])
                    else:
                        sample = next(s for s in servers if s.name == name).run(workload)
                    settle()
                    log.info("round %d %s %-20s %7.1f texts/s", round_no, workload.name, name, sample.pairs_per_s)
                    if round_no > 0:
                        samples.setdefault((workload.name, name), []).append(sample)
        steal = host.stolen(started, host.read())
    print(table(args, samples, names))
    print(host.steal_note(steal) + "\n")


def table(args: argparse.Namespace, samples: dict[tuple[str, str], list[Sample]], names: list[str]) -> str:
    lines = [
        f"### embeddings, {args.model}, {args.rounds} rounds, {args.threads} threads — "
        f"{time.strftime('%Y-%m-%d %H:%M')}",
        "",
        f"Command: `python -m bench.embed {shlex.join(sys.argv[1:])}`",
        "",
        "| workload | system | texts/s (median) | × raw | × infinity | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]

    def speed(workload: str, name: str) -> float | None:
        runs = samples.get((workload, name))
        return statistics.median(s.pairs_per_s for s in runs) if runs else None

    for workload in names:
        systems = [name for (w, name) in samples if w == workload]
        raw, infinity = speed(workload, "raw model"), speed(workload, "infinity-emb")
        for name in systems:
            value = speed(workload, name)
            assert value is not None
            latencies = [x for s in samples[(workload, name)] for x in s.latencies]
            lines.append(
                f"| {workload} | {name} | {value:.1f} | {f'{value / raw:.2f}' if raw else '–'} | "
                f"{f'{value / infinity:.2f}' if infinity else '–'} | "
                f"{f'{percentile(latencies, 0.5) * 1000:.0f}' if latencies else '–'} | "
                f"{f'{percentile(latencies, 0.99) * 1000:.0f}' if latencies else '–'} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
