"""History records as JSON-ready dicts and as terminal tables (for the CLI and dashboard)."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .store import (
    AttemptRecord,
    ErrorRecord,
    EventRecord,
    FailureCluster,
    JobRecord,
    JobTimeline,
    RetryLoops,
    RunningJobRecord,
    WorkerRecord,
)


def iso(ts: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC (``None`` stays ``None``)."""
    return None if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds")


def _short(ts: float | None) -> str:
    return "" if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _precise(ts: float | None) -> str:
    return "" if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _secs(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}s"


def error_dict(e: ErrorRecord | None, traceback: bool = False) -> dict[str, str] | None:
    if e is None:
        return None
    out = {"type": e.type, "message": e.message, "fingerprint": e.fingerprint}
    if traceback:
        out["traceback"] = e.traceback
    return out


def _error_text(e: ErrorRecord | None, width: int = 80) -> str:
    return "" if e is None else f"{e.type}: {e.message}"[:width]


def job_dict(j: JobRecord) -> dict[str, Any]:
    return {
        "id": j.id, "type": j.type, "queue": j.queue, "state": j.state, "attempts": j.attempts,
        "priority": j.priority, "enqueued_at": iso(j.enqueued_at), "scheduled_at": iso(j.scheduled_at),
        "started_at": iso(j.started_at), "finished_at": iso(j.finished_at), "updated_at": iso(j.updated_at),
        "worker_id": j.worker_id, "dead_reason": j.dead_reason, "error": error_dict(j.error),
    }  # fmt: skip


def attempt_dict(a: AttemptRecord) -> dict[str, Any]:
    return {
        "attempt": a.attempt, "worker_id": a.worker_id, "started_at": iso(a.started_at),
        "finished_at": iso(a.finished_at), "duration": a.duration, "outcome": a.outcome,
        "redelivery": a.redelivery, "error": error_dict(a.error, traceback=True),
    }  # fmt: skip


def event_dict(e: EventRecord) -> dict[str, Any]:
    return {"at": iso(e.at), "kind": e.kind, "attempt": e.attempt, "worker_id": e.worker_id, "detail": e.detail}


def timeline_dict(t: JobTimeline) -> dict[str, Any]:
    return {
        "job": job_dict(t.job),
        "attempts": [attempt_dict(a) for a in t.attempts],
        "events": [event_dict(e) for e in t.events],
    }


def cluster_dict(c: FailureCluster) -> dict[str, Any]:
    return {
        "fingerprint": c.fingerprint, "job_type": c.job_type, "count": c.count, "jobs": c.jobs, "dead": c.dead,
        "first_seen": iso(c.first_seen), "last_seen": iso(c.last_seen), "example_ids": c.example_ids,
        "error_type": c.error_type, "error_message": c.error_message, "pattern": c.pattern,
    }  # fmt: skip


def loops_dict(r: RetryLoops) -> dict[str, Any]:
    return {
        "min_attempts": r.min_attempts,
        "since": iso(r.since),
        "jobs": [
            {
                "job_id": j.job_id, "job_type": j.job_type, "queue": j.queue, "attempts": j.attempts,
                "state": j.state, "first_seen": iso(j.first_seen), "last_seen": iso(j.last_seen),
                "error": error_dict(j.error), "repeats": j.repeats,
            }
            for j in r.jobs
        ],
        "types": [
            {
                "job_type": t.job_type, "jobs": t.jobs, "attempts": t.attempts, "max_attempts": t.max_attempts,
                "error": error_dict(t.error),
            }
            for t in r.types
        ],
    }


def worker_dict(w: WorkerRecord, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    return {
        "id": w.id, "status": w.status(now), "host": w.host, "pid": w.pid, "queues": w.queues,
        "concurrency": w.concurrency, "started_at": iso(w.started_at), "last_heartbeat": iso(w.last_heartbeat),
        "heartbeat_age": round(w.heartbeat_age(now), 3), "stopped_at": iso(w.stopped_at),
        "stop_reason": w.stop_reason, "rss_bytes": w.rss_bytes, "cpu_percent": w.cpu_percent,
        "jobs": [{"id": j.id, "type": j.type, "queue": j.queue, "attempt": j.attempt, "since": iso(j.since),
                  "stuck": j.stuck, "replaced": j.replaced}
                 for j in w.jobs],
        "stuck_threads": len(w.stuck()), "threads_short": w.threads_short(),
    }  # fmt: skip


# -- tables -----------------------------------------------------------------------
def console() -> Console:
    """A console for tables: at least 160 columns wide when not writing to a terminal."""
    out = Console()
    return out if out.is_terminal else Console(width=max(out.width, 160))


class _Table(Table):
    """A table whose cells are plain text (never rich markup)."""

    def add_row(self, *cells: Any, **kwargs: Any) -> None:
        super().add_row(*(Text(c) if isinstance(c, str) else c for c in cells), **kwargs)


def _table(title: str, *columns: str) -> Table:
    table = _Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col, no_wrap=col in ("id", "job id", "fingerprint", "worker", "examples"), overflow="fold")
    return table


