"""The :class:`Telemetry` object: declarative config, checked eagerly, wired in by ``install``.

    telemetry = Telemetry(
        metrics=[Metric(JOB_COMPLETED, "jobs_completed_total", labels=["queue", "job_type"])],
        traces=[Span(JOB_STARTED, [JOB_COMPLETED, JOB_FAILED], "job_id", name="job_processing")],
        logs=Logs(whitelist=["job.failed", "job.dead"]),
        redact=["password", "token"],
    )
    app = App("sqlite:///jobs.db", telemetry=telemetry)
"""

from __future__ import annotations

import importlib.util
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .metrics import Backend, MetricPipeline, OtelMetricsBackend, PrometheusBackend
from .redact import DEFAULT_REDACT, Redactor
from .routing import AuditSink, EventSink, Route, attach_routes, check_routes
from .spec import Logs, Metric, Span
from .standard import STANDARD_METRICS

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider
    from prometheus_client import CollectorRegistry

    from ..app import App
    from .logs import SignalLogSink
    from .tracing import SignalSpans, TracingMiddleware

__all__ = ["Logs", "Metric", "Span", "Telemetry"]

_DEFAULT_LOGS = Logs()


def _otel_available() -> bool:
    return importlib.util.find_spec("opentelemetry") is not None and (
        importlib.util.find_spec("opentelemetry.trace") is not None
    )


