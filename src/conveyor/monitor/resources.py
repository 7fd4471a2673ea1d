"""Resource monitor: RSS and CPU of this worker process, and what each job type costs.

Runs in every worker (no leader lock: each process watches itself). Every
``resource_interval`` it samples RSS and CPU% with psutil, keeps a rolling
window of ``resource_window`` samples and raises, through the app's
:class:`~conveyor.monitor.alerts.AlertManager`:

* ``worker_memory``: the rolling average RSS above ``rss_warning_mb`` / ``rss_critical_mb``;
* ``worker_memory_growing``: RSS rose in every sample of a full window, by ``rss_growth_mb`` or more;
* ``worker_cpu``: the rolling average CPU% above ``cpu_warning_percent``.

Around each job (``job.started`` to ``job.completed``/``job.failed``) it
measures RSS retained, peak RSS growth and CPU time, and keeps totals per job
type; with concurrency above 1 a job is charged the process-wide change in RSS
and CPU divided by the most jobs running at once during it. The peak is exact on
Linux (:class:`~conveyor.monitor.peak.PeakRss`: the kernel's high-water mark,
reset at every job start) and the highest sampled RSS elsewhere; it is the
process's peak while the job ran, so with jobs running at once it belongs to
that set of jobs (``concurrent_jobs``) and is not divided.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import signals as sig
from .alerts import CRITICAL, WARNING, Alert, AlertManager
from .config import MonitorConfig
from .peak import PeakRss

if TYPE_CHECKING:
    import psutil

    from ..worker import Worker

log = logging.getLogger("conveyor.monitor.resources")

MB = 1024 * 1024
RESOURCE_ALERTS = ("worker_memory", "worker_memory_growing", "worker_cpu")

WORKER_RESOURCES = sig.Signal(
    "worker.resources",
    "A sample of the worker process's memory and CPU.",
    (
        sig.WORKER_ID,
        sig.IntKey("rss_bytes", "resident set size now"),
        sig.FloatKey("rss_avg_bytes", "rolling average RSS"),
        sig.FloatKey("cpu_percent", "CPU% since the previous sample (100 = one core)"),
        sig.FloatKey("cpu_avg_percent", "rolling average CPU%"),
    ),
)
JOB_RESOURCES = sig.Signal(
    "job.resources",
    "What one attempt cost the worker process.",
    (
        sig.JOB_ID,
        sig.JOB_TYPE,
        sig.QUEUE,
        sig.WORKER_ID,
        sig.IntKey("rss_retained_bytes", "RSS after minus before (may be negative)"),
        sig.IntKey("rss_peak_growth_bytes", "the process's highest RSS during the attempt minus RSS before"),
        sig.BoolKey("rss_peak_exact", "the peak is the kernel's high-water mark (else the highest sample)"),
        sig.IntKey("concurrent_jobs", "most jobs running at once during the attempt (the peak is theirs)"),
        sig.DurationKey("cpu_time", "CPU seconds used by the process during the attempt"),
    ),
)


@dataclass(frozen=True, slots=True)
class Sample:
    """One measurement of the process."""

    at: float
    rss: int
    cpu_percent: float


@dataclass(slots=True)
class JobTypeUsage:
    """What the attempts of one job type cost this process so far."""

    runs: int = 0
    rss_retained: int = 0
    """Sum of RSS after minus RSS before, bytes (memory a job type keeps)."""
    rss_peak_growth: int = 0
    """The largest peak RSS growth of one attempt (with the jobs running beside it), bytes."""
    cpu_time: float = 0.0
    """CPU seconds."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "rss_retained_mb": round(self.rss_retained / MB, 2),
            "rss_peak_growth_mb": round(self.rss_peak_growth / MB, 2),
            "cpu_seconds": round(self.cpu_time, 3),
        }


@dataclass(slots=True)
class _Open:
    job_type: str
    queue: str
    rss: int
    cpu: float
    peak: int
    width: int
    """Most jobs running at once since this one started."""
    worker_id: str = ""


