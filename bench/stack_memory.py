"""Memory of a whole RAG stack on one instance: a reranker and an embedding model of bge-m3's size.

Starts `python -m compat_api --model-path M --embedding-model-path M` (the v2-m3-size directory
serves as both: as an embedding model its XLM-R body is exactly bge-m3's) once per backend, waits
for the first 200 on /health, embeds and reranks once, and prints the process's peak resident
memory while loading (VmHWM) and its resident memory when serving (VmRSS), against the fp32
weights of the two models.

    python -m bench.stack_memory --backends torch,int8
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time

import httpx

from bench.realsize import WEIGHTS_MIB, build, peak_rss_mib
from bench.run import ROOT

log = logging.getLogger("bench.stack_memory")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="torch,int8")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from tests.servers import free_port, wait_ready

    model = build()
    out = ROOT / "bench" / ".out"
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for backend in args.backends.split(","):
        port = free_port()
        command = [sys.executable, "-m", "compat_api", "--host", "127.0.0.1", "--port", str(port), "--model-path",
                   str(model), "--embedding-model-path", str(model), "--embedding-model-name", "m3-size-embedder",
                   "--backend", backend, "--torch-threads", str(args.threads),
                   "--cache-dir", str(out / "realsize-cache"), "--log-level", "warning"]  # fmt: skip
        log.info("starting %s", backend)
        started = time.perf_counter()
        with (out / f"stack-{backend}.log").open("wb") as sink:
            proc = subprocess.Popen(command, stdout=sink, stderr=sink, cwd=ROOT)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(proc, url, timeout=900)  # type: ignore[arg-type]
            ready = time.perf_counter() - started
            httpx.post(url + "/v1/embeddings", json={"input": ["a text to embed"] * 4}, timeout=600).raise_for_status()
            httpx.post(url + "/v1/rerank", json={"query": "q", "documents": ["a", "b"]}, timeout=600).raise_for_status()
            peak, resident = peak_rss_mib(proc.pid), rss_mib(proc.pid)
            log.info("%s: ready %.1fs, peak %.0f MiB, serving %.0f MiB", backend, ready, peak, resident)
            rows.append((backend, ready, peak, resident))
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    weights = 2 * WEIGHTS_MIB
    print(f"Command: `python -m bench.stack_memory {' '.join(sys.argv[1:])}` (reranker + embedding model, both "
          f"v2-m3-size: {weights:.0f} MiB of fp32 weights)\n")  # fmt: skip
    print("| backend | ready s | peak RSS MiB | ÷ fp32 weights | serving RSS MiB | ÷ fp32 weights |")
    print("|---|---|---|---|---|---|")
    for backend, ready, peak, resident in rows:
        cells = [backend, f"{ready:.1f}", f"{peak:.0f}", f"{peak / weights:.2f}", f"{resident:.0f}",
                 f"{resident / weights:.2f}"]  # fmt: skip
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
