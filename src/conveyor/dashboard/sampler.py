"""Samples the dashboard process keeps while it runs: queue depths, job outcomes
seen on the app's bus, and worker resources, for the last hour.

Job outcomes reach this process's bus only from workers running in the same
process (``conveyor demo``); across processes, throughput comes from job history.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import signals as sig
from ..brokers import QueueStats
from ..signals import Bus, Event, Subscription

WINDOW = 3600.0
BUCKET = 60.0


@dataclass(slots=True)
class _Point:
    at: float
    values: dict[str, float] = field(default_factory=dict)


class Series:
    """A bounded time series of named values."""

    def __init__(self, window: float = WINDOW) -> None:
        self.window = window
        self.points: deque[_Point] = deque()

    def add(self, at: float, values: Mapping[str, float]) -> None:
        self.points.append(_Point(at, dict(values)))
        cutoff = at - self.window
        while self.points and self.points[0].at < cutoff:
            self.points.popleft()

    def chart(self, names: list[str] | None = None) -> dict[str, Any]:
        """``{"x": [...], "series": [{"label", "values"}]}`` for the charts."""
        if names is None:
            names = sorted({k for p in self.points for k in p.values})
        return {
            "x": [round(p.at, 3) for p in self.points],
            "series": [{"label": n, "values": [p.values.get(n) for p in self.points]} for n in names],
        }


class Outcomes:
    """Counts of job outcomes per minute, fed by bus events (a sink: it only observes)."""

    SIGNALS = (sig.JOB_COMPLETED, sig.JOB_FAILED, sig.JOB_DEAD)

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[float, dict[str, int]] = {}
        self.seen = 0

    def __call__(self, event: Event) -> None:
        bucket = event.timestamp - event.timestamp % BUCKET
        kind = event.name.split(".", 1)[1]
        with self._lock:
            counts = self._buckets.setdefault(bucket, {})
            counts[kind] = counts.get(kind, 0) + 1
            self.seen += 1
            if len(self._buckets) > WINDOW / BUCKET + 2:
                cutoff = self._clock() - WINDOW - BUCKET
                for key in [k for k in self._buckets if k < cutoff]:
                    del self._buckets[key]

    def attach(self, bus: Bus) -> Subscription:
        return bus.subscribe(self, self.SIGNALS)

    def per_minute(self) -> dict[str, Any]:
        """Completed, failed and dead jobs per minute over the last hour."""
        now = self._clock()
        start = now - now % BUCKET - WINDOW + BUCKET
        with self._lock:
            buckets = {k: dict(v) for k, v in self._buckets.items()}
        xs = [start + i * BUCKET for i in range(int(WINDOW / BUCKET))]
        return {
            "x": xs,
            "series": [
                {"label": kind, "values": [buckets.get(x, {}).get(kind, 0) for x in xs]}
                for kind in ("completed", "failed", "dead")
            ],
        }

    def totals(self, window: float) -> dict[str, int]:
        """Outcome counts in the last ``window`` seconds (whole minutes)."""
        cutoff = self._clock() - window
        out = {"completed": 0, "failed": 0, "dead": 0}
        with self._lock:
            for start, counts in self._buckets.items():
                if start + BUCKET > cutoff:
                    for kind, n in counts.items():
                        out[kind] = out.get(kind, 0) + n
        return out


class Samples:
    """What the dashboard remembers between requests."""

    def __init__(self) -> None:
        self.depth = Series()
        self.outcomes = Outcomes()
        self.workers: dict[str, Series] = {}
        self.latest: dict[str, QueueStats] = {}
        self.latest_at = 0.0

    def add_stats(self, stats: Mapping[str, QueueStats], at: float | None = None) -> None:
        at = time.time() if at is None else at
        self.latest, self.latest_at = dict(stats), at
        self.depth.add(
            at,
            {
                "ready": sum(s.ready for s in stats.values()),
                "in_flight": sum(s.in_flight for s in stats.values()),
                "delayed": sum(s.delayed for s in stats.values()),
                "dead": sum(s.dead for s in stats.values()),
            },
        )

    def add_worker(self, worker_id: str, at: float, rss_bytes: int | None, cpu_percent: float | None) -> None:
        """Record a worker's resources as of its heartbeat at ``at`` (once per heartbeat)."""
        series = self.workers.get(worker_id)
        if series is not None and series.points and series.points[-1].at >= at:
            return
        values: dict[str, float] = {}
        if rss_bytes is not None:
            values["rss_mb"] = round(rss_bytes / 1_048_576, 2)
        if cpu_percent is not None:
            values["cpu_percent"] = round(cpu_percent, 2)
        if values:
            self.workers.setdefault(worker_id, Series()).add(at, values)

    def forget_workers(self, keep: set[str]) -> None:
        for worker_id in [w for w in self.workers if w not in keep]:
            del self.workers[worker_id]
