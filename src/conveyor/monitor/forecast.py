"""Backlog drain ETA and recommended worker count (Little's law), per queue.

* throughput μ: jobs of the queue completed per second over ``throughput_window`` (history);
* arrival rate λ: μ plus the slope of the queue's size (ready + delayed + in flight)
  over the monitor's samples in that window (jobs in = jobs out + growth); with
  fewer than two samples (a one-shot ``conveyor health``) λ is taken to be μ;
* drain ETA: ``ready / (μ - λ)``; 0 when nothing is ready, infinite when the
  backlog does not shrink. Without samples it is ``ready / μ`` (no new arrivals);
* recommended workers: ``ceil((λ + ready / drain_target) * mean duration / concurrency)``,
  Little's law (busy slots = arrival rate * time in service) plus what drains the
  current backlog within ``drain_target`` seconds.

Each worker emits ``queue.forecast`` every monitor interval;
:func:`conveyor.monitor.metrics.monitor_metrics` maps it to the gauges
``conveyor_queue_drain_eta_seconds`` and ``conveyor_recommended_workers``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .. import signals as sig

QUEUE_FORECAST = sig.Signal(
    "queue.forecast",
    "Per-queue drain ETA and recommended worker count, from recent throughput.",
    (
        sig.QUEUE,
        sig.IntKey("backlog", "ready jobs"),
        sig.FloatKey("throughput", "jobs completed per second"),
        sig.FloatKey("arrival_rate", "jobs arriving per second"),
        sig.FloatKey("mean_duration", "seconds per completed job"),
        sig.FloatKey("drain_eta", "seconds until no job is ready (inf: not draining)"),
        sig.IntKey("recommended_workers", "worker processes needed, by Little's law"),
    ),
)


@dataclass(frozen=True, slots=True)
class Forecast:
    """The outlook of one queue."""

    queue: str
    backlog: int
    throughput: float
    arrival_rate: float
    mean_duration: float | None
    drain_eta: float
    recommended_workers: int
    concurrency: int
    sampled: bool
    """Whether the arrival rate comes from samples (else it is assumed equal to throughput)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "backlog": self.backlog,
            "throughput_per_s": round(self.throughput, 4),
            "arrival_rate_per_s": round(self.arrival_rate, 4),
            "mean_duration_s": None if self.mean_duration is None else round(self.mean_duration, 4),
            "drain_eta_s": None if math.isinf(self.drain_eta) else round(self.drain_eta, 1),
            "recommended_workers": self.recommended_workers,
            "concurrency_per_worker": self.concurrency,
            "arrival_rate_sampled": self.sampled,
        }

    def eta_text(self) -> str:
        if self.drain_eta == 0:
            return "empty"
        if math.isinf(self.drain_eta):
            return "not draining"
        return _duration(self.drain_eta)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def slope(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of ``(time, value)`` points (per second), or None with < 2 distinct times."""
    if len(points) < 2:
        return None
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var <= 0:
        return None
    return sum((t - mt) * (v - mv) for t, v in points) / var


def forecast(
    queue: str,
    ready: int,
    completed: int,
    window: float,
    mean_duration: float | None,
    size_slope: float | None,
    concurrency: int,
    drain_target: float,
) -> Forecast:
    """Compute one queue's :class:`Forecast` (see the module docstring for the formulas)."""
    mu = completed / window if window > 0 else 0.0
    sampled = size_slope is not None
    lam = max(0.0, mu + size_slope) if size_slope is not None else mu
    if ready <= 0:
        eta = 0.0
    else:
        net = (mu - lam) if sampled else mu
        eta = ready / net if net > 1e-9 else math.inf
    c = max(1, concurrency)
    if mean_duration is None or mean_duration <= 0:
        workers = 1 if ready > 0 or lam > 0 else 0
    else:
        busy = (lam + ready / drain_target) * mean_duration
        workers = math.ceil(busy / c - 1e-9) if busy > 0 else 0
        if ready > 0:
            workers = max(workers, 1)
    return Forecast(queue, ready, mu, lam, mean_duration, eta, workers, c, sampled)
