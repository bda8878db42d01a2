"""Slow and greedy clients against the real server (review of 2026-11-25, rows 3, 9 and 18): header
and body deadlines, a connection cap, chunk-heavy requests charged for their chunks, and a JSON
503 for a request the shutdown grace cuts."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import httpx

from tests.servers import output, serving, start, wait_ready


def read_response(sock: socket.socket, timeout: float) -> tuple[int, dict[str, object]]:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), 0
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    status = int(head.split(b" ")[1])
    return status, json.loads(body) if body else {}


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)))


def test_slow_headers_and_bodies_get_408_and_their_connections_close(tiny_reranker_dir: Path) -> None:
    args = ["--model-path", str(tiny_reranker_dir), "--header-timeout", "1", "--body-timeout", "1"]
    with serving(args) as url:
        trickle = connect(url)
        trickle.sendall(b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\n")  # and never the rest of the head
        silent = connect(url)  # sends nothing at all
        slow_body = connect(url)
        slow_body.sendall(b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 1000\r\n\r\n{\"query\": \"q\", ")  # fmt: skip
        started = time.monotonic()
        for sock, words in ((trickle, "RERANK_HEADER_TIMEOUT"), (silent, "RERANK_HEADER_TIMEOUT"),
                            (slow_body, "RERANK_BODY_TIMEOUT")):  # fmt: skip
            with sock:
                status, body = read_response(sock, timeout=10)
                assert status == 408 and words in str(body["message"])
                assert sock.recv(10) == b"", "the connection is closed"
        assert time.monotonic() - started < 8
        with httpx.Client() as kept:
            assert kept.get(url + "/health").status_code == 200
            time.sleep(1.5)  # an idle kept-alive connection is not a slow client
            assert kept.get(url + "/health").status_code == 200


def test_connections_beyond_the_cap_get_429(tiny_reranker_dir: Path) -> None:
    with serving(["--model-path", str(tiny_reranker_dir), "--max-connections", "3"]) as url:
        held = [connect(url) for _ in range(3)]
        time.sleep(0.2)
        with connect(url) as extra:
            status, body = read_response(extra, timeout=10)
        assert status == 429 and "RERANK_MAX_CONNECTIONS" in str(body["message"])
        for sock in held:
            sock.close()
        time.sleep(0.3)
        assert httpx.get(url + "/health", timeout=10).status_code == 200


def test_chunk_heavy_requests_are_charged_for_their_chunks(tiny_reranker_dir: Path) -> None:
    """30 concurrent requests of one long document with many chunks each: the queue bound of 64
    model items admits about one at a time, the rest get 429, and memory is not spent on them."""
    long_doc = " ".join(["paris berlin capital france germany cats dogs bread flour water"] * 400)
    body = {"query": "capital " * 40, "documents": [long_doc], "max_chunks_per_doc": 1000}
    args = ["--model-path", str(tiny_reranker_dir), "--max-queue-pairs", "64", "--cache-mb", "0"]
    with serving(args) as url:
        statuses: list[int] = []

        def one() -> None:
            statuses.append(httpx.post(url + "/v1/rerank", json=body, timeout=60).status_code)

        threads = [threading.Thread(target=one) for _ in range(30)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert len(statuses) == 30 and set(statuses) <= {200, 429}
    assert statuses.count(429) >= 20 and statuses.count(200) >= 1


def test_a_request_cut_by_the_shutdown_grace_gets_a_json_503(minilm_cross_encoder_dir: Path) -> None:
    """MiniLM scoring 1,000 windows of 512 tokens takes far longer than the 1 s grace."""
    proc, url = start(["--model-path", str(minilm_cross_encoder_dir), "--shutdown-grace", "1", "--cache-mb", "0",
                       "--max-request-items", "100000", "--max-queue-pairs", "100000",
                       "--max-request-tokens", "100000000", "--max-queue-tokens", "100000000"])  # fmt: skip
    try:
        wait_ready(proc, url)
        docs = [" ".join(["paris berlin capital france germany cats dogs bread"] * 60) + f" {i}" for i in range(500)]
        result: list[httpx.Response] = []
        body = {"query": "q", "documents": docs, "max_chunks_per_doc": 10}
        worker = threading.Thread(target=lambda: result.append(httpx.post(url + "/v1/rerank", json=body, timeout=60)))
        worker.start()
        time.sleep(1.0)
        assert not result, "the request must still be running when SIGTERM arrives"
        proc.send_signal(signal.SIGTERM)
        worker.join(timeout=30)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    [response] = result
    assert response.status_code == 503, output(proc)[-2000:]
    assert response.headers["content-type"] == "application/json"
    assert "shutting down" in response.json()["message"]


def test_a_client_that_stops_reading_its_answer_is_dropped(tmp_path: Path) -> None:
    """Three clients ask for ~8 MB answers and never read them, filling a cap of 3: their
    connections are dropped once the unsent bytes stop shrinking, so others get in again."""
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL_PATH", "RERANK_MODEL_PATH")}
    args = ["--max-connections", "3", "--send-timeout", "1", "--keep-alive-timeout", "1"]
    body = json.dumps({"input": ["a"] * 1000, "encoding_format": "float"}).encode()
    request = (b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
    with serving(args, env=env) as url:
        host, port = url.removeprefix("http://").split(":")
        readers = []
        for _ in range(3):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window, never drained
            sock.connect((host, int(port)))
            sock.sendall(request)
            readers.append(sock)
        deadline = time.monotonic() + 60
        statuses = []
        while time.monotonic() < deadline:
            statuses.append(httpx.get(url + "/health", timeout=10).status_code)
            if statuses[-1] == 200 and 429 in statuses:
                break
            time.sleep(0.5)
        for sock in readers:
            sock.close()
        assert 429 in statuses, "the silent clients held every connection for a while"
        assert statuses[-1] == 200, "and were dropped, so others got in again"


def test_a_malformed_request_gets_a_json_400(tiny_reranker_dir: Path) -> None:
    with serving(["--model-path", str(tiny_reranker_dir)]) as url, connect(url) as sock:
        sock.sendall(b"GARBAGE\r\n\r\n")
        status, body = read_response(sock, timeout=10)
        assert status == 400 and body["type"] == "invalid_http" and "malformed HTTP request" in str(body["message"])
