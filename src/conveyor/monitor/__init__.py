"""Health monitoring: alerts, periodic checks, resources, forecasts and failure analysis.

    from conveyor.history import History
    from conveyor.monitor import Monitor, MonitorConfig, WebhookSink

    app = App(url, extensions=[History(), Monitor(MonitorConfig(latency_warning=30), [WebhookSink(url)])])

See docs/monitoring.md.
"""

from .alerts import ALERT_FIRED, ALERT_RESOLVED, CRITICAL, INFO, WARNING, Alert, AlertManager, AlertSink, Notification
from .checks import CHECKS, HEALTH_CHECK, CheckResult
from .config import MonitorConfig, QueueThresholds
from .extension import Monitor, monitor_of
from .forecast import QUEUE_FORECAST, Forecast
from .health import WORKER_LOST, HealthMonitor, HealthReport, check_health
from .metrics import export_metrics, monitor_metrics
from .resources import JOB_RESOURCES, WORKER_RESOURCES, ResourceMonitor
from .sinks import BusSink, JsonLinesSink, LogSink, WebhookSink, read_active

__all__ = [
    "ALERT_FIRED",
    "ALERT_RESOLVED",
    "CHECKS",
    "CRITICAL",
    "HEALTH_CHECK",
    "INFO",
    "JOB_RESOURCES",
    "QUEUE_FORECAST",
    "WARNING",
    "WORKER_LOST",
    "WORKER_RESOURCES",
    "Alert",
    "AlertManager",
    "AlertSink",
    "BusSink",
    "CheckResult",
    "Forecast",
    "HealthMonitor",
    "HealthReport",
    "JsonLinesSink",
    "LogSink",
    "Monitor",
    "MonitorConfig",
    "Notification",
    "QueueThresholds",
    "ResourceMonitor",
    "WebhookSink",
    "check_health",
    "export_metrics",
    "monitor_metrics",
    "monitor_of",
    "read_active",
]
