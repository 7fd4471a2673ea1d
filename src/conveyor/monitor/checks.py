"""The built-in health checks. Each turns a snapshot (:class:`Inputs`) into results.

A check reports one :class:`CheckResult` per thing it watches (queue, worker,
job type...) or a single ``ok`` line when there is nothing to report. Its name
is the name of the alerts it raises and of the matching Prometheus rule in
deploy/prometheus/alerts.yml.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from .. import signals as sig
from ..brokers import QueueStats
from .alerts import CRITICAL, WARNING, Alert
from .config import MonitorConfig

if TYPE_CHECKING:
    from ..history.store import HistoryStore, RunningJobRecord, WorkerRecord
    from ..registry import JobDef

OK, SKIPPED, ERROR = "ok", "skipped", "error"
STATUSES = (OK, SKIPPED, ERROR, WARNING, CRITICAL)
MB = 1024 * 1024

HEALTH_CHECK = sig.Signal(
    "health.check",
    "A check's worst status changed (or was first evaluated) at the monitor leader.",
    (
        sig.StringKey("check", "the check's name"),
        sig.StringKey("status", "ok, skipped, error, warning or critical"),
        sig.IntKey("level", "0 ok/skipped/error, 1 warning, 2 critical"),
        sig.IntKey("failing", "results at warning or worse"),
    ),
)
LEVELS = {WARNING: 1, CRITICAL: 2}


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The status of one thing a check watches."""

    check: str
    status: str
    message: str
    labels: Mapping[str, str] = field(default_factory=dict)
    value: float | None = None

    def alert(self) -> Alert | None:
        """The alert this result raises (warnings and criticals only)."""
        if self.status not in (WARNING, CRITICAL):
            return None
        return Alert(self.check, self.status, self.message, self.labels, self.value)

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "status": self.status,
            "message": self.message,
            "labels": dict(self.labels),
            "value": self.value,
        }


Sample = tuple[float, QueueStats]


@dataclass
class Inputs:
    """What checks look at: queue stats now, recent samples, history, the app's job types."""

    now: float
    config: MonitorConfig
    jobs: Mapping[str, JobDef]
    stats: Mapping[str, QueueStats]
    samples: Mapping[str, Sequence[Sample]]
    history: HistoryStore | None
    local_jobs: Sequence[RunningJobRecord] = ()
    """Jobs of the process's own worker (used for stuck jobs when there is no history)."""
    visibility_timeout: float = 60.0
    _open: dict[str, list[RunningJobRecord]] = field(default_factory=dict, init=False, repr=False)

    @cached_property
    def workers(self) -> list[WorkerRecord]:
        """Workers that have not stopped and were heard from within ``forget_worker_after``."""
        if self.history is None:
            return []
        limit = self.config.forget_worker_after
        return [w for w in self.history.workers(include_stopped=False) if w.heartbeat_age(self.now) <= limit]

    def stalled(self, w: WorkerRecord) -> bool:
        return w.heartbeat_age(self.now) > self.config.heartbeat_timeout

    def open_jobs(self, w: WorkerRecord) -> list[RunningJobRecord]:
        """The jobs of a stalled worker whose attempt history does not show over (finished,
        delivered again); a live worker's jobs as of its last heartbeat."""
        if self.history is None or not self.stalled(w):
            return w.jobs
        if w.id not in self._open:
            history = self.history
            self._open[w.id] = [j for j in history.worker_jobs(w.id) if not history.attempt_over(j, w.id)]
        return self._open[w.id]


def grade(value: float, warning: float, critical: float | None) -> str:
    """``critical``, ``warning`` or ``ok`` for ``value`` against two thresholds (inclusive)."""
    if critical is not None and value >= critical:
        return CRITICAL
    return WARNING if value >= warning else OK


def _queue_results(inputs: Inputs, name: str, results: list[CheckResult], what: str) -> list[CheckResult]:
    if results:
        return results
    return [CheckResult(name, OK, f"no queue to check for {what}")]


def queue_latency(i: Inputs) -> list[CheckResult]:
    """Age of the oldest ready job of each queue."""
    out = []
    for q, s in i.stats.items():
        warning, critical = i.config.latency(q)
        status = grade(s.oldest_age_s, warning, critical)
        limit = critical if status == CRITICAL and critical is not None else warning
        message = f"queue {q}: oldest ready job waited {s.oldest_age_s:.1f}s"
        if status != OK:
            message += f" (threshold {limit:g}s)"
        out.append(CheckResult("queue_latency", status, message, {"queue": q}, round(s.oldest_age_s, 3)))
    return _queue_results(i, "queue_latency", out, "latency")


