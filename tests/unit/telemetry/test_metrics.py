"""Signals become Prometheus (and OpenTelemetry) metrics, with real client libraries."""

from __future__ import annotations

import time
import urllib.request
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest

from conveyor import App, DurationKey, IntKey, NonRetryable, Signal, StringKey, current_job
from conveyor import signals as sig
from conveyor.telemetry import STANDARD_METRICS, Metric, Telemetry, serve_metrics
from conveyor.testing import memory_app, run_until_idle
from tests.unit.test_worker_leases import VT, take_over

JOB = {"queue": "default", "job_type": "work"}
MEASURED = Signal("test.measured", "A measurement.",
                  [StringKey("queue"), DurationKey("took"), IntKey("items")])
EMAIL_SENT = Signal("email.sent", "An email left.", [StringKey("domain")])


def registry_of(t: Telemetry) -> CollectorRegistry:
    assert t.registry is not None
    return t.registry


def standard_app() -> tuple[App, CollectorRegistry]:
    telemetry = Telemetry(tracing=False, logs=None)
    app = App("memory://", telemetry=telemetry)

    @app.job(name="work", max_attempts=2, backoff=lambda n: 0.0)
    def work(n: int) -> None:
        ctx = current_job()
        assert ctx is not None
        if n == 1 and ctx.attempt == 1:
            raise ValueError("flaky once")
        if n == 2:
            raise NonRetryable("never")

    for n in (0, 1, 2, 3):
        work.send(n)
    run_until_idle(app)
    return app, registry_of(telemetry)


def test_standard_set_counts_the_job_lifecycle() -> None:
    _, reg = standard_app()
    value = reg.get_sample_value
    assert value("conveyor_jobs_enqueued_total", JOB) == 4
    assert value("conveyor_jobs_completed_total", JOB) == 3
    assert value("conveyor_jobs_failed_total", JOB) == 2
    assert value("conveyor_jobs_retried_total", JOB) == 1
    assert value("conveyor_jobs_dead_total", {**JOB, "reason": "non_retryable"}) == 1
    assert value("conveyor_job_duration_seconds_count", JOB) == 5
    assert value("conveyor_jobs_in_progress", JOB) == 0
    assert value("conveyor_workers", {}) == 0
    for state in ("ready", "delayed", "in_flight", "dead"):
        assert value("conveyor_queue_depth", {"queue": "default", "state": state}) is not None
    assert value("conveyor_queue_latency_seconds", {"queue": "default"}) is not None


def test_standard_set_has_every_documented_name_and_never_a_job_id_label() -> None:
    names = {m.name for m in STANDARD_METRICS}
    assert names == {
        "conveyor_jobs_enqueued_total", "conveyor_jobs_completed_total",
        "conveyor_jobs_failed_total", "conveyor_jobs_retried_total", "conveyor_jobs_dead_total",
        "conveyor_job_duration_seconds", "conveyor_queue_depth",
        "conveyor_queue_latency_seconds", "conveyor_jobs_in_progress", "conveyor_workers",
        "conveyor_worker_errors_total",
        "conveyor_worker_threads_stuck",
        "conveyor_dead_letters_retried_total", "conveyor_dead_letters_purged_total",
        "conveyor_dead_letters_pruned_total",
        "conveyor_leases_lost_total", "conveyor_acks_refused_total",
    }
    _, reg = standard_app()
    text = generate_latest(reg).decode()
    assert "job_id" not in text
    assert "worker_id" not in text


def test_worker_errors_are_counted_by_queue_job_type_and_stage() -> None:
    telemetry = Telemetry(tracing=False, logs=None)
    app = App("memory://", telemetry=telemetry)

    @app.job(name="work", max_attempts=2, backoff=lambda n: -1.0)  # not a delay: the default is used
    def work() -> None:
        if current_job().attempt == 1:  # type: ignore[union-attr]
            raise ValueError("flaky once")

    work.send()
    result = run_until_idle(app)
    assert result.counters.completed == 1
    value = registry_of(telemetry).get_sample_value
    assert value("conveyor_worker_errors_total", {**JOB, "stage": "backoff"}) == 1


