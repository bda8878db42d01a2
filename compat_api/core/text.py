"""Text hygiene shared by the core and the API: what may reach a tokenizer, a message or a log line."""

from __future__ import annotations

import re
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
ECHO_LIMIT = 64


def utf8_safe(text: str) -> str:
    """JSON may carry lone surrogates (`"\\ud800"`), which no tokenizer takes: they become U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    return text


def repaired(value: Any) -> Any:
    """A JSON value a client sent, fit to be sent back: every string (keys too) `utf8_safe`, the
    same repair the model's copy of a text gets; other values as they are."""
    if isinstance(value, str):
        return utf8_safe(value)
    if isinstance(value, dict):
        return {utf8_safe(k): repaired(v) for k, v in value.items()}
    if isinstance(value, list):
        return [repaired(v) for v in value]
    return value


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 256 else f"\\u{code:04x}"


def clip(text: str, limit: int = ECHO_LIMIT) -> str:
    """A client-supplied string as it may appear in a message: control characters escaped, at
    most `limit` characters, with a note of how much was left out."""
    shown = _CONTROL.sub(_escape, text[:limit])
    shown = utf8_safe(shown)
    return shown if len(text) <= limit else f"{shown}… ({len(text)} characters)"
