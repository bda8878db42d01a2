"""bge-reranker-v2-m3 at its real size on this CPU: every backend's speed, accuracy, memory and start.

The model is `tests.tiny_models.build_m3_size_reranker`: bge-reranker-v2-m3's exact architecture
and size (568M parameters, 2.27 GB fp32) with random weights (its scores mean nothing; its cost
is the real one), built locally in under a minute into bench/.models/m3-size.

One server per backend (`python -m compat_api --backend B`, uvicorn on 127.0.0.1, score cache
off, window 1024) is started one after the other; for each, process start to the first 200 on
/health (which needs a real scoring call) and the process's peak resident memory until then
(VmHWM: loading and warm-up included) are recorded. Then rounds are interleaved across the
servers (round 0 warms up and is not counted): 1 client sends 16 documents of ~400 tokens a
pair (the issue's workload) and the seed's 3-document example; every figure is a median over
rounds. Logit deviation from the fp32 torch backend is measured on the same requests (TEI's
`raw_scores`), with top-1 and ranking agreement.

    python -m bench.realsize --backends torch,torch-stock,bf16,int8,onnx,openvino --rounds 3
    python -m bench.realsize --start-only      # start-up against a bare transformers script

A backend written `B@R` (root, Linux cgroup v1) runs inside a memory cgroup limited to R times the
fp32 weights, started first and after the page cache is dropped, so every page it reads is
charged to it: the kernel then reclaims clean file pages (a mapped export's weights) before it
would OOM-kill. A second table gives its limit, the cgroup's peak, failcnt and OOM kills:

    sudo python -m bench.realsize --backends openvino@1.25,torch,openvino --rounds 3
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench import host
from bench.run import ROOT, settle, spearman
from bench.workloads import WORDS
from compat_api.api.rerank import legacy

log = logging.getLogger("bench.realsize")
MODEL = ROOT / "bench" / ".models" / "m3-size"
WEIGHTS_MIB = 2_271_071_852 / 2**20  # the fp32 weights of bge-reranker-v2-m3's size
# The torch backend with PyTorch's default fp32 kernels (RERANK_ONEDNN_LINEAR=false): the path
# the issue measured, beside today's default.
STOCK = "torch-stock"  # the torch backend with the oneDNN linears off
ONEDNN = "torch-onednn"  # ... and forced on (the default switches them on every CPU but Intel's)
CGROUPS = Path("/sys/fs/cgroup/memory")
SEED: dict[str, object] = {"query": legacy.SEED_EXAMPLE["query"], "texts": legacy.SEED_EXAMPLE["compare_to"]}


def build() -> Path:
    sys.path.insert(0, str(ROOT))
    from tests.tiny_models import build_m3_size_reranker

    if not (MODEL / "model.safetensors").is_file():
        started = time.perf_counter()
        log.info("building the v2-m3-size model in %s", MODEL)
        build_m3_size_reranker(MODEL)
        log.info("built in %.1fs", time.perf_counter() - started)
    return MODEL


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Server:
    backend: str
    lanes: int = 1
    limit: float = 0.0  # memory cgroup limit, times the fp32 weights (0: none)
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""
    ready_s: float = 0.0
    peak_mib: float = 0.0
    latencies: dict[str, list[float]] = field(default_factory=dict)
    logits: dict[str, list[list[float]]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        limit = f" ≤{self.limit:g}× (cgroup)" if self.limit else ""
        return self.backend + (f" ×{self.lanes} lanes" if self.lanes > 1 else "") + limit

    @property
    def cgroup(self) -> Path:
        return CGROUPS / f"compat-api-realsize-{self.backend}"

    def enter_cgroup(self) -> None:
        (self.cgroup / "cgroup.procs").write_text(str(os.getpid()))

    def limited(self) -> dict[str, float]:
        """The cgroup's limit and peak (MiB), failcnt and OOM kills."""
        oom = (self.cgroup / "memory.oom_control").read_text().split()
        return {"limit": int((self.cgroup / "memory.limit_in_bytes").read_text()) / 2**20,
                "peak": int((self.cgroup / "memory.max_usage_in_bytes").read_text()) / 2**20,
                "failcnt": int((self.cgroup / "memory.failcnt").read_text()),
                "oom": int(oom[oom.index("oom_kill") + 1]) if "oom_kill" in oom else 0}  # fmt: skip

    def start(self, model: Path, threads: int, cache: Path) -> None:
        from tests.servers import free_port

        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        stock = self.backend == STOCK  # PyTorch's default fp32 kernels, as before the oneDNN linears
        backend = "torch" if self.backend in (STOCK, ONEDNN) else self.backend
        command = [sys.executable, "-m", "compat_api", "--host", "127.0.0.1", "--port", str(port), "--model-path",
                   str(model), "--backend", backend, "--cache-mb", "0",
                   "--max-length", "1024", "--torch-threads", str(threads), "--cache-dir", str(cache),
                   "--log-level", "warning", "--request-timeout", "600"]  # fmt: skip
        if self.lanes > 1:
            command += ["--lanes", str(self.lanes)]
        if stock or self.backend == ONEDNN:
            command += ["--onednn-linear", "false" if stock else "true"]
        log.info("starting %s: %s", self.name, shlex.join(command))
        out = ROOT / "bench" / ".out" / f"realsize-{self.backend}-{self.lanes}.log"
        enter = None
        if self.limit:
            if self.cgroup.exists():
                self.cgroup.rmdir()
            self.cgroup.mkdir()
            (self.cgroup / "memory.limit_in_bytes").write_text(str(int(self.limit * WEIGHTS_MIB * 2**20)))
            Path("/proc/sys/vm/drop_caches").write_text("1")  # its pages are charged to it, not to a reader before
            enter = self.enter_cgroup
        started = time.perf_counter()
        with out.open("wb") as sink:
            self.proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT, preexec_fn=enter)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited; see {out}")
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.ready_s = time.perf_counter() - started
        self.peak_mib = peak_rss_mib(self.proc.pid)
        log.info("%s ready in %.1fs, peak RSS %.0f MiB", self.name, self.ready_s, self.peak_mib)

    def ask(self, workload: str, body: dict[str, object]) -> None:
        started = time.perf_counter()
        response = httpx.post(self.url + "/rerank", json={**body, "raw_scores": True}, timeout=900)
        response.raise_for_status()
        self.latencies.setdefault(workload, []).append(time.perf_counter() - started)
        by_index = {r["index"]: r["score"] for r in response.json()}
        self.logits.setdefault(workload, []).append([by_index[i] for i in range(len(by_index))])

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=60)


