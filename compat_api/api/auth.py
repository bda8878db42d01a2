"""API keys: with RERANK_API_KEYS set, every route but the open ones needs `Authorization: Bearer <key>`.

The key is checked by `ApiKeyMiddleware` from the request's headers alone, before its body is
read or parsed, so an unauthenticated client cannot make the server read, parse or validate
anything. Open with keys set: `/health` (status only; its detail needs a key), the Swagger UI
and its assets, `/openapi.json`, and the admin routes (which need the admin key instead).
`/metrics` needs a key. With no key configured the `Authorization` header is ignored entirely
(Dify sends `Bearer None`, FastGPT may send an empty `Bearer `). Keys are compared in constant
time. The scheme is declared to OpenAPI, so Swagger UI's Authorize button sends the key.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from compat_api.api.errors import ErrorBody, refuse

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="apiKey",
    description="One of the keys in RERANK_API_KEYS (only needed when keys are configured).",
)

OPEN_PATHS = frozenset({"/", "/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json",
                        "/v1/cluster/auth"})  # fmt: skip
OPEN_PREFIXES = ("/static-offline-docs/", "/admin/")
MISSING = "missing API key: send 'Authorization: Bearer <key>' with a key from RERANK_API_KEYS"
INVALID = "invalid API key: send 'Authorization: Bearer <key>' with a key from RERANK_API_KEYS"


def key_matches(token: str, keys: list[str]) -> bool:
    """Constant-time comparison against every configured key."""
    supplied = token.encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(supplied, key.encode())
    return matched


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (scheme case-insensitive)."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def has_valid_key(request: Request) -> bool:
    """Whether the request carries one of the keys (true when none are configured)."""
    keys: list[str] = request.app.state.settings.api_key_list
    if not keys:
        return True
    token = bearer_token(request.headers.get("authorization"))
    return token is not None and key_matches(token, keys)


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


class ApiKeyMiddleware:
    """Refuses a request without a valid key with 401 before anything reads its body."""

    def __init__(self, app: ASGIApp, keys: list[str]) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None)
        token = bearer_token(header)
        if token is not None and key_matches(token, self.keys):
            await self.app(scope, receive, send)
            return
        # The body (if any) is left unread, so the connection cannot be reused: `refuse` closes it.
        await refuse(scope, receive, send, 401, MISSING if token is None else INVALID, "unauthorized", None,
                     {"www-authenticate": "Bearer"})  # fmt: skip


async def require_api_key(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    """Declares the scheme to OpenAPI; the middleware has already checked the key (checked again here)."""
    if not has_valid_key(request):
        raise HTTPException(
            status_code=401, detail=MISSING if credentials is None else INVALID, headers={"WWW-Authenticate": "Bearer"}
        )


API_KEY = [Depends(require_api_key)]


def unauthorized(body: Any = ErrorBody) -> dict[int | str, dict[str, Any]]:
    """The 401 of a route's OpenAPI responses, in the error body of the route's dialect."""
    return {401: {"model": body, "description": "API keys are configured and the request carries none of them"}}


UNAUTHORIZED = unauthorized()
