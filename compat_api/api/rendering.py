"""Large answers rendered off the event loop, one vector at a time.

A JSON encoder renders a whole answer in one call that holds the interpreter lock: millions of
floats (a vector per token) would stall the event loop, and with it health checks and every
other request, for seconds. Here the answer is rendered on a worker thread, each vector by its
own call, so the loop gets its turn between vectors.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
from fastapi.responses import Response


def _write(value: Any, parts: list[str]) -> None:
    if isinstance(value, dict):
        parts.append("{")
        for i, (key, item) in enumerate(value.items()):
            parts.append(("," if i else "") + json.dumps(str(key)) + ":")
            _write(item, parts)
        parts.append("}")
        return
    nested = isinstance(value, np.ndarray) and value.ndim > 1
    nested = nested or (isinstance(value, list) and bool(value) and isinstance(value[0], list | np.ndarray | dict))
    if not nested:
        parts.append(json.dumps(value.tolist() if isinstance(value, np.ndarray) else value,
                                separators=(",", ":"), allow_nan=False))  # fmt: skip
        return
    parts.append("[")
    for i, item in enumerate(value):
        if i:
            parts.append(",")
        _write(item, parts)
    parts.append("]")


def render(value: Any) -> bytes:
    """`value` (objects, lists and numpy arrays of numbers, nested) as compact JSON."""
    parts: list[str] = []
    _write(value, parts)
    return "".join(parts).encode()


async def vectors_response(value: Any, status_code: int = 200) -> Response:
    """A JSON answer holding vectors, rendered on a worker thread a vector at a time."""
    return Response(await asyncio.to_thread(render, value), status_code=status_code, media_type="application/json")