def queue_size(i: Inputs) -> list[CheckResult]:
    """Ready jobs in each queue."""
    out = []
    for q, s in i.stats.items():
        warning, critical = i.config.size(q)
        status = grade(s.ready, warning, critical)
        limit = critical if status == CRITICAL and critical is not None else warning
        message = f"queue {q}: {s.ready} ready jobs" + (f" (threshold {limit:g})" if status != OK else "")
        out.append(CheckResult("queue_size", status, message, {"queue": q}, float(s.ready)))
    return _queue_results(i, "queue_size", out, "size")


def dlq_growth(i: Inputs) -> list[CheckResult]:
    """Dead letters added in ``dlq_window``: from the monitor's samples once they span the
    window, else from history (else from the samples there are)."""
    c = i.config
    added: dict[str, int] = {}
    source = ""
    start = i.now - c.dlq_window
    sampled = [v for v in i.samples.values() if v]
    covered = bool(sampled) and min(v[0][0] for v in sampled) <= start
    if covered or (i.history is None and any(len(v) >= 2 for v in sampled)):
        # samples only when they span the window: a new leader's first ones would miss what came before
        source = "samples"
        for q, samples in i.samples.items():
            baseline = [s.dead for t, s in samples if t <= start][-1:]
            recent = baseline + [s.dead for t, s in samples if t > start]
            added[q] = sum(max(0, b - a) for a, b in itertools.pairwise(recent))
    elif i.history is not None:
        source = "history"
        for fc in i.history.failure_counts(i.now - c.dlq_window, i.now):
            added[fc.queue] = added.get(fc.queue, 0) + fc.dead
    else:
        return [CheckResult("dlq_growth", SKIPPED, "needs two monitor samples or the History extension")]
    out = []
    for q in sorted(set(added) | set(i.stats)):
        n = added.get(q, 0)
        status = grade(n, c.dlq_growth_warning, c.dlq_growth_critical)
        message = f"queue {q}: {n} new dead letters in the last {c.dlq_window:g}s ({source})"
        out.append(CheckResult("dlq_growth", status, message, {"queue": q}, float(n)))
    return _queue_results(i, "dlq_growth", out, "dead letters")


def backlog_growing(i: Inputs) -> list[CheckResult]:
    """A ready count that rose (never fell) over the last ``backlog_samples`` samples."""
    c = i.config
    out = []
    for q in i.stats:
        ready = [s.ready for _, s in i.samples.get(q, ())][-c.backlog_samples :]
        if len(ready) < c.backlog_samples:
            message = f"queue {q}: {len(ready)} of {c.backlog_samples} samples so far"
            out.append(CheckResult("backlog_growing", OK, message, {"queue": q}))
            continue
        growth = ready[-1] - ready[0]
        rising = all(b >= a for a, b in itertools.pairwise(ready)) and growth >= c.backlog_min_growth
        status = WARNING if rising else OK
        message = f"queue {q}: ready count went {ready[0]} -> {ready[-1]} over {len(ready)} samples"
        out.append(CheckResult("backlog_growing", status, message, {"queue": q}, float(growth)))
    return _queue_results(i, "backlog_growing", out, "backlog trend")


def _jobs_text(jobs: Sequence[RunningJobRecord]) -> str:
    if not jobs:
        return "no job"
    shown = ", ".join(f"{j.type} {j.id} (attempt {j.attempt})" for j in jobs[:5])
    return shown + (f" and {len(jobs) - 5} more" if len(jobs) > 5 else "")


def worker_stalled(i: Inputs) -> list[CheckResult]:
    """Workers whose last heartbeat is older than ``heartbeat_timeout``, with the jobs they ran."""
    assert i.history is not None
    out = []
    for w in i.workers:
        age = w.heartbeat_age(i.now)
        if i.stalled(w):
            jobs = i.open_jobs(w)
            message = (
                f"worker {w.id} (pid {w.pid} on {w.host}) has not sent a heartbeat for {age:.0f}s;"
                f" it was running {_jobs_text(jobs)}"
            )
            out.append(CheckResult("worker_stalled", CRITICAL, message, {"worker": w.id}, round(age, 1)))
    if not out:
        out.append(CheckResult("worker_stalled", OK, f"{len(i.workers)} workers heard from recently"))
    return out