def test_in_progress_and_workers_gauges_go_up_and_down() -> None:
    telemetry = Telemetry(tracing=False, logs=None)
    app = App("memory://", telemetry=telemetry)
    reg = registry_of(telemetry)
    seen: list[float | None] = []

    @app.job(name="work")
    def work() -> None:
        seen.append(reg.get_sample_value("conveyor_jobs_in_progress", JOB))
        seen.append(reg.get_sample_value("conveyor_workers", {}))

    work.send()
    run_until_idle(app, concurrency=1)
    assert seen == [1.0, 1.0]
    assert reg.get_sample_value("conveyor_jobs_in_progress", JOB) == 0.0
    assert reg.get_sample_value("conveyor_workers", {}) == 0.0


def test_histogram_observes_scaled_values_into_buckets() -> None:
    telemetry = Telemetry(tracing=False, logs=None, metrics=[
        Metric(MEASURED, "took_ms", kind="histogram", value_key="took", scale=1000,
               labels=["queue"], buckets=[5, 50, 500]),
    ])
    app = App("memory://", telemetry=telemetry)
    for seconds in (0.001, 0.02, 0.03, 0.4, 2.0):
        app.emit(MEASURED, queue="q", took=seconds, items=1)
    reg = registry_of(telemetry)
    labels = {"queue": "q"}
    assert reg.get_sample_value("took_ms_count", labels) == 5
    assert reg.get_sample_value("took_ms_sum", labels) == pytest.approx(2451.0)
    assert reg.get_sample_value("took_ms_bucket", {**labels, "le": "5.0"}) == 1
    assert reg.get_sample_value("took_ms_bucket", {**labels, "le": "50.0"}) == 3
    assert reg.get_sample_value("took_ms_bucket", {**labels, "le": "500.0"}) == 4
    assert reg.get_sample_value("took_ms_bucket", {**labels, "le": "+Inf"}) == 5


def test_counter_adds_value_key_and_gauge_sets_it() -> None:
    telemetry = Telemetry(tracing=False, logs=None, metrics=[
        Metric(MEASURED, "items_total", value_key="items", labels=["queue"]),
        Metric(MEASURED, "last_items", kind="gauge", value_key="items", labels=["queue"]),
    ])
    app = App("memory://", telemetry=telemetry)
    app.emit(MEASURED, queue="q", took=0.1, items=3)
    app.emit(MEASURED, queue="q", took=0.1, items=4)
    reg = registry_of(telemetry)
    assert reg.get_sample_value("items_total", {"queue": "q"}) == 7
    assert reg.get_sample_value("last_items", {"queue": "q"}) == 4


def test_user_signal_emitted_from_a_handler_is_counted() -> None:
    telemetry = Telemetry(tracing=False, logs=None, metrics=[
        Metric(EMAIL_SENT, "emails_sent_total", labels=["domain"]),
    ])
    app = App("memory://", telemetry=telemetry)

    @app.job(name="email")
    def email(to: str) -> None:
        app.emit(EMAIL_SENT, domain=to.split("@")[1])

    @app.job(name="email_async")
    async def email_async(to: str) -> None:
        app.emit(EMAIL_SENT, domain=to.split("@")[1])

    for to in ("a@x.org", "b@x.org", "c@y.org"):
        email.send(to)
    email_async.send("d@y.org")
    run_until_idle(app)
    reg = registry_of(telemetry)
    assert reg.get_sample_value("emails_sent_total", {"domain": "x.org"}) == 2
    assert reg.get_sample_value("emails_sent_total", {"domain": "y.org"}) == 2


def test_each_telemetry_has_its_own_registry() -> None:
    a, b = Telemetry(tracing=False), Telemetry(tracing=False)
    app_a, _ = App("memory://", telemetry=a), App("memory://", telemetry=b)
    app_a.emit(sig.JOB_ENQUEUED, job_id="1", job_type="t", queue="q", priority=0, delay=0.0)
    labels = {"queue": "q", "job_type": "t"}
    assert registry_of(a).get_sample_value("conveyor_jobs_enqueued_total", labels) == 1
    assert registry_of(b).get_sample_value("conveyor_jobs_enqueued_total", labels) is None


def test_a_given_registry_is_used() -> None:
    reg = CollectorRegistry()
    telemetry = Telemetry(tracing=False, prometheus_registry=reg)
    assert telemetry.registry is reg
    assert reg.get_sample_value("conveyor_workers", {}) == 0


