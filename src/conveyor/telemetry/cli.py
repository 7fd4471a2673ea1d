"""Telemetry for ``conveyor worker``: logging format, the app's telemetry, and /metrics."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from .config import Telemetry
from .logs import configure_logging
from .redact import DEFAULT_REDACT, Redactor

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from ..app import App
    from .metrics import MetricsServer

log = logging.getLogger("conveyor.telemetry")


def ensure_telemetry(app: App) -> Telemetry | None:
    """Install the app's telemetry, or the standard set when it has none (exactly once).

    Returns the :class:`Telemetry` in use, or None when the app carries some
    other installable object (already installed by the app).
    """
    current = app.telemetry
    if current is None:
        telemetry = Telemetry()
        app.telemetry = telemetry
        telemetry.install(app)
        return telemetry
    if isinstance(current, Telemetry):
        current.install(app)  # a no-op when App() already installed it
        return current
    return None


def setup_worker_telemetry(
    app: App,
    *,
    log_format: str = "text",
    log_level: str = "INFO",
    metrics_host: str = "127.0.0.1",
    metrics_port: int | None = None,
) -> MetricsServer | None:
    """Configure logging, make sure telemetry is installed, and serve /metrics if asked.

    ``log_format="json"`` adds a JSON handler (with job context) to the root
    logger; text logs are set up only when nothing configured logging yet.
    Returns the metrics server (a daemon thread) when ``metrics_port`` is set.
    """
    telemetry = ensure_telemetry(app)
    redactor = telemetry.redactor if telemetry is not None else Redactor(DEFAULT_REDACT)
    if log_format == "json" or not logging.getLogger().handlers:
        # Text logs, like the CLI's own default, leave logging the app configured alone.
        configure_logging(log_level, log_format, redact=redactor)
    if metrics_port is None:
        return None
    registry: CollectorRegistry | None = None
    if telemetry is not None:
        registry = telemetry.registry
        if registry is None:
            log.warning("the app's telemetry has no Prometheus metrics; /metrics serves the "
                        "process-wide prometheus_client registry")
    from .metrics import serve_metrics

    server = serve_metrics(registry, metrics_host, metrics_port)
    log.info("serving Prometheus metrics on %s", server.url)
    return server


MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CHILD_ENV = "CONVEYOR_METRICS_MULTIPROC"
"""Set (to ``1``) in the environment of worker processes whose metrics the supervisor serves."""


def prepare_multiprocess_metrics(env: dict[str, str], host: str, port: int) -> MetricsServer:
    """For ``conveyor worker --processes N --metrics-port P``: serve every child's metrics.

    Points ``env`` (the children's environment) at a metrics directory
    (``$PROMETHEUS_MULTIPROC_DIR``, else a fresh temporary one, removed at exit),
    clears stale files from it, and serves the aggregate of all children on
    ``host:port`` from this (the supervisor's) process. Counters and histograms
    are summed across processes; in-progress and worker gauges are summed over
    live processes; queue gauges show the latest report.
    """
    import atexit
    import shutil
    import tempfile
    from pathlib import Path

    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    from .metrics import serve_metrics

    given = env.get(MULTIPROC_ENV)
    directory = Path(given) if given else Path(tempfile.mkdtemp(prefix="conveyor-metrics-"))
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    if not given:
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
    env[MULTIPROC_ENV] = str(directory)
    env[CHILD_ENV] = "1"
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    server = serve_metrics(registry, host, port)
    log.info("serving Prometheus metrics of all worker processes on %s", server.url)
    return server


def mark_worker_process_dead(pid: int, env: Mapping[str, str]) -> None:
    """Drop the live gauges of a worker process that ended.

    For the supervisor, with the children's ``env`` as prepared by
    :func:`prepare_multiprocess_metrics`; a no-op when metrics are not shared.
    """
    directory = env.get(MULTIPROC_ENV)
    if directory:
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