def _value(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def jobs_table(jobs: list[JobRecord], console: Console) -> None:
    table = _table(f"jobs ({len(jobs)})", "id", "type", "queue", "state", "att", "updated", "last error")
    for j in jobs:
        error = "" if j.state == "completed" else _error_text(j.error, 60)
        table.add_row(j.id, j.type, j.queue, j.state, str(j.attempts), _short(j.updated_at), error)
    console.print(table)


def timeline_print(t: JobTimeline, console: Console) -> None:
    j = t.job

    def say(text: str) -> None:
        console.print(text, markup=False, highlight=False, soft_wrap=True)

    say(f"job {j.id}  {j.type}  queue={j.queue}  state={j.state}  attempts={j.attempts}")
    say(f"enqueued {_short(j.enqueued_at) or '-'}  finished {_short(j.finished_at) or '-'}")
    if j.dead_reason:
        say(f"dead: {j.dead_reason}")
    table = _table("attempts", "#", "worker", "start", "end", "duration", "outcome", "redelivery", "error")
    for a in t.attempts:
        table.add_row(
            str(a.attempt), a.worker_id, _precise(a.started_at), _precise(a.finished_at), _secs(a.duration),
            a.outcome, a.redelivery, _error_text(a.error, 60),
        )  # fmt: skip
    console.print(table)
    events = _table("events", "at", "event", "attempt", "detail")
    for e in t.events:
        detail = ", ".join(f"{k}={_value(v)}" for k, v in e.detail.items() if k != "error")
        if "error" in e.detail:
            detail = (detail + ", " if detail else "") + f"{e.detail['error']['type']}: {e.detail['error']['message']}"
        events.add_row(_precise(e.at), e.kind, str(e.attempt or ""), detail[:100])
    console.print(events)
    if j.error is not None and j.error.traceback and j.state in ("dead", "failed"):
        say(f"last error (fingerprint {j.error.fingerprint}):\n{j.error.traceback.rstrip()}")


def clusters_table(clusters: list[FailureCluster], window: str, console: Console) -> None:
    table = _table(
        f"failure clusters in the last {window} ({len(clusters)})",
        "fingerprint", "job type", "count", "jobs", "dead", "first seen", "last seen", "most common error", "examples",
    )  # fmt: skip
    for c in clusters:
        table.add_row(
            c.fingerprint, c.job_type, str(c.count), str(c.jobs), str(c.dead), _short(c.first_seen),
            _short(c.last_seen), f"{c.error_type}: {c.error_message}"[:80], "\n".join(c.example_ids[:3]),
        )  # fmt: skip
    console.print(table)


def loops_table(r: RetryLoops, window: str, console: Console) -> None:
    types = _table(
        f"job types with jobs of >= {r.min_attempts} attempts in the last {window}",
        "job type", "jobs", "attempts", "max", "repeating error",
    )  # fmt: skip
    for t in r.types:
        types.add_row(t.job_type, str(t.jobs), str(t.attempts), str(t.max_attempts), _error_text(t.error))
    console.print(types)
    jobs = _table("jobs", "job id", "type", "attempts", "state", "last seen", "repeats", "repeating error")
    for j in r.jobs:
        jobs.add_row(
            j.job_id, j.job_type, str(j.attempts), j.state, _short(j.last_seen), str(j.repeats), _error_text(j.error)
        )
    console.print(jobs)


def workers_table(workers: list[WorkerRecord], console: Console) -> None:
    now = time.time()
    table = _table(
        f"workers ({len(workers)})",
        "worker", "status", "queues", "conc", "heartbeat", "rss", "cpu", "running jobs",
    )  # fmt: skip
    for w in workers:
        rss = "" if w.rss_bytes is None else f"{w.rss_bytes / 2**20:.0f} MiB"
        cpu = "" if w.cpu_percent is None else f"{w.cpu_percent:.0f}%"
        running = "\n".join(_running_line(j, now) for j in w.jobs[:5])
        if len(w.jobs) > 5:
            running += f"\n(+{len(w.jobs) - 5} more)"
        status = w.status(now)
        if status == "running" and w.threads_short():
            status += f"\ncapacity reduced: {w.concurrency - w.threads_short()}/{w.concurrency} threads"
        table.add_row(
            w.id, status, ",".join(w.queues), str(w.concurrency), f"{w.heartbeat_age(now):.0f}s ago",
            rss, cpu, running,
        )  # fmt: skip
    console.print(table)


def _running_line(j: RunningJobRecord, now: float) -> str:
    """A job the worker runs; a stuck thread says so, how long it has run and whether it was replaced."""
    if not j.stuck:
        return f"{j.id} {j.type}"
    note = "replaced" if j.replaced else "NOT replaced"
    return f"{j.id} {j.type} STUCK thread, {now - j.since:.0f}s, {note}"
