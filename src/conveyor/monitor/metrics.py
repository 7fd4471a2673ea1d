"""Metric specs for the monitor's signals, and their export into the app's Telemetry.

* ``conveyor_queue_drain_eta_seconds{queue}`` and ``conveyor_recommended_workers{queue}``
  from ``queue.forecast`` (every worker);
* ``conveyor_health_check_status{check}`` (0 ok, 1 warning, 2 critical) from
  ``health.check`` (the monitor leader; a process that loses the lock sets 0);
* ``conveyor_worker_rss_bytes`` and ``conveyor_worker_cpu_percent`` from ``worker.resources``.

:func:`export_metrics` runs when the monitor starts in a worker: when the app has a
:class:`~conveyor.telemetry.Telemetry` with a metrics backend, these gauges are added
to the same registry (unless its metrics already define them).
"""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING

from .checks import HEALTH_CHECK
from .forecast import QUEUE_FORECAST
from .resources import WORKER_RESOURCES

if TYPE_CHECKING:
    from ..app import App
    from ..telemetry.spec import Metric

log = logging.getLogger("conveyor.monitor")

DRAIN_ETA_METRIC = "conveyor_queue_drain_eta_seconds"
RECOMMENDED_WORKERS_METRIC = "conveyor_recommended_workers"
CHECK_STATUS_METRIC = "conveyor_health_check_status"
RSS_METRIC = "conveyor_worker_rss_bytes"
CPU_METRIC = "conveyor_worker_cpu_percent"


def monitor_metrics() -> tuple[Metric, ...]:
    """The monitor's gauges as :class:`~conveyor.telemetry.Metric` specs (add them to ``Telemetry(metrics=...)``)."""
    from ..telemetry.spec import Metric

    return (
        Metric(
            QUEUE_FORECAST, DRAIN_ETA_METRIC, kind="gauge", value_key="drain_eta", labels=["queue"], unit="s",
            description="Seconds until the queue has no ready job at recent throughput (+Inf: not draining).",
        ),
        Metric(
            QUEUE_FORECAST, RECOMMENDED_WORKERS_METRIC, kind="gauge", value_key="recommended_workers",
            labels=["queue"], description="Worker processes a queue needs (Little's law).",
        ),
        Metric(
            HEALTH_CHECK, CHECK_STATUS_METRIC, kind="gauge", value_key="level", labels=["check"],
            description="Worst status of each health check: 0 ok, 1 warning, 2 critical.",
        ),
        Metric(
            WORKER_RESOURCES, RSS_METRIC, kind="gauge", value_key="rss_bytes", unit="bytes",
            description="Resident memory of the worker process.",
        ),
        Metric(
            WORKER_RESOURCES, CPU_METRIC, kind="gauge", value_key="cpu_avg_percent",
            description="Rolling average CPU% of the worker process (100 = one core).",
        ),
    )  # fmt: skip


_exported: weakref.WeakSet[App] = weakref.WeakSet()


def export_metrics(app: App) -> bool:
    """Add :func:`monitor_metrics` to the app's Telemetry backends (once per app).

    Returns False when the app has no :class:`~conveyor.telemetry.Telemetry` with
    a metrics pipeline (nothing to export to).
    """
    if app in _exported:
        return True
    telemetry = app.telemetry
    pipeline = getattr(telemetry, "pipeline", None)
    if pipeline is None:
        return False
    defined = {getattr(m, "name", "") for m in getattr(telemetry, "metrics", ())}
    wanted = [m for m in monitor_metrics() if m.name not in defined]
    if wanted:
        from ..telemetry.metrics import MetricPipeline

        try:
            MetricPipeline(wanted, list(pipeline.backends)).attach(app.bus)
        except Exception:
            log.exception("could not export the monitor's metrics")
            return False
    _exported.add(app)
    return True
