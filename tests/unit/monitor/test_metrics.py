"""The monitor's gauges land in the app's Telemetry registry."""

from __future__ import annotations

import math
from pathlib import Path

from conveyor import App
from conveyor.history import History, history_of
from conveyor.monitor import HealthMonitor, MonitorConfig, export_metrics, monitor_metrics
from conveyor.monitor.resources import WORKER_RESOURCES
from conveyor.telemetry import STANDARD_METRICS, Telemetry


def test_export_adds_the_gauges_to_the_telemetry_registry(tmp_path: Path) -> None:
    telemetry = Telemetry()
    app = App(f"sqlite:///{tmp_path / 'q.db'}", telemetry=telemetry, extensions=[History(flush_interval=0.05)])

    @app.job(queue="mail")
    def send() -> None:
        pass

    try:
        assert export_metrics(app) and export_metrics(app)  # idempotent
        send.send()
        monitor = HealthMonitor(app, MonitorConfig())
        app.run(lambda _b: monitor.evaluate())
        app.emit(WORKER_RESOURCES, worker_id="w", rss_bytes=123, rss_avg_bytes=100.0, cpu_percent=1.0,
                 cpu_avg_percent=2.5)  # fmt: skip
        registry = telemetry.registry
        assert registry is not None
        eta = registry.get_sample_value("conveyor_queue_drain_eta_seconds", {"queue": "mail"})
        assert eta is not None and math.isinf(eta)  # one ready job, nothing completed yet
        assert registry.get_sample_value("conveyor_recommended_workers", {"queue": "mail"}) == 1
        assert registry.get_sample_value("conveyor_health_check_status", {"check": "queue_latency"}) == 0
        assert registry.get_sample_value("conveyor_worker_rss_bytes") == 123
        assert registry.get_sample_value("conveyor_worker_cpu_percent") == 2.5
        monitor.stepped_down()
        assert registry.get_sample_value("conveyor_health_check_status", {"check": "broker"}) == 0
    finally:
        history_of(app).close()
        app.close()


def test_no_export_without_telemetry_and_no_duplicates_when_configured(app: App) -> None:
    assert export_metrics(app) is False
    telemetry = Telemetry(metrics=[*STANDARD_METRICS, *monitor_metrics()])
    configured = App("memory://", telemetry=telemetry)
    try:
        assert export_metrics(configured)
    finally:
        configured.close()
