"""ASGI middleware: read every POST body as JSON, whatever Content-Type the client sent.

`curl -d '{...}'` sends `application/x-www-form-urlencoded`, some scripts send none or
`text/plain`; the rerank routes only ever take JSON, so the body is parsed as JSON and a
body that is not JSON gets the usual 400 naming the problem.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

_JSON = b"application/json"


class JsonBodyMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            original = next((v for k, v in scope["headers"] if k == b"content-type"), b"")
            if b"json" not in original.lower():
                scope = dict(scope, headers=[*headers, (b"content-type", _JSON)])
        await self.app(scope, receive, send)