def test_opentelemetry_meter_provider_gets_the_same_numbers() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    telemetry = Telemetry(tracing=False, logs=None, prometheus=False, meter_provider=provider,
                          metrics=[
                              Metric(MEASURED, "items_total", value_key="items", labels=["queue"]),
                              Metric(MEASURED, "took_ms", kind="histogram", value_key="took",
                                     scale=1000, labels=["queue"], buckets=[10, 100]),
                              Metric(sig.JOB_STARTED, "running", kind="gauge",
                                     decrement=sig.JOB_COMPLETED, labels=["queue"]),
                          ])
    app = App("memory://", telemetry=telemetry)
    app.emit(MEASURED, queue="q", took=0.005, items=2)
    app.emit(MEASURED, queue="q", took=0.050, items=5)
    app.emit(sig.JOB_STARTED, job_id="1", job_type="t", queue="q", attempt=1, worker_id="w",
             latency=0.0, redelivery="")
    data = reader.get_metrics_data()
    assert data is not None
    points: dict[str, list[Any]] = {m.name: list(m.data.data_points) for rm in data.resource_metrics
                                     for sm in rm.scope_metrics for m in sm.metrics}
    assert [(p.attributes, p.value) for p in points["items_total"]] == [({"queue": "q"}, 7)]
    [hist] = points["took_ms"]
    assert isinstance(hist, HistogramDataPoint)
    assert (hist.count, list(hist.explicit_bounds)) == (2, [10.0, 100.0])
    assert hist.sum == pytest.approx(55.0)
    assert [p.value for p in points["running"]] == [1]
    provider.shutdown()


def test_serve_metrics_exposes_the_registry_over_http() -> None:
    telemetry = Telemetry(tracing=False, logs=None, metrics=[
        Metric(MEASURED, "items_total", value_key="items", labels=["queue"]),
    ])
    App("memory://", telemetry=telemetry).emit(MEASURED, queue="q", took=0.1, items=3)
    server = serve_metrics(telemetry.registry, "127.0.0.1", 0)
    try:
        assert server.port > 0
        with urllib.request.urlopen(server.url, timeout=5) as resp:
            body = resp.read().decode()
    finally:
        server.close()
    assert 'items_total{queue="q"} 3.0' in body.splitlines()


def test_new_label_combinations_stop_at_the_series_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    from conveyor.telemetry import metrics

    monkeypatch.setattr(metrics, "MAX_SERIES", 3)
    telemetry = Telemetry(tracing=False, logs=None, metrics=[
        Metric(EMAIL_SENT, "emails_sent_total", labels=["domain"]),
    ])
    app = memory_app()
    telemetry.install(app)
    for i in range(10):
        app.emit(EMAIL_SENT, domain=f"d{i}.org")
    text = generate_latest(registry_of(telemetry)).decode()
    assert text.count("emails_sent_total{") == 3


def test_entries_sharing_a_name_may_order_labels_differently() -> None:
    telemetry = Telemetry(tracing=False, logs=None, metrics=[
        Metric(sig.JOB_COMPLETED, "outcomes_total", labels=["queue", "job_type"],
               const_labels={"outcome": "ok"}),
        Metric(sig.JOB_FAILED, "outcomes_total", labels=["job_type", "queue"],
               const_labels={"outcome": "error"}),
    ])
    app = App("memory://", telemetry=telemetry)

    @app.job(name="work", max_attempts=1)
    def work(fail: bool) -> None:
        if fail:
            raise NonRetryable("no")

    work.send(False)
    work.send(True)
    work.send(True)
    run_until_idle(app)
    reg = registry_of(telemetry)
    assert reg.get_sample_value("outcomes_total", {**JOB, "job_type": "work", "outcome": "ok"}) == 1
    assert reg.get_sample_value("outcomes_total", {**JOB, "job_type": "work", "outcome": "error"}) == 2


def test_standard_set_counts_lost_leases_and_refused_acks() -> None:
    telemetry = Telemetry(tracing=False, logs=None)
    app = App("memory://", telemetry=telemetry)

    @app.job(name="work")
    async def work() -> None:
        time.sleep(VT * 4)  # blocks the loop: no heartbeat, the lease expires
        take_over(app)

    work.send()
    run_until_idle(app, visibility_timeout=VT, poll_interval=0.05)
    reg = registry_of(telemetry)
    assert reg.get_sample_value("conveyor_acks_refused_total", JOB) == 1
    lost = [
        reg.get_sample_value("conveyor_leases_lost_total", {**JOB, "detected_by": how}) for how in ("extend", "ack")
    ]
    assert sum(n or 0 for n in lost) == 1
    assert reg.get_sample_value("conveyor_jobs_completed_total", JOB) is None
    assert reg.get_sample_value("conveyor_jobs_in_progress", JOB) == 0
