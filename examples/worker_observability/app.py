"""Seed example: 100 ``email`` jobs, 5 of which fail for good, fully observed.

Metrics ``jobs_completed_total``, ``jobs_failed_total``, ``job_duration_ms`` and
``queue_depth``; a ``job_processing`` span per job correlated by job_id; JSON
logs with job context. Run it with ``python run.py`` or through the CLI (see
README.md). ``build_app`` lets tests plug in their own broker and tracer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from typing import Any

from conveyor import App, NonRetryable
from conveyor import signals as sig
from conveyor.telemetry import Logs, Metric, Span, Telemetry

log = logging.getLogger("examples.email")

JOBS = 100
FAILING = frozenset(range(0, JOBS, 20))
"""Job numbers whose address is rejected: 0, 20, 40, 60, 80 (5 of 100)."""
LABELS = ["queue", "job_type"]
DURATION_MS_BUCKETS = [1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000]


def build_telemetry(tracer_provider: Any = None) -> Telemetry:
    """The example's telemetry: four metrics, one correlated span, failure logs."""
    return Telemetry(
        metrics=[
            Metric(sig.JOB_COMPLETED, "jobs_completed_total", labels=LABELS,
                   description="Emails sent."),
            Metric(sig.JOB_FAILED, "jobs_failed_total", labels=LABELS,
                   description="Failed attempts at sending an email."),
            Metric([sig.JOB_COMPLETED, sig.JOB_FAILED], "job_duration_ms", kind="histogram",
                   value_key="duration", scale=1000, labels=LABELS, unit="ms",
                   buckets=DURATION_MS_BUCKETS, description="Time spent per attempt, in ms."),
            Metric(sig.QUEUE_DEPTH, "queue_depth", kind="gauge", value_key="ready",
                   labels=["queue"], description="Jobs ready to run."),
        ],
        traces=[Span(start=sig.JOB_STARTED, end=[sig.JOB_COMPLETED, sig.JOB_FAILED],
                     correlation_key="job_id", name="job_processing")],
        logs=Logs(whitelist=[sig.JOB_COMPLETED, sig.JOB_FAILED, sig.JOB_DEAD,
                             sig.WORKER_STARTED, sig.WORKER_STOPPED]),
        redact=["password", "token", "api_key"],
        tracer_provider=tracer_provider,
    )


def otlp_tracer_provider() -> Any:
    """An OTLP/HTTP tracer provider when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set, else None."""
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "email-worker"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def build_app(url: str | None = None, tracer_provider: Any = None) -> App:
    """The app with its ``email`` job on queue ``default``."""
    app = App(url, telemetry=build_telemetry(tracer_provider))

    @app.job(name="email", queue="default", max_attempts=3)
    async def email(n: int, to: str, smtp_password: str = "") -> None:
        """Pretend to send an email; job numbers in FAILING are rejected for good."""
        log.info("sending email %d", n, extra={"to": to, "smtp_password": smtp_password})
        await asyncio.sleep(random.uniform(0.001, 0.005))
        if n in FAILING:
            raise NonRetryable(f"mailbox {to} does not exist")

    return app


def enqueue_all(app: App, count: int = JOBS) -> list[str]:
    """Send ``count`` email jobs in one batch; returns their ids."""
    return app.send_batch([
        app.message("email", [n, f"user{n}@example.com"], {"smtp_password": "hunter2"})
        for n in range(count)
    ])


app = build_app(os.environ.get("CONVEYOR_BROKER_URL") or "sqlite:///worker_observability.db",
                otlp_tracer_provider())
