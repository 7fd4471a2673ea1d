"""Routing signals to named sinks: audit files, alert hooks, metrics, logs; sinks are isolated."""

from __future__ import annotations

import asyncio
from pathlib import Path

from conveyor import App, Event, NonRetryable, Signal, StringKey
from conveyor import signals as sig
from conveyor.telemetry import AuditSink, Logs, Metric, Route, Telemetry, read_audit
from conveyor.testing import run_until_idle

from .conftest import JsonLines

EMAIL_SENT = Signal("email.sent", "An email left.", [StringKey("domain"), StringKey("job_type")])


def run(app: App, **jobs: int) -> dict[str, list[str]]:
    ids: dict[str, list[str]] = {}
    for name, count in jobs.items():
        ids[name] = [app.send_jobs([app.message(name)])[0] for _ in range(count)]
    run_until_idle(app)
    return ids


def register(app: App, *names: str, fail: bool = False) -> None:
    for name in names:
        def handler() -> None:
            if fail:
                raise NonRetryable("no")
        app.job(name=name, max_attempts=1)(handler)


def test_audit_sink_appends_only_the_chosen_job_types(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text('{"existing": true}\n')
    audit = AuditSink(path)
    app = App("memory://", telemetry=Telemetry(
        metrics=[], logs=None, tracing=False, sinks={"audit": audit},
        routes=[Route([sig.JOB_ENQUEUED, sig.JOB_COMPLETED], "audit", job_types=["payments.refund"])],
    ))
    register(app, "payments.refund", "email")
    ids = run(app, **{"payments.refund": 2, "email": 3})
    audit.close()
    records = read_audit(path)
    assert records[0] == {"existing": True}
    audited = records[1:]
    assert [r["signal"] for r in audited].count("job.enqueued") == 2
    assert [r["signal"] for r in audited].count("job.completed") == 2
    assert {r["attributes"]["job_id"] for r in audited} == set(ids["payments.refund"])
    assert all(r["attributes"]["job_type"] == "payments.refund" for r in audited)
    assert all(isinstance(r["timestamp"], float) for r in audited)


def test_audit_sink_redacts_with_the_telemetry_list(tmp_path: Path) -> None:
    signup = Signal("user.signup", "", [StringKey("user"), StringKey("ssn")])
    audit = AuditSink(tmp_path / "a.jsonl")
    app = App("memory://", telemetry=Telemetry(
        metrics=[], logs=None, tracing=False, redact=["ssn"], sinks={"audit": audit},
        routes=[Route([signup], "audit")],
    ))
    app.emit(signup, user="ann", ssn="123-45-6789")
    audit.close()
    [record] = read_audit(tmp_path / "a.jsonl")
    assert record["attributes"] == {"user": "ann", "ssn": "[REDACTED]"}


def test_alerts_hook_gets_dead_jobs_with_errors() -> None:
    alerts: list[Event] = []
    app = App("memory://", telemetry=Telemetry(
        metrics=[], logs=None, tracing=False, sinks={"alerts": alerts.append},
        routes=[Route([sig.JOB_DEAD], "alerts", queues=["default"])],
    ))
    register(app, "doomed", fail=True)
    [job_id] = run(app, doomed=1)["doomed"]
    [event] = alerts
    assert (event.name, event.attrs["job_id"], event.attrs["reason"]) == ("job.dead", job_id, "non_retryable")
    assert event.attrs["error"].type == "NonRetryable"


def test_where_predicate_and_direct_callables() -> None:
    got: list[str] = []
    app = App("memory://", telemetry=Telemetry(
        metrics=[], logs=None, tracing=False,
        routes=[Route([EMAIL_SENT], lambda e: got.append(e.attrs["domain"]),
                      where=lambda e: e.attrs["domain"].endswith(".org"))],
    ))
    for domain in ("a.org", "b.com", "c.org"):
        app.emit(EMAIL_SENT, domain=domain, job_type="email")
    assert got == ["a.org", "c.org"]


def test_metrics_route_counts_user_signals() -> None:
    telemetry = Telemetry(metrics=[], logs=None, tracing=False,
                          routes=[Route([EMAIL_SENT, sig.JOB_DEAD], "metrics")])
    app = App("memory://", telemetry=telemetry)
    app.emit(EMAIL_SENT, domain="x", job_type="email")
    app.emit(EMAIL_SENT, domain="y", job_type="email")
    assert telemetry.registry is not None
    assert telemetry.registry.get_sample_value("conveyor_signals_total", {"signal": "email.sent"}) == 2
    assert telemetry.registry.get_sample_value("conveyor_signals_total", {"signal": "job.dead"}) is None


def test_logs_route_logs_only_matching_events(json_logs: JsonLines) -> None:
    app = App("memory://", telemetry=Telemetry(
        metrics=[], logs=None, tracing=False,
        routes=[Route([EMAIL_SENT], "logs", job_types=["newsletter"])],
    ))
    app.emit(EMAIL_SENT, domain="x", job_type="newsletter")
    app.emit(EMAIL_SENT, domain="y", job_type="receipt")
    assert [x["attributes"]["domain"] for x in json_logs.signal("email.sent")] == ["x"]


def test_a_raising_sink_does_not_stop_other_sinks_metrics_or_the_job(json_logs: JsonLines) -> None:
    delivered: list[str] = []

    def broken(event: Event) -> None:
        raise RuntimeError("sink down")

    telemetry = Telemetry(
        metrics=[Metric(sig.JOB_COMPLETED, "done_total", labels=["job_type"])],
        logs=Logs(whitelist=[sig.JOB_COMPLETED]), tracing=False,
        sinks={"broken": broken, "ok": lambda e: delivered.append(e.name)},
        routes=[Route([sig.JOB_COMPLETED], "broken"), Route([sig.JOB_COMPLETED], "ok")],
    )
    app = App("memory://", telemetry=telemetry)
    register(app, "work")
    result_ids = run(app, work=3)["work"]
    assert delivered == ["job.completed"] * 3
    assert telemetry.registry is not None
    assert telemetry.registry.get_sample_value("done_total", {"job_type": "work"}) == 3
    assert len(json_logs.signal("job.completed")) == 3
    failures = [x for x in json_logs.logger("conveyor.signals") if "failed on job.completed" in x["body"]]
    assert len(failures) == 3 and failures[0]["error"]["message"] == "sink down"
    assert len(result_ids) == 3


def test_async_sinks_are_awaited() -> None:
    got: list[str] = []

    async def notify(event: Event) -> None:
        await asyncio.sleep(0)
        got.append(event.attrs["job_id"])

    app = App("memory://", telemetry=Telemetry(
        metrics=[], logs=None, tracing=False, routes=[Route([sig.JOB_COMPLETED], notify)]))
    register(app, "work")
    ids = run(app, work=2)["work"]
    assert sorted(got) == sorted(ids)
