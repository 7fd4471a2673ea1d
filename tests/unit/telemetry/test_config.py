"""Telemetry config is checked eagerly: bad specs fail where they are written."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conveyor import ConfigError, IntKey, Signal, StringKey
from conveyor import signals as sig
from conveyor.telemetry import Logs, Metric, Route, Span, Telemetry
from conveyor.testing import memory_app, run_until_idle

EMAIL_SENT = Signal("email.sent", "An email left.", [StringKey("domain"), IntKey("bytes"),
                                                     StringKey("job_type")])


def test_unknown_label_key_names_the_signal_and_its_keys() -> None:
    with pytest.raises(ConfigError, match=r"'queues' is not a key of signal 'job.completed'.*job_type"):
        Metric(sig.JOB_COMPLETED, "done_total", labels=["queues"])


def test_unknown_value_key_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"value_key 'elapsed' is not a key of signal 'job.completed'"):
        Metric(sig.JOB_COMPLETED, "d", kind="histogram", value_key="elapsed")


def test_job_id_label_is_rejected_as_unbounded() -> None:
    with pytest.raises(ConfigError, match=r"label 'job_id' is unbounded"):
        Metric(sig.JOB_COMPLETED, "done_total", labels=["queue", "job_id"])


def test_duration_label_is_rejected_as_unbounded() -> None:
    with pytest.raises(ConfigError, match=r"label 'duration' is unbounded"):
        Metric(sig.JOB_COMPLETED, "done_total", labels=["duration"])


def test_bad_kind_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"kind must be one of counter, histogram, gauge, not 'summary'"):
        Metric(sig.JOB_COMPLETED, "done", kind="summary")


def test_histogram_and_set_gauge_need_a_value_key() -> None:
    with pytest.raises(ConfigError, match="histogram needs a value_key"):
        Metric(sig.JOB_COMPLETED, "d", kind="histogram")
    with pytest.raises(ConfigError, match="gauge needs a value_key"):
        Metric(sig.QUEUE_DEPTH, "q", kind="gauge")


def test_value_key_must_be_numeric() -> None:
    with pytest.raises(ConfigError, match=r"value_key 'queue' is a string key, not a number"):
        Metric(sig.QUEUE_DEPTH, "q", kind="gauge", value_key="queue")


def test_decrement_only_for_gauges() -> None:
    with pytest.raises(ConfigError, match="only a gauge takes decrement signals"):
        Metric(sig.JOB_STARTED, "x_total", decrement=[sig.JOB_COMPLETED])


def test_decrement_signals_need_the_labels_too() -> None:
    with pytest.raises(ConfigError, match=r"'job_type' is not a key of signal 'worker.stopped'"):
        Metric(sig.JOB_STARTED, "running", kind="gauge", decrement=sig.WORKER_STOPPED,
               labels=["job_type"])


@pytest.mark.parametrize("name", ["1abc", "with-dash", "with space", ""])
def test_bad_metric_names(name: str) -> None:
    with pytest.raises(ConfigError, match="metric name"):
        Metric(sig.JOB_COMPLETED, name)


def test_buckets_must_increase_and_belong_to_histograms() -> None:
    with pytest.raises(ConfigError, match="strictly increasing"):
        Metric(sig.JOB_COMPLETED, "d", kind="histogram", value_key="duration", buckets=[1, 1, 2])
    with pytest.raises(ConfigError, match="buckets are for histograms"):
        Metric(sig.JOB_COMPLETED, "d_total", buckets=[1, 2])


def test_scale_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="scale must be a finite number > 0"):
        Metric(sig.JOB_COMPLETED, "d", kind="histogram", value_key="duration", scale=0)


def test_signal_names_resolve_to_builtins_and_unknown_names_fail() -> None:
    m = Metric("job.completed", "done_total", labels=["queue"])
    assert m.signals == (sig.JOB_COMPLETED,)
    with pytest.raises(ConfigError, match=r"unknown signal 'email.sent'.*Signal objects"):
        Metric("email.sent", "sent_total")


def test_user_signals_map_with_their_own_keys() -> None:
    m = Metric(EMAIL_SENT, "emails_total", labels=["domain"], value_key="bytes")
    assert m.label_names == ("domain",)


def test_entries_sharing_a_name_must_agree() -> None:
    a = Metric(sig.JOB_COMPLETED, "jobs_total", labels=["queue"])
    b = Metric(sig.JOB_FAILED, "jobs_total", labels=["queue", "job_type"])
    with pytest.raises(ConfigError, match="'jobs_total' is defined more than once"):
        Telemetry(metrics=[a, b], tracing=False)


def test_span_correlation_key_must_be_on_start_and_end() -> None:
    with pytest.raises(ConfigError, match=r"correlation_key 'job_id' is not a key of signal 'queue.depth'"):
        Span(sig.JOB_STARTED, [sig.QUEUE_DEPTH])
    with pytest.raises(ConfigError, match="start signal cannot also end"):
        Span(sig.JOB_STARTED, [sig.JOB_STARTED, sig.JOB_COMPLETED])
    assert Span(sig.JOB_STARTED, sig.JOB_COMPLETED).name == "job.started"


def test_logs_reject_unknown_levels_and_signals() -> None:
    with pytest.raises(ConfigError, match="unknown level 'LOUD'"):
        Logs(levels={"job.completed": "LOUD"})
    with pytest.raises(ConfigError, match=r"unknown signal 'job\.finished'"):
        Logs(whitelist=["job.finished"])


def test_routes_are_checked() -> None:
    with pytest.raises(ConfigError, match="unknown sink 'pager'"):
        Telemetry(routes=[Route(["job.dead"], "pager")], tracing=False)
    with pytest.raises(ConfigError, match=r"'worker.started' has no 'job_type' key"):
        Route([sig.WORKER_STARTED], "audit", job_types=["email"])
    with pytest.raises(ConfigError, match="built in"):
        Telemetry(sinks={"metrics": print}, tracing=False)
    with pytest.raises(ConfigError, match="not callable"):
        Telemetry(sinks={"audit": "audit.jsonl"}, tracing=False)  # type: ignore[dict-item]


def test_metrics_without_a_backend_are_an_error() -> None:
    with pytest.raises(ConfigError, match="metrics need a backend"):
        Telemetry(metrics=[Metric(sig.JOB_COMPLETED, "d_total")], prometheus=False, tracing=False)
    assert Telemetry(prometheus=False, tracing=False).registry is None


def test_installing_twice_on_one_app_subscribes_once() -> None:
    telemetry = Telemetry(metrics=[Metric(sig.JOB_COMPLETED, "done_total", labels=["queue"])])
    app = memory_app()
    telemetry.install(app)
    telemetry.install(app)
    assert len(app.middleware) == 1

    @app.job(name="noop")
    def noop() -> None:
        pass

    noop.send()
    run_until_idle(app)
    assert telemetry.registry is not None
    assert telemetry.registry.get_sample_value("done_total", {"queue": "default"}) == 1.0


def test_importing_conveyor_and_its_telemetry_package_stays_light() -> None:
    code = (
        "import sys, conveyor, conveyor.telemetry;"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('prometheus_client', 'opentelemetry')];"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
