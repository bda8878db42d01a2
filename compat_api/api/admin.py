"""Admin routes: `POST /admin/models/{name}/reload` swaps in the model directory's current version.

Off unless RERANK_ADMIN_KEY is set; then only `Authorization: Bearer <admin key>` passes
(constant-time compare), whatever the API keys are.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from compat_api.api.auth import key_matches
from compat_api.api.deps import Registry
from compat_api.api.errors import ERROR_RESPONSES, ErrorBody
from compat_api.api.health import ReloadOutcome, reload_outcome
from compat_api.core.errors import InvalidInput

admin_bearer = HTTPBearer(auto_error=False, scheme_name="adminKey", description="RERANK_ADMIN_KEY")


async def require_admin_key(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(admin_bearer)]
) -> None:
    key: str = request.app.state.settings.admin_key
    if not key:
        raise HTTPException(status_code=403, detail="the admin API is off: set RERANK_ADMIN_KEY to use it")
    if credentials is None or not key_matches(credentials.credentials, [key]):
        raise HTTPException(
            status_code=401,
            detail="admin routes need 'Authorization: Bearer <RERANK_ADMIN_KEY>'",
            headers={"WWW-Authenticate": "Bearer"},
        )


RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    401: {"model": ErrorBody, "description": "Missing or wrong admin key"},
    403: {"model": ErrorBody, "description": "The admin API is off (RERANK_ADMIN_KEY unset)"},
}

router = APIRouter(tags=["admin"], dependencies=[Depends(require_admin_key)], responses=RESPONSES)


@router.post("/admin/models/{name}/reload", response_model=ReloadOutcome)
async def reload_model(name: str, registry: Registry) -> ReloadOutcome:
    """Load the model's directory again beside the running version; swap it in if it loads and scores.

    A version that fails keeps the previous one serving: 422 with the reason.
    """
    outcome = reload_outcome(await registry.reload(registry.find(name).spec.name))
    assert outcome is not None
    if not outcome.ok:
        raise InvalidInput(f"model {name!r} failed to reload; the previous version keeps serving: {outcome.error}")
    return outcome