class Telemetry:
    """Metrics, traces, logs and routes for an :class:`~conveyor.App`.

    * ``metrics``: :class:`Metric` mappings; None (the default) is the standard
      set (:data:`~conveyor.telemetry.STANDARD_METRICS`), ``[]`` is none.
    * ``traces``: :class:`Span` pairs of signals turned into spans.
    * ``logs``: which signals the signal log sink logs (None: no signal logs).
    * ``redact``: sensitive field names, redacted in logs, spans and audit files.
    * ``routes`` / ``sinks``: see :mod:`conveyor.telemetry.routing`.
    * ``prometheus`` / ``prometheus_registry``: the Prometheus backend (on by
      default, with a fresh registry per Telemetry).
    * ``meter_provider``: also record metrics with OpenTelemetry.
    * ``tracing`` / ``tracer_provider``: the producer/consumer spans
      (default: on when opentelemetry-api is installed; the global tracer
      provider unless one is given). ``include_args`` adds the job's redacted
      arguments to process spans.
    """

    def __init__(
        self,
        *,
        metrics: Sequence[Metric] | None = None,
        traces: Sequence[Span] = (),
        logs: Logs | None = _DEFAULT_LOGS,
        redact: Sequence[str] = DEFAULT_REDACT,
        routes: Sequence[Route] = (),
        sinks: Mapping[str, EventSink] | None = None,
        prometheus: bool = True,
        prometheus_registry: CollectorRegistry | None = None,
        meter_provider: MeterProvider | None = None,
        tracing: bool | None = None,
        tracer_provider: TracerProvider | None = None,
        include_args: bool = False,
    ) -> None:
        if isinstance(redact, str):
            raise ConfigError("redact is a list of field names, not one string")
        if logs is not None and not isinstance(logs, Logs):
            raise ConfigError(f"logs must be a Logs(...) or None, got {type(logs).__name__}")
        for span in traces:
            if not isinstance(span, Span):
                raise ConfigError(f"traces: expected Span entries, got {type(span).__name__}")
        self.metrics = tuple(STANDARD_METRICS if metrics is None else metrics)
        self.traces = tuple(traces)
        self.logs = logs
        self.redactor = Redactor(redact)
        self.routes = tuple(routes)
        self.sinks = dict(sinks or {})
        check_routes(self.routes, self.sinks)
        for sink in self.sinks.values():
            if isinstance(sink, AuditSink) and sink.redactor is None:
                sink.redactor = self.redactor
        otel = _otel_available()
        if tracing and not otel:
            raise ConfigError("tracing needs opentelemetry: pip install 'conveyor[otel]'")
        if (self.traces or tracer_provider is not None) and not otel:
            raise ConfigError("traces and tracer_provider need opentelemetry: "
                              "pip install 'conveyor[otel]'")
        self.tracing = otel if tracing is None else tracing
        self.tracer_provider = tracer_provider
        self.include_args = include_args
        self.pipeline = self._pipeline(prometheus, prometheus_registry, meter_provider,
                                       explicit=metrics is not None)
        self._apps: weakref.WeakSet[App] = weakref.WeakSet()
        self._middleware: TracingMiddleware | None = None
        self._spans: SignalSpans | None = None
        self._log_sink: SignalLogSink | None = None

    def _pipeline(
        self, prometheus: bool, registry: CollectorRegistry | None,
        meter_provider: MeterProvider | None, *, explicit: bool,
    ) -> MetricPipeline | None:
        to_metrics = any(r.sink == "metrics" for r in self.routes)
        if not self.metrics and not to_metrics:
            return None
        backends: list[Backend] = []
        if prometheus:
            backends.append(PrometheusBackend(registry))
        elif registry is not None:
            raise ConfigError("prometheus_registry given with prometheus=False")
        if meter_provider is not None:
            backends.append(OtelMetricsBackend(meter_provider))
        if not backends:
            if explicit or to_metrics:
                raise ConfigError("metrics need a backend: keep prometheus=True or pass a "
                                  "meter_provider")
            return None
        return MetricPipeline(self.metrics, backends)

    @property
    def registry(self) -> CollectorRegistry | None:
        """The Prometheus registry holding this Telemetry's metrics (serve it on /metrics)."""
        return self.pipeline.registry if self.pipeline is not None else None

    def log_sink(self) -> SignalLogSink:
        """The sink logging signals (also the built-in ``"logs"`` route target)."""
        if self._log_sink is None:
            from .logs import SignalLogSink

            self._log_sink = SignalLogSink(self.logs or _DEFAULT_LOGS, self.redactor)
        return self._log_sink

    def middleware(self) -> TracingMiddleware:
        """The tracing middleware (one per Telemetry)."""
        if self._middleware is None:
            from .tracing import TracingMiddleware

            self._middleware = TracingMiddleware(
                self.tracer_provider, self.redactor, include_args=self.include_args
            )
        return self._middleware

    def install(self, app: App) -> None:
        """Subscribe this Telemetry's sinks to ``app`` and add its middleware (once per app)."""
        if app in self._apps:
            return
        self._apps.add(app)
        bus = app.bus
        if self.pipeline is not None:
            self.pipeline.attach(bus)
        if self.tracing:
            app.middleware.insert(0, self.middleware())
        if self.traces:
            if self._spans is None:
                from .tracing import SignalSpans

                self._spans = SignalSpans(self.traces, self.tracer_provider, self.redactor)
            self._spans.attach(bus)
        if self.logs is not None:
            bus.subscribe(self.log_sink(), self.logs.signals)
        if self.routes:
            attach_routes(bus, self.routes, self._sink)

    def _sink(self, ref: Any) -> EventSink:
        if callable(ref):
            sink: EventSink = ref
            return sink
        if ref == "metrics":
            assert self.pipeline is not None
            return self.pipeline.signals_counter()
        if ref == "logs":
            return self.log_sink()
        return self.sinks[ref]

    def close(self) -> None:
        """End unfinished signal spans and close audit files."""
        if self._spans is not None:
            self._spans.close()
        for sink in self.sinks.values():
            close = getattr(sink, "close", None)
            if callable(close):
                close()

    def __repr__(self) -> str:
        parts = [f"metrics={len(self.metrics)}", f"traces={len(self.traces)}",
                 f"tracing={self.tracing}", f"routes={len(self.routes)}"]
        return f"Telemetry({', '.join(parts)})"