def sixteen(rng: random.Random) -> dict[str, object]:
    """1 query and 16 documents of ~360 words: ~400 tokens a pair with the model's tokenizer."""
    return {"query": "what does " + " ".join(rng.choice(WORDS) for _ in range(10)),
            "texts": [" ".join(rng.choice(WORDS) for _ in range(360)) for _ in range(16)]}  # fmt: skip


def bare_start(model: Path, threads: int) -> float:
    """A bare script: import torch and transformers, load the weights, score one pair."""
    script = (
        "import torch, transformers\n"
        f"torch.set_num_threads({threads})\n"
        f"tok = transformers.AutoTokenizer.from_pretrained({str(model)!r})\n"
        f"model = transformers.AutoModelForSequenceClassification.from_pretrained({str(model)!r}).eval()\n"
        "with torch.inference_mode():\n"
        "    model(**tok([['what is function compute', 'hello']], return_tensors='pt'))\n"
    )
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="torch,bf16,int8,onnx,onnx-int8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--start-only", action="store_true", help="only start-up against the bare script")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    model = build()
    (ROOT / "bench" / ".out").mkdir(parents=True, exist_ok=True)
    cache = ROOT / "bench" / ".out" / "realsize-cache"
    command = "python -m bench.realsize " + shlex.join(sys.argv[1:] if argv is None else argv)
    if args.start_only:
        start_table(model, args, command, cache)
        return
    servers = [Server(b.partition("@")[0], limit=float(b.partition("@")[2] or 0)) for b in args.backends.split(",")]
    try:
        for server in servers:
            server.start(model, args.threads, cache)
        rng = random.Random(7)
        started = host.read()
        for round_no in range(args.rounds + 1):
            request = sixteen(rng)
            round_started = host.read()
            for server in servers:
                settle()
                server.ask("16", request)
                server.ask("seed", SEED)
                log.info("round %d %-10s 16 docs %.1fs, seed %.2fs", round_no, server.name,
                         server.latencies["16"][-1], server.latencies["seed"][-1])  # fmt: skip
            log.info("round %d: %s", round_no, host.steal_note(host.stolen(round_started, host.read())))
        steal = host.stolen(started, host.read())
    finally:
        for server in servers:
            server.stop()
    print(table(servers, args, command))
    print(host.steal_note(steal) + "\n")
    if any(server.limit for server in servers):
        print(limit_table(servers))


