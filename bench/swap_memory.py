"""A hot swap of the v2-m3-size model under a hard memory limit, with traffic: zero failed requests?

The server runs inside a cgroup (v1 memory controller, Linux, root) whose limit is s.yaml's CPU
instance (8 GiB by default), so going over it means the kernel's OOM killer, as on Function
Compute. Two clients send 4-document requests without pause; after a while a new version (the
same architecture and size, other random weights) is copied over the served directory file by
file, as a NAS upload does, and the admin route swaps it in; traffic goes on. Reported: requests
and failures, the reload's outcome and time, the server's peak RSS, the cgroup's peak usage
(page cache of the weight files included, which the kernel reclaims before it OOM-kills), its
failcnt and OOM kills.

    sudo python -m bench.swap_memory --backend torch --limit-gib 8
    sudo python -m bench.swap_memory --backend torch --limit-gib 8 --stack

With `--stack` the server holds the whole RAG stack: beside the reranker, an embedding model of
bge-m3's size (the same XLM-R large body, loaded as an embedding model), and a third client sends
embedding requests throughout; the reranker is swapped as above, with both models serving.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from bench.run import ROOT

log = logging.getLogger("bench.swap_memory")
CGROUP = Path("/sys/fs/cgroup/memory/compat-api-swap")


def build(seed: int) -> Path:
    sys.path.insert(0, str(ROOT))
    from tests.tiny_models import build_m3_size_reranker

    target = ROOT / "bench" / ".models" / ("m3-size" if seed == 0 else f"m3-size-seed{seed}")
    if not (target / "model.safetensors").is_file():
        log.info("building %s", target)
        build_m3_size_reranker(target, seed=seed)
    return target


def cgroup_value(name: str) -> str:
    return (CGROUP / name).read_text().strip()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--limit-gib", type=float, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--before", type=float, default=20, help="seconds of traffic before the swap")
    parser.add_argument("--after", type=float, default=20, help="seconds of traffic after it")
    parser.add_argument("--stack", action="store_true", help="serve a bge-m3-size embedding model beside it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    old, new = build(0), build(1)
    served = ROOT / "bench" / ".out" / "swap" / "m3"
    shutil.rmtree(served.parent, ignore_errors=True)
    shutil.copytree(old, served)
    embedder = served.parent / "m3-embed"
    if args.stack:
        shutil.copytree(old, embedder)
    if CGROUP.exists():
        CGROUP.rmdir()
    CGROUP.mkdir()
    (CGROUP / "memory.limit_in_bytes").write_text(str(int(args.limit_gib * 2**30)))
    from tests.servers import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "compat_api", "--host", "127.0.0.1", "--port", str(port), "--model-path",
               str(served), "--backend", args.backend, "--torch-threads", str(args.threads), "--reload-interval", "0",
               "--admin-key", "adm", "--cache-mb", "0", "--log-level", "warning", "--request-timeout", "600",
               "--cache-dir", str(served.parent / "cache")]  # fmt: skip
    if args.stack:
        command += ["--embedding-model-path", str(embedder)]
    out = ROOT / "bench" / ".out" / "swap-server.log"

    def enter_cgroup() -> None:
        (CGROUP / "cgroup.procs").write_text(str(os.getpid()))

    with out.open("wb") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT, preexec_fn=enter_cgroup)
    results: list[tuple[float, int]] = []
    stop = threading.Event()
    try:
        deadline = time.monotonic() + 600
        while not _ready(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start; see {out}")
            time.sleep(0.5)
        log.info("ready; traffic for %gs, then the swap", args.before)

        texts = ["paris is the capital of france " * 20 for _ in range(4)]
        rerank = ("/rerank", {"query": "which city is the capital", "texts": texts})
        embed = ("/v1/embeddings", {"input": texts})

        def client(path: str, body: dict[str, object]) -> None:
            with httpx.Client(timeout=600) as http:
                while not stop.is_set():
                    started = time.perf_counter()
                    try:
                        status = http.post(url + path, json=body).status_code
                    except httpx.HTTPError:
                        status = 0
                    results.append((time.perf_counter() - started, status))

        calls = [rerank, rerank, *([embed] if args.stack else [])]
        workers = [threading.Thread(target=client, args=call) for call in calls]
        for worker in workers:
            worker.start()
        time.sleep(args.before)
        log.info("uploading the new version over the served directory")
        for file in sorted(new.iterdir(), key=lambda f: f.suffix == ".safetensors"):
            shutil.copyfile(file, served / file.name)
        started = time.perf_counter()
        reload = httpx.post(url + f"/admin/models/{served.name}/reload", headers={"Authorization": "Bearer adm"},
                            timeout=900)  # fmt: skip
        reload_seconds = time.perf_counter() - started
        log.info("reload: %s %s", reload.status_code, reload.text[:300])
        time.sleep(args.after)
        stop.set()
        for worker in workers:
            worker.join(timeout=600)
        peak_rss = next(int(line.split()[1]) for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                        if line.startswith("VmHWM:")) / 1024  # fmt: skip
        usage = int(cgroup_value("memory.max_usage_in_bytes")) / 2**20
        failcnt = cgroup_value("memory.failcnt")
        oom = next(line for line in cgroup_value("memory.oom_control").splitlines() if line.startswith("oom_kill"))
    finally:
        stop.set()
        proc.terminate()
        proc.wait(timeout=60)
        CGROUP.rmdir()
    failed = sum(1 for _, status in results if status != 200)
    command_line = "python -m bench.swap_memory " + shlex.join(sys.argv[1:] if argv is None else argv)
    label = args.backend + (" (reranker + embedding model)" if args.stack else "")
    print(f"Command: `{command_line}`\n")
    print(
        "| backend | memory limit | requests | failed | p50 ms | reload | reload s | server peak RSS MiB | "
        "cgroup peak MiB (cache included) | failcnt | OOM kills |\n|---|---|---|---|---|---|---|---|---|---|---|"
    )
    print(
        f"| {label} | {args.limit_gib:g} GiB | {len(results)} | {failed} | "
        f"{statistics.median(t for t, _ in results) * 1000:.0f} | {reload.status_code} | {reload_seconds:.1f} | "
        f"{peak_rss:.0f} | {usage:.0f} | {failcnt} | {oom.split()[1]} |"
    )


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    main()
