"""The health monitor: evaluates the checks, keeps samples, raises alerts, forecasts queues.

Inside workers it runs as :class:`MonitorService` under the broker lock
:data:`LOCK_NAME` (renewed every cycle), so exactly one process evaluates
the checks and alerts at a time; every worker still emits ``queue.forecast``.
Standalone it runs as ``conveyor monitor APP``; ``conveyor health APP``
prints one evaluation (:func:`check_health`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import signals as sig
from ..brokers import QueueStats
from ..errors import ServiceUnavailable
from .alerts import CRITICAL, WARNING, Alert, AlertManager
from .checks import CHECKS, ERROR, HEALTH_CHECK, LEVELS, OK, SKIPPED, CheckResult, Inputs, Sample
from .config import MonitorConfig
from .forecast import QUEUE_FORECAST, Forecast, forecast, slope
from .metrics import export_metrics

if TYPE_CHECKING:
    from ..app import App
    from ..history.store import HistoryStore, RunningJobRecord
    from ..worker import Worker

log = logging.getLogger("conveyor.monitor")

LOCK_NAME = "conveyor:monitor"
ORDER = (OK, SKIPPED, ERROR, WARNING, CRITICAL)
"""Statuses from best to worst."""

WORKER_LOST = sig.Signal(
    "worker.lost",
    "A worker stopped sending heartbeats without stopping; names the jobs it was running.",
    (
        sig.WORKER_ID,
        sig.StringKey("job_ids", "comma-separated ids of the jobs it was running"),
        sig.StringKey("job_types", "comma-separated types of those jobs"),
        sig.DurationKey("silent_for", "time since its last heartbeat"),
        sig.IntKey("rss_bytes", "RSS at its last heartbeat (0 when unknown)"),
    ),
)


@dataclass(frozen=True, slots=True)
class LostWorker:
    """A worker found stalled or gone, and what it was doing."""

    worker_id: str
    host: str
    pid: int
    last_heartbeat: float
    detected_at: float
    rss_bytes: int | None
    jobs: list[RunningJobRecord]

    def to_dict(self) -> dict[str, Any]:
        return {
            "worker_id": self.worker_id,
            "host": self.host,
            "pid": self.pid,
            "last_heartbeat": self.last_heartbeat,
            "detected_at": self.detected_at,
            "rss_bytes": self.rss_bytes,
            "jobs": [{"id": j.id, "type": j.type, "queue": j.queue, "attempt": j.attempt} for j in self.jobs],
        }


@dataclass
class HealthReport:
    """One evaluation: every check's results, per-queue forecasts and lost workers."""

    at: float
    results: list[CheckResult]
    forecasts: list[Forecast] = field(default_factory=list)
    lost_workers: list[LostWorker] = field(default_factory=list)

    @property
    def status(self) -> str:
        """The worst status of any result."""
        return max((r.status for r in self.results), key=ORDER.index, default=OK)

    def checks(self) -> dict[str, str]:
        """The worst status per check, in report order."""
        out: dict[str, str] = {}
        for r in self.results:
            out[r.check] = max(out.get(r.check, OK), r.status, key=ORDER.index)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "at": self.at,
            "checks": self.checks(),
            "results": [r.to_dict() for r in self.results],
            "forecasts": [f.to_dict() for f in self.forecasts],
            "lost_workers": [w.to_dict() for w in self.lost_workers],
        }


def history_store(app: App) -> HistoryStore | None:
    """The app's history store when the History extension is installed, else None."""
    from ..history.extension import HistoryNotInstalled, history_of

    try:
        return history_of(app).store
    except HistoryNotInstalled:
        return None