class ResourceMonitor:
    """Samples this process and alerts on memory and CPU; a :class:`~conveyor.worker.WorkerService`."""

    def __init__(
        self,
        config: MonitorConfig,
        alerts: AlertManager,
        process: psutil.Process | None = None,
        peak: PeakRss | None = None,
    ) -> None:
        """``peak`` reads this process's exact peak RSS (default: :class:`PeakRss` when
        ``process`` is this process); without it the peak is the highest sampled RSS."""
        import psutil

        self.config = config
        self.alerts = alerts
        self.peak = peak if peak is not None or process is not None else PeakRss()
        self.process = process or psutil.Process(os.getpid())
        self.samples: deque[Sample] = deque(maxlen=config.resource_window)
        self.usage: dict[str, JobTypeUsage] = {}
        self._open: dict[str, _Open] = {}
        self._lock = threading.Lock()
        self._bus: sig.Bus | None = None
        self.worker_id = ""

    # -- per-job attribution ----------------------------------------------------
    def attach(self, bus: sig.Bus) -> None:
        """Measure around jobs run by workers of this bus."""
        self._bus = bus
        bus.subscribe(self._on_start, [sig.JOB_STARTED])
        bus.subscribe(self._on_end, [sig.JOB_COMPLETED, sig.JOB_FAILED])

    def _cpu(self) -> float:
        t = self.process.cpu_times()
        return float(t.user + t.system)

    def _rss(self) -> int:
        return int(self.process.memory_info().rss)

    def _fold_peak(self) -> None:
        """Raise the peak of every running job to the process's peak since the last reset
        (each of them was running since then: a reset happens at every job start)."""
        if self.peak is None or not self._open:
            return
        hwm = self.peak.read()
        if hwm is not None:
            for job in self._open.values():
                job.peak = max(job.peak, hwm)

    def _on_start(self, event: sig.Event) -> None:
        with self._lock:
            self._fold_peak()
            if self.peak is not None:
                self.peak.reset()
            rss, cpu = self._rss(), self._cpu()
            width = len(self._open) + 1
            for job in self._open.values():
                job.width = max(job.width, width)
            self._open[event.attrs["job_id"]] = _Open(
                event.attrs["job_type"], event.attrs["queue"], rss, cpu, rss, width, event.attrs["worker_id"]
            )

    def _on_end(self, event: sig.Event) -> None:
        rss, cpu = self._rss(), self._cpu()
        with self._lock:
            self._fold_peak()
            job = self._open.pop(event.attrs["job_id"], None)
            if job is None:
                return
            width = job.width
            retained = (rss - job.rss) // width
            peak = max(job.peak, rss) - job.rss
            exact = self.peak is not None and self.peak.available
            cpu_time = max(0.0, cpu - job.cpu) / width
            usage = self.usage.setdefault(job.job_type, JobTypeUsage())
            usage.runs += 1
            usage.rss_retained += retained
            usage.rss_peak_growth = max(usage.rss_peak_growth, peak)
            usage.cpu_time += cpu_time
        bus = self._bus
        if bus is not None and bus.wants(JOB_RESOURCES):
            bus.emit(
                JOB_RESOURCES,
                job_id=event.attrs["job_id"],
                job_type=job.job_type,
                queue=job.queue,
                worker_id=job.worker_id,
                rss_retained_bytes=retained,
                rss_peak_growth_bytes=peak,
                rss_peak_exact=exact,
                concurrent_jobs=width,
                cpu_time=cpu_time,
            )

    def top_consumers(self, n: int = 3) -> list[tuple[str, JobTypeUsage]]:
        """Job types that retained the most memory, biggest first."""
        with self._lock:
            items = [
                (k, JobTypeUsage(v.runs, v.rss_retained, v.rss_peak_growth, v.cpu_time)) for k, v in self.usage.items()
            ]
        return sorted(items, key=lambda kv: (-kv[1].rss_retained, -kv[1].rss_peak_growth))[:n]

    def _blame(self) -> str:
        """Which jobs the memory went to: running jobs' growth so far, then finished job types."""
        rss = self.samples[-1].rss if self.samples else self._rss()
        with self._lock:
            running = sorted(((j.job_type, rss - j.rss) for j in self._open.values()), key=lambda x: -x[1])[:3]
        parts = [f"running {t} +{grown / MB:.1f} MiB since it started" for t, grown in running]
        parts += [f"{t} kept {u.rss_retained / MB:.1f} MiB over {u.runs} runs" for t, u in self.top_consumers()]
        return f"; {', '.join(parts)}" if parts else ""

    # -- sampling and alerts ----------------------------------------------------
    def sample(self) -> Sample:
        """Take one sample (also raising the peak RSS of running jobs)."""
        s = Sample(time.time(), self._rss(), float(self.process.cpu_percent(None)))
        self.samples.append(s)
        with self._lock:
            for job in self._open.values():
                job.peak = max(job.peak, s.rss)
        return s

    def averages(self) -> tuple[float, float]:
        """Rolling average RSS (bytes) and CPU%."""
        if not self.samples:
            return 0.0, 0.0
        n = len(self.samples)
        return sum(s.rss for s in self.samples) / n, sum(s.cpu_percent for s in self.samples) / n

    def growing(self) -> float | None:
        """MiB grown over a full window when RSS rose in every sample, else None."""
        c = self.config
        if len(self.samples) < c.resource_window:
            return None
        values = [s.rss for s in self.samples]
        if any(b <= a for a, b in itertools.pairwise(values)):
            return None
        return (values[-1] - values[0]) / MB

    def evaluate(self) -> list[Alert]:
        """The resource alerts that hold now for this process."""
        c = self.config
        labels = {"worker": self.worker_id}
        rss_avg, cpu_avg = self.averages()
        rss_mb = rss_avg / MB
        found: list[Alert] = []
        blame = self._blame()
        if rss_mb >= c.rss_warning_mb:
            critical = c.rss_critical_mb is not None and rss_mb >= c.rss_critical_mb
            limit = c.rss_critical_mb if critical else c.rss_warning_mb
            found.append(
                Alert(
                    "worker_memory",
                    CRITICAL if critical else WARNING,
                    f"worker {self.worker_id} RSS averages {rss_mb:.0f} MiB (threshold {limit:.0f} MiB){blame}",
                    labels,
                    round(rss_mb, 2),
                )
            )
        grown = self.growing()
        if grown is not None and grown >= c.rss_growth_mb:
            found.append(
                Alert(
                    "worker_memory_growing",
                    WARNING,
                    f"worker {self.worker_id} RSS grew {grown:.0f} MiB in {len(self.samples)} samples{blame}",
                    labels,
                    round(grown, 2),
                )
            )
        if len(self.samples) >= 2 and cpu_avg >= c.cpu_warning_percent:
            found.append(
                Alert(
                    "worker_cpu",
                    WARNING,
                    f"worker {self.worker_id} CPU averages {cpu_avg:.0f}% (threshold {c.cpu_warning_percent:.0f}%)",
                    labels,
                    round(cpu_avg, 1),
                )
            )
        return found

    def check(self) -> list[Alert]:
        """Sample, evaluate, update the alert manager and emit ``worker.resources``."""
        s = self.sample()
        firing = self.evaluate()
        for alert in firing:
            self.alerts.fire(alert)
        for name in set(RESOURCE_ALERTS) - {a.name for a in firing}:
            self.alerts.resolve(name, {"worker": self.worker_id})
        bus = self._bus
        if bus is not None and bus.wants(WORKER_RESOURCES):
            rss_avg, cpu_avg = self.averages()
            bus.emit(
                WORKER_RESOURCES,
                worker_id=self.worker_id,
                rss_bytes=s.rss,
                rss_avg_bytes=rss_avg,
                cpu_percent=s.cpu_percent,
                cpu_avg_percent=cpu_avg,
            )
        return firing

    async def run(self, worker: Worker) -> None:
        """Sample every ``resource_interval`` seconds while the worker runs."""
        from .metrics import export_metrics

        export_metrics(worker.app)
        self.worker_id = worker.id
        self.process.cpu_percent(None)  # the first call only starts the measurement
        while True:
            await asyncio.sleep(self.config.resource_interval)
            try:
                self.check()
            except Exception:
                log.exception("resource sample failed")