def job_stuck(i: Inputs) -> list[CheckResult]:
    """Jobs running past their timeout (plus ``stuck_grace``), or whose lease lapsed with their worker."""
    c = i.config
    out = []
    running: list[tuple[RunningJobRecord, str]] = []
    if i.history is None:
        running = [(j, "") for j in i.local_jobs]
    for w in i.workers:
        jobs = i.open_jobs(w)
        running += [(j, w.id) for j in jobs]
        if w.heartbeat_age(i.now) > i.visibility_timeout:
            for j in jobs:
                message = (
                    f"job {j.id} ({j.type}) is held by worker {w.id}, silent for"
                    f" {w.heartbeat_age(i.now):.0f}s: its lease has lapsed"
                )
                out.append(CheckResult("job_stuck", WARNING, message, {"job_type": j.type, "job_id": j.id}))
    lapsed = {r.labels["job_id"] for r in out}
    for j, worker in running:
        if j.id in lapsed or not j.since:
            continue
        definition = i.jobs.get(j.type)
        timeout = definition.timeout if definition is not None else None
        limit = timeout + c.stuck_grace if timeout is not None else c.stuck_after
        ran = i.now - j.since
        if ran > limit and not (worker and i.history is not None and i.history.attempt_over(j, worker)):
            bound = f"its timeout of {timeout:g}s" if timeout is not None else f"{c.stuck_after:g}s"
            where = f" on worker {worker}" if worker else ""
            message = f"job {j.id} ({j.type}) has run for {ran:.0f}s{where}, past {bound}"
            out.append(CheckResult("job_stuck", WARNING, message, {"job_type": j.type, "job_id": j.id}, round(ran, 1)))
    return out or [CheckResult("job_stuck", OK, f"{len(running)} running jobs within their limits")]


def failure_rate(i: Inputs) -> list[CheckResult]:
    """Failed share of finished attempts per job type and queue over ``failure_window``."""
    assert i.history is not None
    c = i.config
    out = []
    for fc in i.history.failure_counts(i.now - c.failure_window, i.now):
        if fc.attempts < c.failure_min_attempts:
            continue
        rate = fc.failure_rate
        status = grade(rate, c.failure_rate_warning, c.failure_rate_critical)
        message = (
            f"{fc.job_type} on {fc.queue}: {fc.failures} of {fc.attempts} attempts failed"
            f" ({rate:.0%}) in the last {c.failure_window:g}s"
        )
        labels = {"job_type": fc.job_type, "queue": fc.queue}
        out.append(CheckResult("failure_rate", status, message, labels, round(rate, 4)))
    return out or [CheckResult("failure_rate", OK, f"fewer than {c.failure_min_attempts} attempts per job type")]


def retry_loop(i: Inputs) -> list[CheckResult]:
    """Job types with unfinished jobs that started ``retry_loop_attempts`` attempts in the window."""
    assert i.history is not None
    c = i.config
    loops = i.history.retry_loops(c.retry_loop_attempts, i.now - c.retry_loop_window)
    by_type: dict[str, list[Any]] = {}
    for job in loops.jobs:
        if job.state not in ("completed", "dead"):
            by_type.setdefault(job.job_type, []).append(job)
    out = []
    for job_type, jobs in sorted(by_type.items()):
        worst = max(jobs, key=lambda j: j.attempts)
        error = f"; repeating {worst.error.type}: {worst.error.message}" if worst.error else ""
        message = (
            f"{len(jobs)} {job_type} jobs retried {c.retry_loop_attempts}+ times in"
            f" {c.retry_loop_window:g}s (job {worst.job_id}: {worst.attempts} attempts){error}"
        )
        out.append(CheckResult("retry_loop", WARNING, message, {"job_type": job_type}, float(len(jobs))))
    return out or [CheckResult("retry_loop", OK, "no job is stuck in a retry loop")]


def worker_memory(i: Inputs) -> list[CheckResult]:
    """RSS of each worker as its last heartbeat reported it (workers alert on their own RSS)."""
    c = i.config
    out = []
    for w in i.workers:
        if w.rss_bytes is None:
            continue
        mb = w.rss_bytes / MB
        status = grade(mb, c.rss_warning_mb, c.rss_critical_mb)
        cpu = f", CPU {w.cpu_percent:.0f}%" if w.cpu_percent is not None else ""
        message = f"worker {w.id}: RSS {mb:.0f} MiB{cpu}"
        out.append(CheckResult("worker_memory", status, message, {"worker": w.id}, round(mb, 2)))
    return out or [CheckResult("worker_memory", OK, "no worker reports its memory")]


from .unconsumed import unconsumed_queue  # noqa: E402 - it builds on the definitions above


@dataclass(frozen=True, slots=True)
class Check:
    """A named check: its function and what it needs."""

    name: str
    fn: Callable[[Inputs], list[CheckResult]]
    needs_history: bool = False
    alerts_from_leader: bool = True
    """False when each worker raises this alert itself (see resources.py)."""


CHECKS: tuple[Check, ...] = (
    Check("queue_latency", queue_latency),
    Check("queue_size", queue_size),
    Check("dlq_growth", dlq_growth),
    Check("backlog_growing", backlog_growing),
    Check("worker_stalled", worker_stalled, needs_history=True),
    Check("job_stuck", job_stuck),
    Check("failure_rate", failure_rate, needs_history=True),
    Check("retry_loop", retry_loop, needs_history=True),
    Check("worker_memory", worker_memory, needs_history=True, alerts_from_leader=False),
    Check("unconsumed_queue", unconsumed_queue, needs_history=True),
)
"""The built-in checks, in report order."""
