"""Connection-level guards on uvicorn's HTTP/1.1 protocol: a header deadline and a connection cap.

uvicorn reads a request's line and headers for as long as the client cares to send them, and
accepts any number of connections. Here a connection must deliver a complete request head
within `RERANK_HEADER_TIMEOUT` seconds of opening (or, on a kept-alive connection, of its next
request's first byte), otherwise it is answered 408 and closed; and beyond
`RERANK_MAX_CONNECTIONS` open connections a new one is answered 429 with `Retry-After` and
closed at once. Both answers are JSON. (Bodies have their own deadline: api/middleware.py.)
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol


def raw_response(status: int, reason: str, message: str, kind: str, extra: str = "") -> bytes:
    body = json.dumps({"detail": message, "message": message, "type": kind}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"{extra}connection: close\r\n\r\n")  # fmt: skip
    return head.encode() + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline and a connection cap (class attributes)."""

    header_timeout: float = 10.0
    max_connections: int = 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            message = f"too many open connections (limit {self.max_connections}, RERANK_MAX_CONNECTIONS); retry shortly"
            transport.write(raw_response(429, "Too Many Requests", message, "overloaded", "retry-after: 1\r\n"))
            transport.close()
            return
        self._arm()

    def _waiting_for_head(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def data_received(self, data: bytes) -> None:
        waiting = self._waiting_for_head()
        if waiting:
            self._arm()
        super().data_received(data)
        if not self._waiting_for_head():
            self._disarm()

    def _head_timed_out(self) -> None:
        self._header_timer = None
        if self._waiting_for_head() and not self.transport.is_closing():
            message = f"request headers not received within {self.header_timeout:g}s (RERANK_HEADER_TIMEOUT)"
            self.transport.write(raw_response(408, "Request Timeout", message, "timeout"))
            self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._disarm()  # an idle kept-alive connection is uvicorn's keep-alive timeout's business

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def guarded_protocol(header_timeout: float, max_connections: int) -> type[GuardedH11Protocol]:
    """The protocol class for one server's settings."""
    return type("ServerH11Protocol", (GuardedH11Protocol,),
                {"header_timeout": header_timeout, "max_connections": max_connections})  # fmt: skip
