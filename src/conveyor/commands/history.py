"""``conveyor jobs | job | failures | retries | workers``: read the job history of an app."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import click
from rich.console import Console

from ..cli import APP_HELP, load_app
from ..deadletters import CANDIDATES_SHOWN
from ..history import STATES, AmbiguousId, History, history_of
from ..history import render as r

_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class Window(click.ParamType):  # type: ignore[type-arg]  # generic only in newer click stubs
    """A duration: ``90s``, ``15m``, ``1h``, ``1h30m``, ``7d`` (a bare number is seconds)."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> timedelta:
        if isinstance(value, timedelta):
            return value
        text = str(value).strip().lower()
        try:
            seconds = float(text)
        except ValueError:
            parts = _PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                self.fail(f"{value!r} is not a duration like 90s, 15m, 1h, 1h30m or 7d", param, ctx)
            seconds = sum(float(n) * _UNITS[u] for n, u in parts)
        if seconds <= 0:
            self.fail(f"{value!r} must be a positive duration", param, ctx)
        return timedelta(seconds=seconds)


def _label(window: timedelta) -> str:
    seconds = int(window.total_seconds())
    for unit in ("w", "d", "h", "m"):
        if seconds and seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{window.total_seconds():g}s"


@contextmanager
def _history(app_path: str) -> Iterator[History]:
    """The app's History (a one-line error when it has none); closes the app afterwards."""
    app = load_app(app_path)
    try:
        yield history_of(app)
    finally:
        app.close()


def _emit(as_json: bool, data: Any, table: Callable[[Console], None]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        table(r.console())


_since = click.option(
    "--since", type=Window(), default="1h", show_default=True, help="Window: 90s, 15m, 1h, 1h30m, 7d..."
)
_json = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@click.command(epilog=APP_HELP)
@click.argument("app_path", metavar="APP")
@click.option("--state", type=click.Choice(STATES), help="Only jobs in this state.")
@click.option("--type", "job_type", help="Only this job type.")
@click.option("--queue", help="Only this queue.")
@click.option("--since", type=Window(), help="Only jobs updated in this window (e.g. 1h).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
@_json
def jobs(
    app_path: str,
    state: str | None,
    job_type: str | None,
    queue: str | None,
    since: timedelta | None,
    limit: int,
    as_json: bool,
) -> None:
    """List recent jobs from the history, newest first."""
    with _history(app_path) as history:
        found = history.store.list_jobs(state=state, job_type=job_type, queue=queue, since=since, limit=limit)
    _emit(as_json, [r.job_dict(j) for j in found], lambda c: r.jobs_table(found, c))


@click.command(epilog=APP_HELP)
@click.argument("app_path", metavar="APP")
@click.argument("job_id")
@_json
def job(app_path: str, job_id: str, as_json: bool) -> None:
    """Show one job (id or unique prefix): every attempt and state change."""
    with _history(app_path) as history:
        try:
            timeline = history.store.get_job(job_id)
        except AmbiguousId:
            found = history.store.list_jobs(id_prefix=job_id, limit=CANDIDATES_SHOWN + 1)
            shown = ", ".join(j.id for j in found[:CANDIDATES_SHOWN])
            more = ", ..." if len(found) > CANDIDATES_SHOWN else ""
            raise click.ClickException(
                f"job id prefix {job_id!r} matches several jobs: {shown}{more}; give more characters"
            ) from None
    if timeline is None:
        raise click.ClickException(f"job {job_id!r} is not in the history")
    _emit(as_json, r.timeline_dict(timeline), lambda c: r.timeline_print(timeline, c))


@click.command(epilog=APP_HELP)
@click.argument("app_path", metavar="APP")
@_since
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1), help="Most clusters shown.")
@_json
def failures(app_path: str, since: timedelta, limit: int, as_json: bool) -> None:
    """Group recent failures into clusters by fingerprint (error shape + code location + job type).

    Redrive a cluster's dead letters with ``conveyor dlq retry APP --cluster FINGERPRINT``.
    """
    with _history(app_path) as history:
        clusters = history.store.failure_clusters(since, limit=limit)
    _emit(as_json, [r.cluster_dict(c) for c in clusters], lambda c: r.clusters_table(clusters, _label(since), c))


@click.command(epilog=APP_HELP)
@click.argument("app_path", metavar="APP")
@click.option(
    "--min-attempts", default=3, show_default=True, type=click.IntRange(min=1), help="K: attempts a job needs."
)
@_since
@_json
def retries(app_path: str, min_attempts: int, since: timedelta, as_json: bool) -> None:
    """Find retry loops: jobs with at least K attempts in the window, and the error that repeats."""
    with _history(app_path) as history:
        loops = history.store.retry_loops(min_attempts, since)
    _emit(as_json, r.loops_dict(loops), lambda c: r.loops_table(loops, _label(since), c))


@click.command(epilog=APP_HELP)
@click.argument("app_path", metavar="APP")
@click.option("--running", is_flag=True, help="Hide stopped workers.")
@_json
def workers(app_path: str, running: bool, as_json: bool) -> None:
    """List workers from their heartbeats: status, queues, RSS, CPU% and the jobs they run."""
    with _history(app_path) as history:
        found = history.store.workers(include_stopped=not running)
    _emit(as_json, [r.worker_dict(w) for w in found], lambda c: r.workers_table(found, c))


def register(group: click.Group) -> None:
    """Add the history commands to the ``conveyor`` CLI."""
    for command in (jobs, job, failures, retries, workers):
        group.add_command(command)
