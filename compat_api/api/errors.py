"""The one place where errors become HTTP: core errors to status codes, each dialect's error body.

Every error body carries `detail` and `message` (Jina, LangChain, LlamaIndex and Xinference read
`detail`; Cohere reads `message`) plus the `field` at fault and a machine-readable `type`.
The TEI dialect gets TEI's body `{"error", "error_type"}` and TEI's status codes instead
(text-embeddings-inference router: 400 empty, 413/422 validation, 429 overloaded, 424 backend,
503 unhealthy). A route marks its dialect with `set_dialect(request, TEI)`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match
from starlette.types import Receive, Scope, Send

from compat_api.api.wire import TOO_MANY
from compat_api.core.errors import (
    CoreError,
    DeadlineExceeded,
    EmptyInput,
    InvalidInput,
    LimitExceeded,
    ModelFailure,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    Overloaded,
    RequestCancelled,
    WrongFamily,
)

log = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    """The error body of every route: `detail` and `message` say the same readable sentence."""

    detail: str
    message: str
    type: str
    field: str | None = None


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in (
        (400, "Malformed JSON or an empty document list"),
        (404, "Unknown model"),
        (413, "A request limit was exceeded (documents, characters, tokens, body bytes)"),
        (422, "A field has the wrong type or value"),
        (429, "The model's queue is full; see Retry-After"),
        (500, "The model failed while scoring"),
        (503, "The model is not ready"),
        (504, "The request took longer than RERANK_REQUEST_TIMEOUT"),
    )
}


class TeiErrorBody(BaseModel):
    """text-embeddings-inference's error body."""

    error: str
    error_type: str


