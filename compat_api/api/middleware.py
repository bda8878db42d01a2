"""ASGI middleware for request bodies: a size limit, and JSON whatever the Content-Type says.

A body over the limit is refused with 413 as soon as its declared length (or its bytes so far)
exceed it, before anything parses it. `curl -d '{...}'` sends
`application/x-www-form-urlencoded`, some scripts send no or a `text/plain` type; the routes
only ever take JSON, so the body is parsed as JSON and one that is not gets the usual 400.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_JSON = b"application/json"


class BodyMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _too_large(self, send: Send, size: str) -> None:
        message = f"body: {size} bytes exceed the limit of {self.max_bytes} bytes (RERANK_MAX_BODY_BYTES)"
        body = json.dumps({"detail": message, "message": message, "type": "too_large", "field": "body"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", _JSON), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
        original = next((v for k, v in scope["headers"] if k == b"content-type"), b"")
        if b"json" not in original.lower():
            scope = dict(scope, headers=[*headers, (b"content-type", _JSON)])
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(send, declared.decode())
            return
        # Read the body here, counting, so that a chunked upload cannot outgrow the limit either.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([], message, receive), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(send, f"more than {self.max_bytes}")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(chunks, None, receive), send)


def _replay(chunks: list[bytes], first: Message | None, receive: Receive) -> Receive:
    """A `receive` that hands out the buffered body once, then defers to the real one."""
    pending: list[Message] = [first] if first else [{"type": "http.request", "body": b"".join(chunks),
                                                     "more_body": False}]  # fmt: skip

    async def replayed() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replayed
