"""Terminal rendering of a :class:`~conveyor.monitor.health.HealthReport`."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from .alerts import CRITICAL, WARNING
from .checks import ERROR, SKIPPED
from .health import HealthReport

_STYLE = {CRITICAL: "bold red", WARNING: "yellow", ERROR: "magenta", SKIPPED: "dim"}


def report_tables(report: HealthReport, console: Console | None = None) -> None:
    """Print every check result, the queue forecasts and lost workers."""
    out = console or Console()
    checks = Table(title=f"health: {report.status}")
    for col in ("check", "status", "subject", "value", "message"):
        checks.add_column(col, justify="right" if col == "value" else "left", overflow="fold")
    for r in report.results:
        style = _STYLE.get(r.status, "green")
        subject = ",".join(f"{k}={v}" for k, v in sorted(r.labels.items()))
        value = "" if r.value is None else f"{r.value:g}"
        checks.add_row(r.check, f"[{style}]{r.status}[/]", subject, value, r.message)
    out.print(checks)
    if report.forecasts:
        table = Table(title="queue forecast")
        cols = ("queue", "ready", "done/min", "arrivals/min", "mean duration", "drain ETA", "workers needed")
        for col in cols:
            table.add_column(col, justify="left" if col == "queue" else "right")
        for f in report.forecasts:
            table.add_row(
                f.queue,
                str(f.backlog),
                f"{f.throughput * 60:.1f}",
                f"{f.arrival_rate * 60:.1f}" + ("" if f.sampled else "*"),
                "-" if f.mean_duration is None else f"{f.mean_duration:.3f}s",
                f.eta_text(),
                str(f.recommended_workers),
            )
        out.print(table)
        if any(not f.sampled for f in report.forecasts):
            out.print("[dim]* arrivals assumed equal to completions (no samples yet); the ETA ignores new arrivals[/]")
    for w in report.lost_workers:
        jobs = ", ".join(f"{j.type} {j.id}" for j in w.jobs) or "no job"
        out.print(f"[bold red]lost worker[/] {w.worker_id} (pid {w.pid} on {w.host}) was running {jobs}")
