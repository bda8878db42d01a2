"""Lanes: one model lane with every thread, or several lanes with a share each, under concurrency.

Each lane runs its own model calls on one copy of the weights with `RERANK_TORCH_THREADS / lanes`
threads, fed by the same fair batcher. Per model, one server per configuration is started
(`python -m compat_api --lanes L --torch-threads T`, score cache off) and rounds are interleaved
(round 0 warms up): `--clients` concurrent clients each send requests of `--docs` documents.
Medians over rounds of pairs/s and the requests' p50/p99.

    python -m bench.lanes --model minilm --threads 2 --rounds 3
    python -m bench.lanes --model m3-size --backend bf16 --threads 2 --rounds 2 --docs 8 --words 360
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import shlex
import statistics
import sys
import time
from pathlib import Path

import httpx

from bench import host
from bench.realsize import Server
from bench.realsize import build as build_m3
from bench.run import build_model, percentile
from bench.workloads import WORDS

log = logging.getLogger("bench.lanes")


async def round_(
    url: str, clients: int, requests: int, docs: int, words: int, rng: random.Random
) -> tuple[float, list[float]]:
    latencies: list[float] = []

    def body() -> dict[str, object]:
        return {"query": " ".join(rng.choice(WORDS) for _ in range(8)),
                "texts": [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(docs)]}  # fmt: skip

    bodies = [[body() for _ in range(requests)] for _ in range(clients)]

    async def client(http: httpx.AsyncClient, mine: list[dict[str, object]]) -> None:
        for payload in mine:
            started = time.perf_counter()
            response = await http.post(url + "/rerank", json=payload)
            response.raise_for_status()
            latencies.append(time.perf_counter() - started)

    async with httpx.AsyncClient(timeout=1800) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http, mine) for mine in bodies))
        seconds = time.perf_counter() - started
    return clients * requests * docs / seconds, latencies


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["minilm", "m3-size"], default="minilm")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=4, help="requests per client per round")
    parser.add_argument("--docs", type=int, default=8)
    parser.add_argument("--words", type=int, default=100)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    model = build_m3() if args.model == "m3-size" else build_model("minilm")
    cache = Path(__file__).resolve().parent / ".out" / "lanes-cache"
    configs = sorted({1, args.threads})  # 1 lane x T threads, T lanes x 1 thread
    servers = [Server(args.backend, lanes=lanes) for lanes in configs]
    speeds: dict[int, list[float]] = {lanes: [] for lanes in configs}
    latencies: dict[int, list[float]] = {lanes: [] for lanes in configs}
    try:
        for server in servers:
            server.start(model, args.threads, cache)
        rng = random.Random(3)
        started = host.read()
        for round_no in range(args.rounds + 1):
            for server in servers:
                speed, lat = asyncio.run(round_(server.url, args.clients, args.requests, args.docs, args.words, rng))
                log.info("round %d, %d lane(s): %.2f pairs/s", round_no, server.lanes, speed)
                if round_no:
                    speeds[server.lanes].append(speed)
                    latencies[server.lanes] += lat
        steal = host.stolen(started, host.read())
    finally:
        for server in servers:
            server.stop()
    command = "python -m bench.lanes " + shlex.join(sys.argv[1:] if argv is None else argv)
    base = statistics.median(speeds[1])
    print(f"### Lanes: {args.model}, backend {args.backend}, {args.threads} threads, {args.clients} clients × "
          f"{args.docs} docs of ~{args.words} words — {time.strftime('%Y-%m-%d %H:%M')}\n")  # fmt: skip
    print(f"Command: `{command}`\n")
    print("| lanes × threads each | pairs/s (median) | × 1 lane | p50 ms | p99 ms |\n|---|---|---|---|---|")
    for lanes in configs:
        speed = statistics.median(speeds[lanes])
        print(
            f"| {lanes} × {args.threads // lanes} | {speed:.2f} | {speed / base:.2f} | "
            f"{percentile(latencies[lanes], 0.5) * 1000:.0f} | {percentile(latencies[lanes], 0.99) * 1000:.0f} |"
        )

    print("\n" + host.steal_note(steal))


if __name__ == "__main__":
    main()
