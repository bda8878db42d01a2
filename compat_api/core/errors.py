"""Typed errors the core raises; the API layer maps each to a status code and a dialect's body."""

from __future__ import annotations


class CoreError(Exception):
    """Base of every error the core raises on purpose. `field` names the input at fault, if any."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidInput(CoreError):
    """The request is well-formed JSON but asks for something that cannot be done."""


class EmptyInput(InvalidInput):
    """A list that must hold at least one item is empty."""


class LimitExceeded(InvalidInput):
    """A request is larger than a configured limit (documents, characters, tokens, bytes)."""


class WrongFamily(InvalidInput):
    """The request names a model of the other family (a reranker on an embedding route, or the reverse)."""


class ModelNotFound(CoreError):
    """The requested model name is not served here."""


class ModelNotReady(CoreError):
    """The model is loading, failed to load, or the server is shutting down."""


class Overloaded(CoreError):
    """The model's queue is full; the caller should retry after `retry_after` seconds."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeadlineExceeded(CoreError):
    """The request took longer than its deadline; its pending work was dropped."""


class RequestCancelled(CoreError):
    """The caller went away before the answer was ready; its pending work was dropped."""


class ModelFailure(CoreError):
    """The model raised while scoring (out of memory, a broken backend); not the client's fault."""


class ModelLoadError(CoreError):
    """A configured model cannot be loaded; raised at start-up, never silently replaced."""