class OpenAIError(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorBody(BaseModel):
    """OpenAI's error body (openai SDKs, LocalAI read `error`), plus `detail` (Jina, Xinference)."""

    error: OpenAIError
    detail: str


DEFAULT = "default"
TEI = "tei"
LEGACY = "legacy"
COHERE = "cohere"  # Cohere / Jina shape on the shared /rerank route
COHERE_V1 = "cohere-v1"
COHERE_V2 = "cohere-v2"
OPENAI = "openai"  # OpenAI-shaped embeddings
SIBLING = "sibling"  # the seed's sibling embedding template (fc-embedding-api)
DIALECTS = frozenset({DEFAULT, TEI, LEGACY, COHERE, COHERE_V1, COHERE_V2, OPENAI, SIBLING})

# (error class, status, TEI status, type) — the first match wins, so subclasses come first.
STATUS_OF: Sequence[tuple[type[CoreError], int, int, str]] = (
    (EmptyInput, 400, 400, "empty"),
    (WrongFamily, 400, 400, "wrong_model_family"),
    (LimitExceeded, 413, 413, "validation"),
    (InvalidInput, 422, 422, "validation"),
    (ModelNotFound, 404, 404, "model_not_found"),
    (Overloaded, 429, 429, "overloaded"),
    (ModelNotReady, 503, 503, "unhealthy"),
    (ModelLoadError, 503, 503, "unhealthy"),
    (ModelFailure, 500, 424, "backend"),
    (DeadlineExceeded, 504, 504, "timeout"),
    (RequestCancelled, 499, 499, "cancelled"),  # nginx's "client closed request"; nobody is listening
)


def status_of(exc: CoreError, dialect: str = DEFAULT) -> tuple[int, str]:
    for cls, status, tei_status, kind in STATUS_OF:
        if isinstance(exc, cls):
            return (tei_status if dialect == TEI else status), kind
    return 500, "internal"


def set_dialect(request: Request, dialect: str) -> None:
    """Mark the request's dialect: its errors are rendered in that dialect's body, and metrics
    and access logs are labelled with it."""
    request.state.dialect = dialect


def dialect(name: str) -> Callable[[Request], None]:
    """A route dependency that marks every request of the route with a dialect."""

    def mark(request: Request) -> None:
        set_dialect(request, name)

    mark.dialect = name  # type: ignore[attr-defined]  # read back when the body fails before dependencies run
    return mark


def error_response(
    status: int,
    message: str,
    kind: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
    dialect: str = DEFAULT,
) -> JSONResponse:
    body: BaseModel
    if dialect == TEI:
        body = TeiErrorBody(error=message, error_type=kind)
    elif dialect == OPENAI:
        error_type = "invalid_request_error" if status < 500 else "server_error"
        body = OpenAIErrorBody(error=OpenAIError(message=message, type=error_type, param=field, code=kind),
                               detail=message)  # fmt: skip
    else:
        body = ErrorBody(detail=message, message=message, type=kind, field=field)
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _marker(route: Any) -> str:
    """The dialect a route's `dialect(...)` dependency marks (the default where it has none)."""
    for dependency in getattr(route, "dependencies", ()):
        name = getattr(dependency.dependency, "dialect", None)
        if name is not None:
            return str(name)
    return DEFAULT


def _dialect(request: Request) -> str:
    """The request's dialect: as its route marked it, or (a body that could not be parsed stops
    before the route's dependencies run) as the matched route's marker says."""
    marked = getattr(request.state, "dialect", None)
    if marked is not None:
        return str(marked)
    return _marker(request.scope.get("route"))


def route_dialects(routers: Sequence[APIRouter]) -> list[tuple[BaseRoute, str]]:
    """Each route of `routers` with the dialect it marks: the app keeps them as
    `state.dialect_routes` for `scope_dialect`."""
    return [(route, _marker(route)) for router in routers for route in router.routes]


def scope_dialect(scope: Scope) -> str:
    """The dialect of the route a request is headed for, for errors answered by middleware before
    routing (body size and deadline, API key): a path shared by several dialects gets the default."""
    state = getattr(scope.get("app"), "state", None)
    for route, marked in getattr(state, "dialect_routes", ()):
        if route.matches(scope)[0] is Match.FULL:
            return str(marked)
    return DEFAULT


async def refuse(scope: Scope, receive: Receive, send: Send, status: int, message: str, kind: str,
                 field: str | None = "body", headers: dict[str, str] | None = None) -> None:  # fmt: skip
    """An error answered by middleware in the error body of the dialect the request is headed for,
    closing the connection (the body was not all read)."""
    response = error_response(status, message, kind, field, {**(headers or {}), "connection": "close"},
                              scope_dialect(scope))  # fmt: skip
    await response(scope, receive, send)


# The error type of a /rerank body that matches none of the accepted shapes.
SHAPE_ERROR = "rerank_body_shape"

# The tag under which the shared /rerank route parses a TEI body (see api/rerank.py).
TEI_TAG = "TeiRerankRequest"

# Union-member tags pydantic puts into error locations ('str', 'DocumentObject', 'function-after[...]').
_TYPE_TAG = re.compile(r"^(str|int|float|bool|list|dict|none|[A-Z]\w*|[\w-]+\[.*\])$")


def field_path(loc: Sequence[str | int]) -> str:
    """`("body", "documents", 0, "str")` -> `documents[0]`."""
    parts: list[str] = []
    for part in loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif _TYPE_TAG.match(part):
            continue
        else:
            parts.append(("." if parts else "") + part)
    return "".join(parts) or "body"


MAX_REPORTED = 5  # a validation error names at most this many fields
MAX_MESSAGE = 200  # characters of one field's message


def describe_validation(errors: Sequence[Any]) -> tuple[int, str, str]:
    """Status, readable message and first field of a request validation failure.

    At most MAX_REPORTED fields are named (with a count of the rest), so that a body of many
    bad items answers a short error; a list over the document limit is 413 like any limit.
    """
    if any(e.get("type") == "json_invalid" for e in errors):
        err = next(e for e in errors if e.get("type") == "json_invalid")
        reason = (err.get("ctx") or {}).get("error", "invalid JSON")
        return 400, f"body: malformed JSON: {reason}", "body"
    seen: dict[str, str] = {}
    status = 422
    for err in errors:
        loc = err.get("loc", ())
        path = field_path(loc)
        if err.get("type") == TOO_MANY:
            status = 413
        if tuple(loc) == ("body",) and err.get("type") == "missing":
            path, text = "body", "a JSON request body is required"
        elif err.get("type") == SHAPE_ERROR:
            path, text = "body", str(err.get("msg"))
        elif tuple(loc) == ("body",) and err.get("type") in ("model_attributes_type", "dict_type"):
            path, text = "body", "the request body must be a JSON object"
        else:
            text = str(err.get("msg", "invalid value"))
        if path not in seen and len(seen) >= MAX_REPORTED:
            break
        seen.setdefault(path, text[:MAX_MESSAGE])
    named = "; ".join(f"{path}: {msg}" for path, msg in seen.items())
    rest = len({field_path(e.get("loc", ())) for e in errors}) - len(seen)
    message = f"{named}; and {rest} more" if rest > 0 else named
    return status, message, next(iter(seen), "body")


async def _on_core_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CoreError)
    dialect = _dialect(request)
    status, kind = status_of(exc, dialect)
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Overloaded) else None
    if status >= 500 or status == 424:
        log.warning("%s %s -> %d: %s", request.method, request.url.path, status, exc.message)
    return error_response(status, exc.message, kind, exc.field, headers, dialect)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    status, message, field = describe_validation(errors)
    dialect = _dialect(request)
    if any(TEI_TAG in err.get("loc", ()) for err in errors):
        dialect = TEI  # the shared /rerank route parsed a TEI-shaped body
        set_dialect(request, TEI)
    kind = {422: "validation", 413: "validation"}.get(status, "invalid_json")
    return error_response(status, message, kind, field, None, dialect)


_FASTAPI_BODY_ERROR = "There was an error parsing the body"


def body_error(cause: BaseException | None) -> str:
    """Why a body that FastAPI could not parse was refused, from the parser's own exception."""
    if isinstance(cause, RecursionError):
        return "body: malformed JSON: nested too deeply"
    if isinstance(cause, ValueError) and "digits" in str(cause):
        return "body: malformed JSON: a number is too large (more than 4300 digits)"
    return "body: malformed JSON: the body is not UTF-8 JSON text"


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    if exc.status_code == 400 and detail == _FASTAPI_BODY_ERROR:  # e.g. bytes that are not UTF-8
        return error_response(400, body_error(exc.__cause__), "invalid_json", "body", None, _dialect(request))
    kinds = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}
    headers = dict(exc.headers) if exc.headers else None
    kind = kinds.get(exc.status_code, "http")
    return error_response(exc.status_code, detail, kind, None, headers, _dialect(request))


def unexpected_error(dialect: str = DEFAULT) -> JSONResponse:
    """The answer to a bug (not a client error): JSON, never text; the caller logs it once."""
    return error_response(500, "internal error; see the server log (request id in X-Request-ID)", "internal",
                          None, None, dialect)  # fmt: skip


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(CoreError, _on_core_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
