"""API keys: with RERANK_API_KEYS set, scoring and model routes need `Authorization: Bearer <key>`.

With no key configured the `Authorization` header is ignored entirely (Dify sends
`Bearer None`, FastGPT may send an empty `Bearer `). Keys are compared in constant time.
The scheme is declared to OpenAPI, so Swagger UI's Authorize button sends the key.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from compat_api.api.errors import ErrorBody

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="apiKey",
    description="One of the keys in RERANK_API_KEYS (only needed when keys are configured).",
)


def key_matches(token: str, keys: list[str]) -> bool:
    """Constant-time comparison against every configured key."""
    supplied = token.encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(supplied, key.encode())
    return matched


async def require_api_key(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    keys: list[str] = request.app.state.settings.api_key_list
    if not keys:
        return
    if credentials is None or not key_matches(credentials.credentials, keys):
        reason = "missing API key" if credentials is None else "invalid API key"
        raise HTTPException(
            status_code=401,
            detail=f"{reason}: send 'Authorization: Bearer <key>' with a key from RERANK_API_KEYS",
            headers={"WWW-Authenticate": "Bearer"},
        )


API_KEY = [Depends(require_api_key)]
UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "API keys are configured and the request carries none of them"}
}
