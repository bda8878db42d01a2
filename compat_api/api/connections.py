"""Connection-level guards on uvicorn's HTTP/1.1 protocol: a header deadline, a send deadline and a
connection cap.

uvicorn reads a request's line and headers for as long as the client cares to send them, waits
for a client to read its answer for as long as it takes, and accepts any number of connections.
Here a connection must deliver a complete request head within `RERANK_HEADER_TIMEOUT` seconds of
opening (or, on a kept-alive connection, of its next request's first byte), otherwise it is
answered 408 and closed; a connection whose client stops reading an answer (the bytes waiting to
be sent do not shrink for `RERANK_SEND_TIMEOUT` seconds) is dropped, with the memory the answer
held; and beyond `RERANK_MAX_CONNECTIONS` open connections a new one is answered 429 with
`Retry-After` and closed at once. The answers, and the 400 of a malformed request, are JSON.
(Bodies have their own deadline: api/middleware.py.)
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
    send_timeout: float = 60.0
    max_connections: int = 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._unsent = 0

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
        if self.transport.get_write_buffer_size():
            self._watch_send()  # an answer not yet sent (closing waits for it): it must make progress

    def pause_writing(self) -> None:
        super().pause_writing()
        self._watch_send()

    def _watch_send(self) -> None:
        if self._send_timer is None:
            self._unsent = self.transport.get_write_buffer_size()
            self._send_timer = self.loop.call_later(self.send_timeout, self._check_send)

    def _check_send(self) -> None:
        """Drop the connection if its unsent bytes did not shrink since the last look."""
        self._send_timer = None
        unsent = self.transport.get_write_buffer_size()
        if not unsent:
            return
        if unsent < self._unsent:
            self._watch_send()  # a slow reader, still reading
            return
        self.transport.abort()  # the client stopped reading: free the answer and the connection

    def send_400_response(self, msg: str) -> None:
        """A request uvicorn cannot parse (bad framing, a garbage request line): JSON, like every refusal."""
        self.transport.write(raw_response(400, "Bad Request", f"malformed HTTP request: {msg}", "invalid_http"))
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        super().connection_lost(exc)


def guarded_protocol(
    header_timeout: float, max_connections: int, send_timeout: float = 60.0
) -> type[GuardedH11Protocol]:
    """The protocol class for one server's settings."""
    return type("ServerH11Protocol", (GuardedH11Protocol,),
                {"header_timeout": header_timeout, "max_connections": max_connections,
                 "send_timeout": send_timeout})  # fmt: skip
