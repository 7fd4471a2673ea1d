"""Parsing of query strings and request bodies, shared by the pages and the API."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import parse_qs

from ..history.store import STATES

MAX_IDS = 1000
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_ID = re.compile(r"^[\w.:-]{1,200}$")


class BadRequest(ValueError):
    """A query or body the dashboard cannot use; the message says why."""


def parse_when(text: str | None, now: float | None = None) -> float | None:
    """A time from ``15m`` / ``2h`` / ``1d`` (that long ago), an ISO date-time (UTC
    unless it has an offset) or epoch seconds; ``None`` for an empty value."""
    text = (text or "").strip()
    if not text:
        return None
    now = time.time() if now is None else now
    m = _RELATIVE.match(text.lower())
    if m:
        return now - float(m[1]) * _UNITS[m[2]]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"not a time: {text!r} (use 15m, 2h, 1d, an ISO date-time or epoch seconds)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def _int(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number") from None
    if not low <= value <= high:
        raise BadRequest(f"{name} must be between {low} and {high}")
    return value


@dataclass(frozen=True, slots=True)
class JobQuery:
    """A job search: any of id (or prefix), type, state, queue and time range."""

    job_id: str | None = None
    job_type: str | None = None
    state: str | None = None
    queue: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int = 100

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> JobQuery:
        def text(name: str) -> str | None:
            return params.get(name, "").strip() or None

        state = text("state")
        if state is not None and state not in STATES:
            raise BadRequest(f"state must be one of {', '.join(STATES)}")
        return cls(
            job_id=text("id"),
            job_type=text("type"),
            state=state,
            queue=text("queue"),
            since=parse_when(params.get("since")),
            until=parse_when(params.get("until")),
            limit=_int(params, "limit", 100, 1, 1000),
        )

    def kwargs(self) -> dict[str, Any]:
        return asdict(self)


def limit(params: Mapping[str, str], default: int = 500) -> int:
    return _int(params, "limit", default, 1, 10_000)


def window(params: Mapping[str, str], default: int = 3600) -> int:
    """A look-back window in seconds (``window=`` seconds, 60 to 7 days)."""
    return _int(params, "window", default, 60, 7 * 86400)


def check_ids(ids: Any) -> list[str]:
    """A list of job ids from a request, checked."""
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise BadRequest("ids must be a list of job id strings")
    if len(ids) > MAX_IDS:
        raise BadRequest(f"at most {MAX_IDS} ids at once")
    for i in ids:
        if not _ID.match(i):
            raise BadRequest(f"not a job id: {i[:50]!r}")
    return list(dict.fromkeys(ids))


def json_ids(body: bytes) -> list[str]:
    """The ``ids`` list of a JSON body ``{"ids": [...]}``."""
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        raise BadRequest("the body must be JSON: {\"ids\": [...]}") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object: {\"ids\": [...]}")
    return check_ids(data.get("ids"))


def form(body: bytes) -> dict[str, list[str]]:
    """An ``application/x-www-form-urlencoded`` body."""
    return parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
