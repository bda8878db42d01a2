"""Fairness and hostile-body benchmark: do small requests keep their latency beside a client that
sends huge ones, and does a million-item body cost the server nothing?

One server (`python -m compat_api`, uvicorn on 127.0.0.1, score cache off) per model. Each round
runs two phases back to back: 8 closed-loop clients sending 4 short documents (~20 words)
**alone**, then the same 8 **beside** one client sending 1000-document requests (~60 words each).
Every figure is the median over rounds (round 0 warms up and is not counted). The target: the
small requests' p99 beside the big client stays within 3x their p99 alone.

Then the review's row 1: a 2 MiB body of about a million non-string items on `/rerank`, sent 5
times with a small request in flight each time: the answer's time and size, and the small
request's latency (an event loop blocked by validation would hold it).

    python -m bench.fairness --model tiny --seconds 15 --rounds 3
    python -m bench.fairness --model minilm --seconds 20 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench.run import ROOT, build_model, percentile

log = logging.getLogger("bench.fairness")
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau".split()  # noqa: SIM905
MILLION = b'{"query":"q","compare_to":[' + b"1," * (1024 * 1024 - 30) + b"1]}"


def text(words: int) -> str:
    return " ".join(random.choice(WORDS) for _ in range(words))


async def phase(url: str, seconds: float, big: bool) -> dict[str, float]:
    small_latencies: list[float] = []
    errors = 0
    stop = time.monotonic() + seconds

    async def small(http: httpx.AsyncClient) -> None:
        nonlocal errors
        while time.monotonic() < stop:
            started = time.perf_counter()
            body = {"query": f"q {random.random()}", "documents": [text(20) for _ in range(4)]}
            response = await http.post(url + "/v1/rerank", json=body)
            if response.status_code == 200:
                small_latencies.append(time.perf_counter() - started)
            else:
                errors += 1

    async def huge(http: httpx.AsyncClient) -> None:
        while time.monotonic() < stop:
            body = {"query": f"q {random.random()}", "documents": [text(60) for _ in range(1000)]}
            try:
                await http.post(url + "/v1/rerank", json=body, timeout=max(1.0, stop - time.monotonic()))
            except httpx.TimeoutException:
                return

    limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
    pairs_before = engine_pairs(url)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        await asyncio.gather(*(small(http) for _ in range(8)), *([huge(http)] if big else []))
    big_pairs = engine_pairs(url) - pairs_before - 4 * len(small_latencies)
    return {"requests": len(small_latencies), "p50": percentile(small_latencies, 0.5),
            "p99": percentile(small_latencies, 0.99), "big": big_pairs / seconds if big else 0.0,
            "errors": errors}  # fmt: skip


def engine_pairs(url: str) -> int:
    """Items the model has scored so far (the engine's own counter)."""
    return int(httpx.get(url + "/health", timeout=30).json()["models"][0]["engine"]["pairs"])


async def hostile(url: str) -> dict[str, float]:
    times, sizes, stalls = [], [], []
    async with httpx.AsyncClient(timeout=120) as http:
        for _ in range(5):
            small = asyncio.create_task(http.post(url + "/v1/rerank", json={"query": "q", "documents": ["a", "b"]}))
            started = time.perf_counter()
            response = await http.post(url + "/rerank", content=MILLION, headers={"content-type": "application/json"})
            times.append(time.perf_counter() - started)
            sizes.append(len(response.content))
            small_started = time.perf_counter()
            await small
            stalls.append(time.perf_counter() - small_started)
            assert response.status_code in (413, 422), response.status_code
    return {
        "ms": statistics.median(times) * 1000,
        "bytes": max(sizes),
        "status": response.status_code,
        "stall": statistics.median(stalls) * 1000,
    }


def serve(model: Path, threads: int, out: Path) -> tuple[subprocess.Popen[bytes], str]:
    from tests.servers import free_port

    port = free_port()
    command = [sys.executable, "-m", "compat_api", "--host", "127.0.0.1", "--port", str(port), "--model-path",
               str(model), "--cache-mb", "0", "--torch-threads", str(threads), "--log-level", "warning",
               "--max-length", "512"]  # fmt: skip
    with out.open("wb") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"the server did not become ready; see {out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["minilm", "tiny"], default="tiny")
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    random.seed(0)
    model = build_model(args.model)
    out = ROOT / "bench" / ".out"
    out.mkdir(parents=True, exist_ok=True)
    proc, url = serve(model, args.threads, out / "fairness-server.log")
    alone: list[dict[str, float]] = []
    beside: list[dict[str, float]] = []
    try:
        for round_no in range(args.rounds + 1):
            a = asyncio.run(phase(url, args.seconds, big=False))
            b = asyncio.run(phase(url, args.seconds, big=True))
            log.info("round %d: alone p99 %.0f ms (%d), beside p99 %.0f ms (%d), big docs/s %.0f", round_no,
                     a["p99"] * 1000, a["requests"], b["p99"] * 1000, b["requests"], b["big"])  # fmt: skip
            if round_no:
                alone.append(a)
                beside.append(b)
        body = asyncio.run(hostile(url))
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    def med(runs: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    ratio = med(beside, "p99") / med(alone, "p99")
    command = "python -m bench.fairness " + shlex.join(sys.argv[1:] if argv is None else argv)
    lines = [
        f"### Fairness: {args.model} model, {args.rounds} rounds of {args.seconds:g} s, {args.threads} threads — "
        f"{time.strftime('%Y-%m-%d %H:%M')}",
        "",
        f"Command: `{command}`",
        "",
        "| small clients (8 × 4 docs) | requests / phase | p50 ms | p99 ms | p99 × alone | big docs/s | errors |",
        "|---|---|---|---|---|---|---|",
        f"| alone | {med(alone, 'requests'):.0f} | {med(alone, 'p50') * 1000:.0f} | {med(alone, 'p99') * 1000:.0f} | "
        f"1.00 | – | {med(alone, 'errors'):.0f} |",
        f"| beside 1 client × 1000 docs | {med(beside, 'requests'):.0f} | {med(beside, 'p50') * 1000:.0f} | "
        f"{med(beside, 'p99') * 1000:.0f} | {ratio:.2f} | {med(beside, 'big'):.0f} | {med(beside, 'errors'):.0f} |",
        "",
        f"Target p99 beside ≤ 3× alone: {'met' if ratio <= 3 else 'missed'} ({ratio:.2f}×).",
        "",
        f"A 2 MiB body of ~1M non-string items on `/rerank`: {body['status']:.0f} in {body['ms']:.0f} ms "
        f"(median of 5), body {body['bytes']:.0f} bytes; target < 100 ms and < 4 KB: "
        f"{'met' if body['ms'] < 100 and body['bytes'] < 4096 else 'missed'}. A 2-document request sent beside it "
        f"answered {body['stall']:.0f} ms after the big one.",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
