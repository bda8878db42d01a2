"""Request-scoped access to the app's core objects."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from compat_api.core.errors import ModelNotReady
from compat_api.core.registry import ModelRegistry


def get_registry(request: Request) -> ModelRegistry:
    registry: ModelRegistry | None = getattr(request.app.state, "registry", None)
    if registry is None:
        raise ModelNotReady("the model is still loading")
    return registry


Registry = Annotated[ModelRegistry, Depends(get_registry)]
