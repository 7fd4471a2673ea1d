"""Terminal rendering of stats and dead letters for the CLI."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table

from .brokers import DeadLetter, QueueStats


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds") if ts else ""


def dead_letter_dict(d: DeadLetter) -> dict[str, Any]:
    """A dead letter as JSON-ready data; the body is shown as text."""
    return {
        "id": d.id,
        "queue": d.queue,
        "type": d.type,
        "reason": d.reason,
        "attempts": d.attempts,
        "error_type": d.error_type,
        "error_message": d.error_message,
        "traceback": d.traceback,
        "dead_at": _iso(d.dead_at),
        "created_at": _iso(d.created_at),
        **_body(d.body),
    }


def _body(body: bytes) -> dict[str, str]:
    """The body as text when it is UTF-8, else base64, so no byte is lost."""
    try:
        return {"body": body.decode("utf-8"), "body_encoding": "utf-8"}
    except UnicodeDecodeError:
        return {"body": base64.b64encode(body).decode("ascii"), "body_encoding": "base64"}


def consumers_cell(n: int | None) -> str:
    """How the ``consumers`` column shows a count: ``none`` for 0, ``unknown`` without the registry."""
    if n is None:
        return "unknown"
    return "none" if n == 0 else str(n)


def stats_table(
    stats: dict[str, QueueStats],
    console: Console | None = None,
    *,
    consumers: Mapping[str, int] | None = None,
    unknown_because: str = "",
    broker: str = "",
) -> None:
    """The queue table, with live consumers per queue (``consumers=None``: unknown, and
    ``unknown_because`` says why) and the broker it was read from."""
    out = console or Console()
    if broker:
        out.print(f"broker: {broker}", markup=False, highlight=False, soft_wrap=True)
    table = Table(title="queues")
    for col in ("queue", "ready", "delayed", "in_flight", "dead", "oldest_age_s", "consumers"):
        table.add_column(col, justify="left" if col == "queue" else "right")
    for name, s in stats.items():
        n = None if consumers is None else consumers.get(name, 0)
        table.add_row(
            name, str(s.ready), str(s.delayed), str(s.in_flight), str(s.dead), f"{s.oldest_age_s:.1f}",
            consumers_cell(n),
        )  # fmt: skip
    out.print(table)
    for note in stats_footnotes(stats, consumers, unknown_because):
        out.print(note, markup=False, highlight=False, soft_wrap=True)


def stats_footnotes(
    stats: dict[str, QueueStats], consumers: Mapping[str, int] | None, unknown_because: str = ""
) -> list[str]:
    """What the ``consumers`` column means for the operator, as sentences."""
    if consumers is None:
        return ["* live consumers are unknown" + (f": {unknown_because}" if unknown_because else "")]
    idle = [q for q in stats if consumers.get(q, 0) == 0]
    if not idle:
        return []
    names = ", ".join(idle)
    return [f"* no live worker consumes {names}: jobs sent there wait until one does (conveyor worker APP -q QUEUE)"]


def dlq_table(letters: list[DeadLetter], console: Console | None = None) -> None:
    table = Table(title=f"dead letters ({len(letters)})")
    # Whole ids, never cut, however narrow the terminal: they are what `dlq retry` takes.
    table.add_column("id", no_wrap=True, min_width=max((len(d.id) for d in letters), default=2))
    for col in ("queue", "type", "reason", "attempts", "error", "dead_at"):
        table.add_column(col)
    for d in letters:
        error = f"{d.error_type}: {d.error_message}" if d.error_type else ""
        table.add_row(d.id, d.queue, d.type, d.reason, str(d.attempts), error[:80], _iso(d.dead_at))
    (console or Console()).print(table)
