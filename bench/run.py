"""Throughput benchmark: compat-api over real HTTP, the raw model in-process, and infinity-emb.

One run starts the server as a user would (`python -m compat_api`, uvicorn on 127.0.0.1), and
in the same run measures the raw ceiling (the same model called directly in this process at its
best batch size on the same pairs) and, when installed, infinity-emb on the same model
directory. Rounds are interleaved (raw, compat-api, infinity, raw, ...) and every figure is the
median over rounds, so that a noisy machine moves all systems alike.

    python -m bench.run                       # MiniLM cross-encoder, W1-W4, 3 rounds
    python -m bench.run --model tiny --workloads W1,W2
    python -m bench.run --infinity bench/.venv-infinity/bin/infinity_emb \
        --backends torch,onnx,int8 --out docs/benchmarks.md

infinity-emb lives in its own venv (its pins clash with ours):
    python3 -m venv bench/.venv-infinity
    bench/.venv-infinity/bin/pip install torch==2.13.0 "infinity-emb[server,torch]==0.0.78"
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import host
from bench.workloads import Request, Workload, build

log = logging.getLogger("bench")
ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "bench" / ".models"
WINDOW = 512
BATCH_SIZES = (8, 16, 32, 64)
# A pause after every system's turn, the same for all: the system measured just before (above all
# the raw model, whose OpenMP threads live in this process) keeps the cores busy for a moment after
# it returns, and the next system paid for it. Measured on the Zen 4: compat-api's single 32-text
# embedding request ran at 75 texts/s right after the raw model, at 98-112 with a pause or alone.
SETTLE_S = 1.0


def settle() -> None:
    """Let the cores go quiet before the next system is measured."""
    time.sleep(SETTLE_S)


@dataclass
class Sample:
    """One system on one workload in one round."""

    pairs: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    padding_waste: float | None = None

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.seconds if self.seconds else 0.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


# ---------------------------------------------------------------- the raw ceiling


class RawModel:
    """The model called directly with transformers: tokenize a batch, pad, forward."""

    def __init__(self, path: Path, threads: int) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        torch.set_num_threads(threads)
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
        self.best_batch: dict[str, int] = {}

    def chunk_pairs(self, request: Request, max_chunks: int = 10, overlap: int = 64) -> list[tuple[str, str]]:
        """The (query, chunk) pairs compat-api scores for a chunked request."""
        from compat_api.core.models.base import EncodeOptions, fit_document

        tok = self.tokenizer
        q_len = len(tok(request.query, add_special_tokens=False)["input_ids"][: WINDOW * 3 // 4])
        room = WINDOW - q_len - 3
        pairs = []
        for doc in request.documents:
            ids = tok(doc, add_special_tokens=False, verbose=False)["input_ids"]
            for piece in fit_document(ids, room, EncodeOptions(mode="chunk", max_chunks=max_chunks, overlap=overlap)):
                pairs.append((request.query, str(tok.decode(piece))))
        return pairs

    def pairs_of(self, workload: Workload) -> list[tuple[str, str]]:
        if workload.chunked:
            return [p for r in workload.requests for p in self.chunk_pairs(r)]
        return [(r.query, d) for r in workload.requests for d in r.documents]

    def run(self, pairs: list[tuple[str, str]], batch_size: int) -> Sample:
        real = padded = 0
        started = time.perf_counter()
        with self.torch.inference_mode():
            for i in range(0, len(pairs), batch_size):
                chunk = pairs[i : i + batch_size]
                enc = self.tokenizer([q for q, _ in chunk], [d for _, d in chunk], padding=True,
                                     truncation="only_second", max_length=WINDOW, return_tensors="pt")  # fmt: skip
                self.model(**enc).logits.view(-1).float().tolist()
                real += int(enc["attention_mask"].sum())
                padded += int(enc["attention_mask"].numel())
        return Sample(len(pairs), time.perf_counter() - started, padding_waste=1 - real / padded)

    def calibrate(self, workload: Workload) -> int:
        pairs = self.pairs_of(workload)[:128]
        speeds = {bs: self.run(pairs, bs).pairs_per_s for bs in BATCH_SIZES}
        best = max(speeds, key=lambda bs: speeds[bs])
        log.info("raw %s: pairs/s by batch size %s -> best %d", workload.name,
                 {k: round(v, 1) for k, v in speeds.items()}, best)  # fmt: skip
        return best


# ---------------------------------------------------------------- HTTP systems


@dataclass
class Server:
    """A rerank server under test: how to start it and how to ask it."""

    name: str
    command: list[str]
    env: dict[str, str]
    body: Callable[[Workload, Request], tuple[str, dict[str, Any]]]
    health: str
    counters: bool = False
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""
    log_path: Path | None = None

    def start(self, port: int, out_dir: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = out_dir / f"{self.name}.log"
        command = [part.replace("{port}", str(port)) for part in self.command]
        log.info("starting %s: %s", self.name, shlex.join(command))
        with self.log_path.open("wb") as sink:
            self.proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT,
                                         env={**os.environ, **self.env})  # fmt: skip
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited; see {self.log_path}")
            try:
                if httpx.get(self.url + self.health, timeout=5).status_code == 200:
                    log.info("%s ready", self.name)
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} did not become ready; see {self.log_path}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def engine_totals(self) -> tuple[int, int]:
        if not self.counters:
            return 0, 0
        engine = httpx.get(self.url + "/health", timeout=30).json()["models"][0]["engine"]
        return int(engine["real_tokens"]), int(engine["padded_tokens"])

    def run(self, workload: Workload) -> Sample:
        real0, padded0 = self.engine_totals()
        latencies: list[float] = []

        async def client(http: httpx.AsyncClient, requests: list[Request]) -> None:
            for request in requests:
                path, body = self.body(workload, request)
                started = time.perf_counter()
                response = await http.post(self.url + path, json=body)
                response.raise_for_status()
                latencies.append(time.perf_counter() - started)

        async def all_clients() -> float:
            limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
            async with httpx.AsyncClient(timeout=600, limits=limits) as http:
                started = time.perf_counter()
                await asyncio.gather(*(client(http, requests) for requests in workload.clients))
                return time.perf_counter() - started

        seconds = asyncio.run(all_clients())
        real1, padded1 = self.engine_totals()
        waste = 1 - (real1 - real0) / (padded1 - padded0) if padded1 > padded0 else None
        pairs = workload.extra.get("pairs", workload.documents)
        assert isinstance(pairs, int)
        return Sample(pairs, seconds, latencies, waste)


def compat_body(workload: Workload, request: Request) -> tuple[str, dict[str, Any]]:
    if workload.truncate:
        return "/rerank", {"query": request.query, "texts": request.documents, "truncate": True}
    body: dict[str, Any] = {"model": "bench", "query": request.query, "documents": request.documents}
    if workload.chunked:
        body["max_chunks_per_doc"] = 10
    return "/v1/rerank", body


def infinity_body(workload: Workload, request: Request) -> tuple[str, dict[str, Any]]:
    return "/rerank", {"query": request.query, "documents": request.documents, "return_documents": False}


def compat_server(name: str, model: Path, threads: int, extra_env: dict[str, str] | None = None) -> Server:
    env = {"RERANK_CACHE_MB": "0", "RERANK_MAX_LENGTH": str(WINDOW), "RERANK_TORCH_THREADS": str(threads),
           "RERANK_LOG_LEVEL": "warning", **(extra_env or {})}  # fmt: skip
    command = [
        sys.executable,
        "-m",
        "compat_api",
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "--model-path",
        str(model),
    ]
    return Server(name, command, env, compat_body, "/health", counters=True)


def infinity_server(binary: str, model: Path, threads: int) -> Server:
    command = [binary, "v2", "--model-id", str(model), "--engine", "torch", "--device", "cpu", "--dtype", "float32",
               "--host", "127.0.0.1", "--port", "{port}", "--no-model-warmup"]  # fmt: skip
    env = {"HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1",
           "OMP_NUM_THREADS": str(threads)}  # fmt: skip
    return Server("infinity-emb", command, env, infinity_body, "/health")


# ---------------------------------------------------------------- shared helpers


def spearman(a: list[float], b: list[float]) -> float:
    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        for rank, i in enumerate(order):
            out[i] = float(rank)
        return out

    return statistics.correlation(ranks(a), ranks(b))


# ---------------------------------------------------------------- driver


def build_model(kind: str) -> Path:
    sys.path.insert(0, str(ROOT))
    from tests.tiny_models import build_minilm_cross_encoder, build_tiny_xlmr_reranker

    target = MODELS / ("minilm-cross-encoder" if kind == "minilm" else "tiny-xlmr-reranker")
    if not (target / "config.json").exists():
        log.info("building %s model in %s", kind, target)
        (build_minilm_cross_encoder if kind == "minilm" else build_tiny_xlmr_reranker)(target)
    return target


@contextmanager
def running(servers: list[Server], out_dir: Path) -> Iterator[None]:
    from tests.servers import free_port

    try:
        for server in servers:
            server.start(free_port(), out_dir)
        yield
    finally:
        for server in servers:
            server.stop()


# Variants of a backend: the settings they change.
VARIANTS = {
    "torch-onednn": {"RERANK_BACKEND": "torch", "RERANK_ONEDNN_LINEAR": "true"},
    "torch-stock": {"RERANK_BACKEND": "torch", "RERANK_ONEDNN_LINEAR": "false"},
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["minilm", "tiny"], default="minilm")
    parser.add_argument("--workloads", default="W1,W2,W3,W4")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the requests per workload")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--infinity", default="", help="path of infinity_emb (in its own venv)")
    parser.add_argument(
        "--backends",
        default="torch,onnx",
        help="compat-api backends (torch, bf16, int8, onnx, openvino; torch-onednn and torch-stock: torch with "
        "the oneDNN linears forced on or off)",
    )
    parser.add_argument("--lanes", default="1", help="comma-separated lane counts of the compat-api servers")
    parser.add_argument("--out", default="", help="append the result table to this markdown file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    wanted = args.workloads.split(",")

    model = build_model(args.model)
    out_dir = ROOT / "bench" / ".out"
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = RawModel(model, args.threads)
    backends = args.backends.split(",")
    servers = [
        compat_server("compat-api" + ("" if backend == "torch" else f"-{backend}") + ("" if lanes == "1" else
                      f" ×{lanes} lanes"), model, args.threads,
                      {"RERANK_BACKEND": backend, "RERANK_CACHE_DIR": str(out_dir / "cache"), "RERANK_LANES": lanes,
                       **VARIANTS.get(backend, {})})
        for backend in backends for lanes in args.lanes.split(",")
    ]  # fmt: skip
    if args.infinity:
        servers.append(infinity_server(args.infinity, model, args.threads))

    samples: dict[tuple[str, str], list[Sample]] = {}
    with running(servers, out_dir):
        started = host.read()
        for round_no in range(args.rounds + 1):  # round 0 warms everything up and is not counted
            round_started = host.read()
            for workload in [w for w in build(round_no, args.scale) if w.name in wanted]:
                pairs = raw.pairs_of(workload)
                workload.extra["pairs"] = len(pairs)
                if workload.name not in raw.best_batch:
                    raw.best_batch[workload.name] = raw.calibrate(workload)
                for name in ["raw model", *(s.name for s in servers)]:
                    if name == "raw model":
                        sample = raw.run(pairs, raw.best_batch[workload.name])
                    else:
                        sample = next(s for s in servers if s.name == name).run(workload)
                    settle()
                    log.info("round %d %s %-16s %7.1f pairs/s", round_no, workload.name, name, sample.pairs_per_s)
                    if round_no > 0:
                        samples.setdefault((workload.name, name), []).append(sample)
            log.info("round %d: %s", round_no, host.steal_note(host.stolen(round_started, host.read())))
        steal = host.stolen(started, host.read())

    report = table(args, samples, wanted, [s.name for s in servers])
    if "int8" in backends and "torch" in backends:
        report += int8_report(samples, wanted)
    report += "\n" + host.steal_note(steal) + "\n"
    print(report)
    if args.out:
        with open(args.out, "a") as sink:
            sink.write(report + "\n")


def table(args: argparse.Namespace, samples: dict[tuple[str, str], list[Sample]], wanted: list[str],
          servers: list[str]) -> str:  # fmt: skip
    command = "python -m bench.run " + shlex.join(sys.argv[1:])
    lines = [
        f"### {args.model} model, {args.rounds} rounds, {args.threads} threads — {time.strftime('%Y-%m-%d %H:%M')}",
        "",
        f"Command: `{command}`",
        "",
        "| workload | system | pairs/s (median) | × raw | × infinity | p50 ms | p99 ms | padding waste |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for workload in wanted:
        raw = statistics.median(s.pairs_per_s for s in samples[(workload, "raw model")])
        inf_key = (workload, "infinity-emb")
        infinity = statistics.median(s.pairs_per_s for s in samples[inf_key]) if inf_key in samples else None
        for name in ["raw model", *servers]:
            runs = samples[(workload, name)]
            speed = statistics.median(s.pairs_per_s for s in runs)
            lat = [x for s in runs for x in s.latencies]
            wastes = [s.padding_waste for s in runs if s.padding_waste is not None]
            lines.append(
                f"| {workload} | {name} | {speed:.1f} | {speed / raw:.2f} | "
                f"{f'{speed / infinity:.2f}' if infinity else '–'} | "
                f"{f'{percentile(lat, 0.5) * 1000:.0f}' if lat else '–'} | "
                f"{f'{percentile(lat, 0.99) * 1000:.0f}' if lat else '–'} | "
                f"{f'{statistics.median(wastes):.1%}' if wastes else '–'} |"
            )
    return "\n".join(lines) + "\n"


def int8_report(samples: dict[tuple[str, str], list[Sample]], wanted: list[str]) -> str:
    lines = ["", "int8 backend:", ""]
    for workload in wanted:
        fp32 = statistics.median(s.pairs_per_s for s in samples[(workload, "compat-api")])
        int8 = statistics.median(s.pairs_per_s for s in samples[(workload, "compat-api-int8")])
        lines.append(f"- {workload}: int8 {int8:.1f} pairs/s vs fp32 {fp32:.1f} = {int8 / fp32:.2f}×")
    lines += ["", "Accuracy of every backend against fp32: `python -m bench.accuracy`."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
