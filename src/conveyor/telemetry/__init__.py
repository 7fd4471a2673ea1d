"""Telemetry for conveyor: metrics, traces, logs and routing, all fed by signals.

Importing this package stays light: prometheus_client and opentelemetry are
imported only when a :class:`Telemetry` needs them. See docs/telemetry.md.
"""

from .config import Telemetry
from .logs import JobContextFilter, JsonFormatter, SignalLogSink, configure_logging, install_record_factory
from .metrics import MetricsServer, serve_metrics
from .redact import DEFAULT_REDACT, REDACTED, Redactor
from .routing import AuditSink, Route, read_audit
from .spec import DEFAULT_LEVELS, Logs, Metric, Span
from .standard import STANDARD_METRICS

__all__ = [
    "DEFAULT_LEVELS",
    "DEFAULT_REDACT",
    "REDACTED",
    "STANDARD_METRICS",
    "AuditSink",
    "JobContextFilter",
    "JsonFormatter",
    "Logs",
    "Metric",
    "MetricsServer",
    "Redactor",
    "Route",
    "SignalLogSink",
    "Span",
    "Telemetry",
    "configure_logging",
    "install_record_factory",
    "read_audit",
    "serve_metrics",
]