class HealthMonitor:
    """Evaluates :data:`~conveyor.monitor.checks.CHECKS`; samples accumulate between calls."""

    def __init__(
        self,
        app: App,
        config: MonitorConfig | None = None,
        alerts: AlertManager | None = None,
        history: HistoryStore | None = None,
    ) -> None:
        self.app = app
        self.config = config or MonitorConfig()
        self.alerts = alerts or AlertManager(cooldown=self.config.cooldown)
        self._history = history
        self._history_looked = history is not None
        window = max(self.config.throughput_window, self.config.dlq_window)
        keep = max(self.config.backlog_samples, 2) + int(window // self.config.interval) + 2
        self.samples: dict[str, deque[Sample]] = {}
        self._keep = keep
        self.lost: dict[str, LostWorker] = {}
        self.last_report: HealthReport | None = None
        self._statuses: dict[str, tuple[str, int]] = {}
        self.owner = standalone_owner()
        """Who this monitor is in broker locks (the worker id inside workers)."""

    @property
    def history(self) -> HistoryStore | None:
        if not self._history_looked:
            self._history_looked = True
            self._history = history_store(self.app)
        return self._history

    async def _stats(self) -> dict[str, QueueStats]:
        return await self.app.stats_async()

    async def evaluate(
        self,
        *,
        alert: bool = True,
        checks: bool = True,
        worker: Worker | None = None,
    ) -> HealthReport:
        """Sample the queues, run the checks (unless ``checks`` is False) and forecast.

        With ``alert``, results update the alert manager (alerts of checks that
        could not run are left as they are). Every forecast is emitted as ``queue.forecast``.
        """
        now = time.time()
        try:
            stats = await self._stats()
        except Exception as exc:
            if isinstance(exc, ServiceUnavailable):  # its message says it all: no traceback
                log.error("monitor: cannot read queue stats: %s", exc)
            else:
                log.exception("monitor: cannot read queue stats")
            result = CheckResult("broker", CRITICAL, f"cannot read queue stats from the broker: {exc}")
            if alert:
                self.alerts.update([a for a in [result.alert()] if a], names=["broker"])
            return HealthReport(now, [result])
        for q, s in stats.items():
            self.samples.setdefault(q, deque(maxlen=self._keep)).append((now, s))
        if alert and checks and self.alerts.delivers and self.history is not None:
            await asyncio.to_thread(self._mark_lost, self.history, now)
        local: list[RunningJobRecord] = []
        if worker is not None:
            from ..history.store import RunningJobRecord

            local = [RunningJobRecord(j.id, j.type, j.queue, j.attempts, j.started_at) for j in worker.current_jobs()]
        inputs = Inputs(
            now,
            self.config,
            dict(self.app.registry),
            stats,
            {q: list(v) for q, v in self.samples.items()},
            self.history,
            local,
            worker.config.visibility_timeout if worker is not None else 60.0,
        )
        report = await asyncio.to_thread(self._run_checks, inputs, checks, worker)
        if checks:
            self._note_lost(inputs, report)
        if alert and checks:
            await self._alert(report)
        if checks:
            self._emit_statuses(report)
        if self.app.bus.wants(QUEUE_FORECAST):
            for f in report.forecasts:
                self.app.bus.emit(
                    QUEUE_FORECAST,
                    queue=f.queue,
                    backlog=f.backlog,
                    throughput=f.throughput,
                    arrival_rate=f.arrival_rate,
                    mean_duration=f.mean_duration or 0.0,
                    drain_eta=f.drain_eta,
                    recommended_workers=f.recommended_workers,
                )
        self.last_report = report
        return report

    def _run_checks(self, inputs: Inputs, checks: bool, worker: Worker | None) -> HealthReport:
        results: list[CheckResult] = [CheckResult("broker", OK, f"{len(inputs.stats)} queues")]
        for check in CHECKS if checks else ():
            if check.needs_history and inputs.history is None:
                message = "needs the History extension (App(extensions=[History()]))"
                results.append(CheckResult(check.name, SKIPPED, message))
                continue
            try:
                results.extend(check.fn(inputs))
            except Exception as exc:
                log.exception("monitor: check %s failed", check.name)
                results.append(CheckResult(check.name, ERROR, f"check failed: {type(exc).__name__}: {exc}"))
        forecasts: list[Forecast] = []
        try:
            forecasts = self._forecasts(inputs, worker)
        except Exception:
            log.exception("monitor: forecast failed")
        return HealthReport(inputs.now, results, forecasts, list(self.lost.values()))

    def _forecasts(self, i: Inputs, worker: Worker | None) -> list[Forecast]:
        if i.history is None:
            return []
        c = self.config
        since = i.now - c.throughput_window
        completed: dict[str, dict[str, int]] = {}
        for fc in i.history.failure_counts(since, i.now):
            completed.setdefault(fc.queue, {})[fc.job_type] = fc.completed
        durations = {t.job_type: t.avg_duration for t in i.history.throughput(since, i.now)}
        default_concurrency = worker.config.concurrency if worker is not None else 8
        out = []
        for q, s in i.stats.items():
            by_type = completed.get(q, {})
            done = sum(by_type.values())
            weighted = sum(n * durations.get(t, 0.0) for t, n in by_type.items())
            mean = weighted / done if done else None
            points = [(t, float(x.ready + x.delayed + x.in_flight)) for t, x in i.samples.get(q, ()) if t >= since]
            consumers = [w.concurrency for w in i.workers if q in w.queues and not i.stalled(w)]
            concurrency = round(sum(consumers) / len(consumers)) if consumers else default_concurrency
            out.append(
                forecast(q, s.ready, done, c.throughput_window, mean, slope(points), concurrency, c.drain_target)
            )
        return out

    def _mark_lost(self, history: HistoryStore, now: float) -> None:
        """Mark lost in the registry each stalled worker whose ``worker_stalled`` alert was sent
        and every one of whose jobs is over (finished, or rescued by another delivery)."""
        reported = {
            a.alert.labels.get("worker", "")
            for a in self.alerts.active()
            if a.alert.name == "worker_stalled" and a.notified
        }
        if not reported:
            return
        for w in history.workers(include_stopped=False):
            if w.id not in reported or w.heartbeat_age(now) <= self.config.heartbeat_timeout:
                continue
            jobs = history.worker_jobs(w.id)
            if any(not history.attempt_over(j, w.id) for j in jobs):
                continue
            if history.worker_lost(w.id, w.last_heartbeat, now):
                log.warning(
                    "worker %s marked lost: silent for %.0fs, its jobs are accounted for (%s)",
                    w.id,
                    w.heartbeat_age(now),
                    ", ".join(f"{j.type} {j.id}" for j in jobs) or "it ran none",
                )

    def _note_lost(self, inputs: Inputs, report: HealthReport) -> None:
        stalled = {r.labels.get("worker", "") for r in report.results if r.check == "worker_stalled" and r.status != OK}
        for w in inputs.workers:
            if w.id not in stalled or w.id in self.lost or inputs.history is None:
                continue
            jobs = inputs.open_jobs(w)
            lost = LostWorker(w.id, w.host, w.pid, w.last_heartbeat, inputs.now, w.rss_bytes, jobs)
            self.lost[w.id] = lost
            log.error(
                "worker %s stalled or died while running %s",
                w.id,
                ", ".join(f"{j.type} {j.id}" for j in jobs) or "no job",
            )
            if self.app.bus.wants(WORKER_LOST):
                self.app.bus.emit(
                    WORKER_LOST,
                    worker_id=w.id,
                    job_ids=",".join(j.id for j in jobs),
                    job_types=",".join(sorted({j.type for j in jobs})),
                    silent_for=w.heartbeat_age(inputs.now),
                    rss_bytes=w.rss_bytes or 0,
                )
        for worker_id in list(self.lost):
            if worker_id not in stalled:
                del self.lost[worker_id]
        report.lost_workers = list(self.lost.values())

    async def _alert(self, report: HealthReport) -> None:
        leader_checks = self.leader_alert_names()
        ran = {r.check for r in report.results if r.status not in (SKIPPED, ERROR)} & leader_checks
        firing = [a for r in report.results if r.check in ran and (a := r.alert()) is not None]
        await self._shared_cooldown(firing)
        self.alerts.update(firing, names=ran)

    async def _shared_cooldown(self, firing: list[Alert]) -> None:
        """Apply the cooldown across processes (a new leader, ``conveyor monitor --once``).

        Sending an alert takes the broker lock ``conveyor:alert:<digest of name, labels,
        severity>`` for ``cooldown`` seconds; when another process holds it, that process
        sent the alert: it is held back here too (and resolved here when it clears).
        A manager without sinks (the dashboard's) neither takes nor honours these locks.
        """
        if self.config.cooldown <= 0 or not self.alerts.delivers:
            return  # only a process that delivers an alert may mark it as sent
        pending = self.alerts.pending(firing)
        if not pending:
            return
        broker = await self.app.broker()
        for a in pending:
            digest = hashlib.sha256(repr((a.key, a.severity)).encode()).hexdigest()[:24]
            try:
                mine = await broker.acquire_lock(f"conveyor:alert:{digest}", self.owner, self.config.cooldown)
            except Exception:
                log.warning("monitor: could not take the alert lock; sending %s anyway", a.name, exc_info=True)
                continue
            if not mine:
                self.alerts.mark_sent(a)

    def _emit_statuses(self, report: HealthReport | None) -> None:
        """Emit ``health.check`` for each check whose status changed (all of them the first
        time); with no report, reset every check to ok (this process lost the lock)."""
        if not self.app.bus.wants(HEALTH_CHECK):
            return
        worst = report.checks() if report is not None else {}
        for name in ["broker", *(c.name for c in CHECKS)]:
            status = worst.get(name, OK)
            failing = 0 if report is None else sum(1 for r in report.results if r.check == name and r.status in LEVELS)
            if self._statuses.get(name) == (status, failing):
                continue
            self._statuses[name] = (status, failing)
            self.app.bus.emit(HEALTH_CHECK, check=name, status=status, level=LEVELS.get(status, 0), failing=failing)

    def stepped_down(self) -> None:
        """This process lost the leader lock: forget its alerts and reset its check gauges."""
        self.alerts.forget(self.leader_alert_names())
        self._emit_statuses(None)

    def leader_alert_names(self) -> set[str]:
        """Names of the alerts the leader raises (and forgets when it loses the lock)."""
        return {c.name for c in CHECKS if c.alerts_from_leader} | {"broker"}


async def monitor_loop(monitor: HealthMonitor, owner: str, worker: Worker | None = None) -> None:
    """Evaluate every ``interval`` seconds while holding the leader lock; forecast otherwise."""
    config = monitor.config
    monitor.owner = owner
    broker = await monitor.app.broker()
    leader = False
    try:
        while True:
            started = time.monotonic()
            try:
                was = leader
                leader = await broker.acquire_lock(LOCK_NAME, owner, config.leader_ttl)
                if was and not leader:
                    log.info("monitor: %s lost the leader lock", owner)
                    monitor.stepped_down()
                await monitor.evaluate(alert=leader, checks=leader, worker=worker)
            except Exception:
                log.exception("monitor cycle failed")
            await asyncio.sleep(max(0.0, config.interval - (time.monotonic() - started)))
    finally:
        if leader:
            with contextlib.suppress(Exception):
                await asyncio.shield(broker.release_lock(LOCK_NAME, owner))


class MonitorService:
    """The worker service running :func:`monitor_loop` in every worker."""

    def __init__(self, monitor: HealthMonitor) -> None:
        self.monitor = monitor

    def __repr__(self) -> str:
        return f"MonitorService(every {self.monitor.config.interval:g}s)"

    async def run(self, worker: Worker) -> None:
        export_metrics(self.monitor.app)
        await monitor_loop(self.monitor, worker.id, worker)


def standalone_owner() -> str:
    """Lock owner id of a standalone ``conveyor monitor`` process."""
    return f"monitor:{socket.gethostname()}:{os.getpid()}"


async def check_health(app: App, config: MonitorConfig | None = None) -> HealthReport:
    """One evaluation of every check, without alerts (``conveyor health``, dashboards)."""
    return await HealthMonitor(app, config).evaluate(alert=False)
