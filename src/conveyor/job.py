"""The job model: ids, JSON-only payloads and the wire encoding."""

from __future__ import annotations

import math
import time
from typing import Any

import msgspec
import uuid_utils

from .errors import MessageTooLarge, PayloadError

DEFAULT_MAX_MESSAGE_SIZE = 256 * 1024
"""Default limit, in bytes, of one encoded message."""


class Job(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One unit of work as it travels through a broker.

    ``attempts`` counts deliveries so far; the broker owns it, so it is not
    part of the encoded body (see :func:`encode`).
    """

    id: str
    type: str
    queue: str = "default"
    args: list[Any] = msgspec.field(default_factory=list)
    kwargs: dict[str, Any] = msgspec.field(default_factory=dict)
    attempts: int = 0
    max_attempts: int = 3
    priority: int = 0
    created_at: float = 0.0
    scheduled_at: float = 0.0
    headers: dict[str, str] = msgspec.field(default_factory=dict)


def new_id() -> str:
    """Return a new time-ordered UUIDv7 string."""
    return str(uuid_utils.uuid7())


def now() -> float:
    """Wall-clock time in seconds since the epoch."""
    return time.time()


_SCALARS = (str, int, bool, type(None))


def check_json(value: Any, path: str = "args") -> None:
    """Raise :class:`PayloadError` unless ``value`` is plain JSON.

    Plain JSON is dict (str keys), list, tuple, str, int, finite float, bool
    and None. Anything else would not survive the round trip unchanged.
    """
    if isinstance(value, _SCALARS):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise PayloadError(f"{path} is {value!r}, which JSON cannot represent")
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            check_json(item, f"{path}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise PayloadError(f"{path} has a {type(key).__name__} key {key!r}; keys must be str")
            check_json(item, f"{path}[{key!r}]")
        return
    raise PayloadError(
        f"{path} is a {type(value).__module__}.{type(value).__qualname__}, which is not JSON; "
        "pass only dict, list, str, int, float, bool or None"
    )


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Job)


def encode(job: Job, max_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> bytes:
    """Encode ``job`` to JSON bytes, enforcing ``max_size``."""
    body = _encoder.encode(job)
    if len(body) > max_size:
        raise MessageTooLarge(f"job {job.type!r} encodes to {len(body)} bytes, over the limit of {max_size} bytes")
    return body


def decode(body: bytes) -> Job:
    """Decode JSON bytes to a :class:`Job`; raises ``msgspec.DecodeError`` when malformed."""
    return _decoder.decode(body)
