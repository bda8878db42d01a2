"""ASGI middleware for request bodies: a size limit, a read deadline, JSON whatever the Content-Type
says, and the per-request limits the wire models enforce.

A body over the limit is refused with 413 as soon as its declared length (or its bytes so far)
exceed it, before anything parses it; a body that does not arrive within `RERANK_BODY_TIMEOUT`
seconds is refused with 408 and its connection closed (a client trickling bytes cannot hold a
buffer forever). `curl -d '{...}'` sends `application/x-www-form-urlencoded`, some scripts send
no or a `text/plain` type; the routes only ever take JSON, so any body whose type is not
`application/json` or `application/*+json` is parsed as JSON, and one that is not JSON gets the
usual 400.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from compat_api.api.errors import refuse
from compat_api.api.wire import DOCUMENT_LIMIT

_JSON = b"application/json"


def is_json_type(content_type: bytes) -> bool:
    """`application/json` or `application/<anything>+json`, parameters ignored."""
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == _JSON or (media.startswith(b"application/") and media.endswith(b"+json"))


class BodyMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float, max_documents: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.max_documents = max_documents

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        token = DOCUMENT_LIMIT.set(self.max_documents)
        try:
            await self._call(scope, receive, send)
        finally:
            DOCUMENT_LIMIT.reset(token)

    async def _call(self, scope: Scope, receive: Receive, send: Send) -> None:
        original = next((v for k, v in scope["headers"] if k == b"content-type"), b"")
        if not is_json_type(original):
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope = dict(scope, headers=[*headers, (b"content-type", _JSON)])
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(scope, receive, send, declared.decode())
            return
        # Read the body here, counting, so that a chunked upload cannot outgrow the limit either.
        chunks: list[bytes] = []
        size = 0
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                late = f"body: not received within {self.timeout:g}s (RERANK_BODY_TIMEOUT)"
                await refuse(scope, receive, send, 408, late, "timeout")
                return
            if message["type"] != "http.request":
                await self.app(scope, _replay([], message, receive), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(scope, receive, send, f"more than {self.max_bytes}")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(chunks, None, receive), send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, size: str) -> None:
        message = f"body: {size} bytes exceed the limit of {self.max_bytes} bytes (RERANK_MAX_BODY_BYTES)"
        await refuse(scope, receive, send, 413, message, "too_large")


def _replay(chunks: list[bytes], first: Message | None, receive: Receive) -> Receive:
    """A `receive` that hands out the buffered body once, then defers to the real one."""
    pending: list[Message] = [first] if first else [{"type": "http.request", "body": b"".join(chunks),
                                                     "more_body": False}]  # fmt: skip

    async def replayed() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replayed


class StartupErrorMiddleware:
    """A model that cannot load stops start-up with one clear line (`app.state.startup_error`)
    instead of the framework's traceback of the lifespan."""

    def __init__(self, app: ASGIApp, state: Any) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def clean(message: Message) -> None:
            clear = getattr(self.state, "startup_error", None)
            if message["type"] == "lifespan.startup.failed" and clear:
                message = {**message, "message": clear}
            await send(message)

        await self.app(scope, receive, clean)
