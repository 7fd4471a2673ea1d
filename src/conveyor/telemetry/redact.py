"""Redaction of sensitive fields, and conversion of signal values to plain JSON data."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..signals import ErrorInfo

REDACTED = "[REDACTED]"
_SCALARS = frozenset({str, int, float, bool, type(None), ErrorInfo})

DEFAULT_REDACT: tuple[str, ...] = (
    "password", "passwd", "secret", "token", "api_key", "apikey", "authorization",
    "cookie", "session", "private_key", "credit_card", "card_number", "cvv", "ssn",
)
"""Field names redacted when ``Telemetry(redact=...)`` is not given."""


class Redactor:
    """Replaces the values of sensitive fields with ``"[REDACTED]"``.

    A field is sensitive when its name, lower-cased with ``-`` read as ``_``,
    equals one of ``names`` or ends with ``_`` plus one of them: ``"token"``
    covers ``token``, ``access_token`` and ``X-Auth-Token``, not ``tokens``.
    Dicts, lists and tuples are walked recursively; the input is never mutated
    and is returned as is when nothing needed redacting.
    """

    __slots__ = ("_cache", "names")

    def __init__(self, names: Iterable[str] = DEFAULT_REDACT) -> None:
        self.names = frozenset(n.lower().replace("-", "_") for n in names)
        self._cache: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.names)

    def merged(self, names: Iterable[str]) -> Redactor:
        """A redactor for these names and ``names``."""
        return Redactor([*self.names, *names])

    def sensitive(self, field: str) -> bool:
        """True when values of ``field`` must not be shown."""
        hit = self._cache.get(field)
        if hit is None:
            norm = field.lower().replace("-", "_")
            hit = norm in self.names or any(norm.endswith("_" + n) for n in self.names)
            if len(self._cache) < 4096:
                self._cache[field] = hit
        return hit

    def mapping(self, data: Mapping[str, Any]) -> Mapping[str, Any]:
        """``data`` with sensitive values replaced (a copy only when something changed)."""
        if not self.names:
            return data
        out: dict[str, Any] | None = None
        for key, value in data.items():
            new = REDACTED if self.sensitive(key) else self.value(value)
            if new is not value:
                if out is None:
                    out = dict(data)
                out[key] = new
        return data if out is None else out

    def value(self, value: Any) -> Any:
        """``value`` with sensitive fields of nested dicts redacted."""
        if type(value) in _SCALARS:
            return value
        if isinstance(value, Mapping):
            return self.mapping(value)
        if isinstance(value, list | tuple):
            items = [self.value(v) for v in value]
            if any(a is not b for a, b in zip(items, value, strict=True)):
                return items
        return value


def plain(value: Any) -> Any:
    """A JSON-ready form of a signal value: errors become ``{type, message, traceback}``."""
    if isinstance(value, ErrorInfo):
        return value.to_dict()
    return value


def plain_mapping(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` as a dict of JSON-ready values."""
    return {k: plain(v) for k, v in data.items()}
