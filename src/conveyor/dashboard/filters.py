"""Jinja2 environment and display filters. Autoescaping is on for every template."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import jinja2
from starlette.templating import Jinja2Templates

TEMPLATES = Path(__file__).parent / "templates"


def ts(value: float | str | None) -> str:
    """Epoch seconds or an ISO 8601 time as ``YYYY-MM-DD HH:MM:SS`` UTC."""
    if not value:
        return ""
    if isinstance(value, str):
        try:
            when = dt.datetime.fromisoformat(value)
        except ValueError:
            return value
        return when.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    return dt.datetime.fromtimestamp(value, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def seconds(value: float | None) -> str:
    """A duration, compact: ``850ms``, ``4.2s``, ``3m 5s``, ``2h 10m``, ``3d 4h``."""
    if value is None:
        return ""
    if value < 1:
        return f"{value * 1000:.0f}ms"
    if value < 60:
        return f"{value:.1f}s"
    s = int(value)
    for size, unit, small, small_unit in ((86400, "d", 3600, "h"), (3600, "h", 60, "m"), (60, "m", 1, "s")):
        if s >= size:
            return f"{s // size}{unit} {s % size // small}{small_unit}"
    return f"{s}s"


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"


def megabytes(value: int | None) -> str:
    return "" if value is None else f"{value / 1_048_576:.1f} MiB"


def pretty(value: Any) -> str:
    """JSON, indented (escaped by autoescape where it is shown)."""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def safe_url(url: str) -> str:
    """A broker URL without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def templates() -> Jinja2Templates:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(ts=ts, seconds=seconds, percent=percent, megabytes=megabytes, pretty=pretty)
    return Jinja2Templates(env=env)