def limit_table(servers: list[Server]) -> str:
    lines = ["| backend | cgroup limit MiB | cgroup peak MiB | failcnt | OOM kills | process peak RSS MiB |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for server in (s for s in servers if s.limit):
        got = server.limited()
        lines.append(f"| {server.name} | {got['limit']:.0f} | {got['peak']:.0f} | {got['failcnt']:.0f} | "
                     f"{got['oom']:.0f} | {server.peak_mib:.0f} |")  # fmt: skip
        server.cgroup.rmdir()
    return "\n".join(lines) + "\n"


def table(servers: list[Server], args: argparse.Namespace, command: str) -> str:
    base = next((s for s in servers if s.backend == "torch"), servers[0])

    def median(server: Server, workload: str) -> float:
        return statistics.median(server.latencies[workload][1:])

    lines = [
        f"### v2-m3-size model, {args.rounds} rounds, {args.threads} threads — {time.strftime('%Y-%m-%d %H:%M')}",
        "",
        f"Command: `{command}`",
        "",
        "| backend | pairs/s (16 × ~400 tokens) | × torch fp32 | 16-doc request s | seed 3-doc ms | max Δlogit | "
        "mean Δlogit | top-1 same | Spearman ρ | ready s | peak RSS MiB | peak ÷ fp32 weights |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for server in servers:
        sixteen_s = median(server, "16")
        deltas = [abs(a - b) for mine, ref in zip(server.logits["16"][1:], base.logits["16"][1:], strict=True)
                  for a, b in zip(mine, ref, strict=True)]  # fmt: skip
        pairs = list(zip(server.logits["16"][1:], base.logits["16"][1:], strict=True))
        top1 = statistics.fmean(float(max(range(16), key=m.__getitem__) == max(range(16), key=r.__getitem__))
                                for m, r in pairs)  # fmt: skip
        rho = statistics.fmean(spearman(m, r) for m, r in pairs)
        lines.append(
            f"| {server.name} | {16 / sixteen_s:.2f} | {median(base, '16') / sixteen_s:.2f} | {sixteen_s:.1f} | "
            f"{median(server, 'seed') * 1000:.0f} | {max(deltas):.4f} | {statistics.fmean(deltas):.4f} | "
            f"{top1:.0%} | {rho:.3f} | {server.ready_s:.1f} | {server.peak_mib:.0f} | "
            f"{server.peak_mib / WEIGHTS_MIB:.2f} |"
        )
    return "\n".join(lines) + "\n"


def start_table(model: Path, args: argparse.Namespace, command: str, cache: Path) -> None:
    bare, ours = [], []
    for round_no in range(args.rounds):
        bare.append(bare_start(model, args.threads))
        server = Server("torch")
        server.start(model, args.threads, cache)
        server.stop()
        ours.append(server.ready_s)
        log.info("round %d: bare %.1fs, compat-api %.1fs (peak %.0f MiB)", round_no, bare[-1], ours[-1],
                 server.peak_mib)  # fmt: skip
    b, s = statistics.median(bare), statistics.median(ours)
    print(f"Command: `{command}`\n")
    print(f"| process start → ready, v2-m3-size (median of {args.rounds}) | seconds | × bare |\n|---|---|---|")
    print(f"| bare script: import torch + transformers, load the weights, score a pair | {b:.1f} | 1.00 |")
    print(f"| `python -m compat_api --backend torch` until /health is 200 | {s:.1f} | {s / b:.2f} |")


if __name__ == "__main__":
    main()
