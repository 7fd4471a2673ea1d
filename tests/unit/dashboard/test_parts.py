"""Pure helpers: time parsing, trace ids, payload redaction, samples, filters; the CLI command."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import urllib.error
import urllib.request

import pytest
from click.testing import CliRunner

from conveyor import App
from conveyor.brokers import QueueStats
from conveyor.cli import main
from conveyor.dashboard import DashboardServer
from conveyor.dashboard.filters import safe_url, seconds, ts
from conveyor.dashboard.model import check_trace_url, payload, trace_id, trace_link
from conveyor.dashboard.query import BadRequest, check_ids, parse_when
from conveyor.dashboard.sampler import BUCKET, Outcomes, Samples
from conveyor.signals import JOB_COMPLETED, JOB_FAILED, Bus, Event
from conveyor.telemetry.redact import Redactor

from .conftest import TOKEN, job_body


def test_parse_when() -> None:
    now = 1_700_000_000.0
    assert parse_when("", now) is None and parse_when(None, now) is None
    assert parse_when("15m", now) == now - 900
    assert parse_when("2h", now) == now - 7200
    assert parse_when("1.5d", now) == now - 1.5 * 86400
    assert parse_when("1700000000", now) == 1_700_000_000.0
    assert parse_when("2023-11-14T22:13:20", now) == 1_700_000_000.0  # naive is UTC
    assert parse_when("2023-11-14T23:13:20+01:00", now) == 1_700_000_000.0
    assert parse_when("2023-11-14T22:13:20Z", now) == 1_700_000_000.0
    with pytest.raises(BadRequest, match="not a time"):
        parse_when("soon", now)


def test_check_ids() -> None:
    assert check_ids(["a", "b", "a"]) == ["a", "b"]
    for bad in ("a", [1], ["has space"], ["x" * 201], ["<b>"]):
        with pytest.raises(BadRequest):
            check_ids(bad)
    with pytest.raises(BadRequest, match="at most"):
        check_ids([f"id{i}" for i in range(1001)])


def test_trace_ids_and_links() -> None:
    tid = "4bf92f3577b34da6a3ce929d0e0e4736"
    assert trace_id({"traceparent": f"00-{tid}-00f067aa0ba902b7-01"}) == tid
    assert trace_id({"traceparent": f"00-{tid.upper()}-00f067aa0ba902b7-01"}) == tid
    assert trace_id({"traceparent": "00-" + "0" * 32 + "-00f067aa0ba902b7-01"}) == ""
    assert trace_id({"traceparent": "garbage"}) == "" and trace_id({}) == ""
    template = check_trace_url("https://tempo.example/explore?trace={trace_id}&x=1")
    assert trace_link(template, tid) == f"https://tempo.example/explore?trace={tid}&x=1"
    assert trace_link(None, tid) == "" and trace_link(template, "") == ""
    assert check_trace_url(None) is None
    for bad in ("ftp://x/{trace_id}", "javascript:{trace_id}", "http://x/trace"):
        with pytest.raises(ValueError):
            check_trace_url(bad)


def test_payload_redacts_by_parameter_name(plain_app: App) -> None:
    redactor = Redactor()
    body = job_body("<script>alert(1)</script>", "hunter2", {"token": "abc", "keep": 1}, headers={"Authorization": "x"})
    data = payload(plain_app, body, redactor)
    assert data["decoded"] is True
    assert data["args"] == ["[REDACTED]", {"token": "[REDACTED]", "keep": 1}]
    assert data["headers"] == {"Authorization": "[REDACTED]"}
    unknown = payload(plain_app, job_body("not.registered", "hunter2"), redactor)
    assert unknown["args"] == ["hunter2"]  # no parameter names to go by
    raw = payload(plain_app, b"\xff\xfe not json", redactor)
    assert raw["decoded"] is False and "not json" in raw["raw"]
    other = payload(plain_app, b'{"password": "p", "x": 1}', redactor)
    assert other["decoded"] is False and "[REDACTED]" in other["raw"] and '"p"' not in other["raw"]


def test_outcomes_count_per_minute() -> None:
    now = 1_700_000_000.0 - 1_700_000_000.0 % BUCKET + 30
    outcomes = Outcomes(clock=lambda: now)
    for _ in range(3):
        outcomes(Event(JOB_COMPLETED, {}, now))
    outcomes(Event(JOB_FAILED, {}, now - 120))
    chart = outcomes.per_minute()
    assert len(chart["x"]) == 60 and chart["x"][-1] == now - 30
    series = {s["label"]: s["values"] for s in chart["series"]}
    assert series["completed"][-1] == 3 and series["failed"][-3] == 1
    assert outcomes.totals(60) == {"completed": 3, "failed": 0, "dead": 0}
    assert outcomes.totals(300)["failed"] == 1
    assert outcomes.seen == 4


def test_outcomes_listen_on_the_bus() -> None:
    outcomes, bus = Outcomes(), Bus()
    sub = outcomes.attach(bus)
    bus.emit(JOB_COMPLETED, job_id="j", job_type="t", queue="q", attempt=1, worker_id="w", duration=0.1)
    sub.cancel()
    bus.emit(JOB_COMPLETED, job_id="j", job_type="t", queue="q", attempt=1, worker_id="w", duration=0.1)
    assert outcomes.seen == 1


def test_samples_keep_one_hour() -> None:
    samples = Samples()
    for i in range(5):
        samples.add_stats({"a": QueueStats(ready=i, dead=1), "b": QueueStats(ready=1)}, at=1000.0 + i * 1000)
    chart = samples.depth.chart(["ready", "dead"])
    assert chart["x"] == [2000.0, 3000.0, 4000.0, 5000.0]  # older than an hour before the last is gone
    assert chart["series"] == [{"label": "ready", "values": [2, 3, 4, 5]}, {"label": "dead", "values": [1, 1, 1, 1]}]
    samples.add_worker("w1", 10.0, 2 * 1_048_576, 12.5)
    samples.add_worker("w1", 10.0, 3 * 1_048_576, 50.0)  # the same heartbeat again: ignored
    samples.add_worker("w2", 10.0, None, None)
    assert set(samples.workers) == {"w1"}
    assert samples.workers["w1"].chart()["series"] == [
        {"label": "cpu_percent", "values": [12.5]},
        {"label": "rss_mb", "values": [2.0]},
    ]
    samples.forget_workers(set())
    assert samples.workers == {}


def test_filters() -> None:
    assert ts(0) == "" and ts(None) == ""
    assert ts(1_700_000_000.0) == "2023-11-14 22:13:20"
    assert ts("2023-11-14T22:13:20.000+00:00") == "2023-11-14 22:13:20"
    assert [seconds(v) for v in (0.25, 4.21, 185, 7800, 90000)] == ["250ms", "4.2s", "3m 5s", "2h 10m", "1d 1h"]
    assert safe_url("postgresql://app:secret@db:5432/jobs") == "postgresql://app:***@db:5432/jobs"
    assert safe_url("sqlite:///x.db") == "sqlite:///x.db"
    assert dt.datetime.fromisoformat("2023-11-14T22:13:20+00:00").timestamp() == 1_700_000_000.0


def test_command_is_registered() -> None:
    result = CliRunner().invoke(main, ["dashboard", "--help"])
    assert result.exit_code == 0
    for option in ("--host", "--port", "--token", "--trace-url", "--metrics", "CONVEYOR_DASHBOARD_TOKEN"):
        assert option in result.output


def test_command_rejects_a_short_token() -> None:
    result = CliRunner().invoke(main, ["dashboard", "conveyor.demo.app:app", "--token", "short"])
    assert result.exit_code != 0
    assert "at least 16" in result.output


def fetch(url: str, token: str | None = None) -> tuple[int, object]:
    """GET ``url`` (blocking; call it off the event loop): status and decoded JSON."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_server_serves_on_a_free_port(plain_app: App) -> None:
    async def go() -> None:
        server = DashboardServer(plain_app, port=0, token=TOKEN)
        url = await server.start()
        assert url == f"http://127.0.0.1:{server.port}/?token={TOKEN}" and server.port > 0
        assert await asyncio.to_thread(fetch, server.url + "healthz") == (200, {"status": "ok"})
        assert (await asyncio.to_thread(fetch, server.url + "api/queues"))[0] == 401
        assert (await asyncio.to_thread(fetch, server.url + "api/queues", TOKEN))[0] == 200
        with pytest.raises(OSError):
            await DashboardServer(plain_app, port=server.port, token=TOKEN).start()
        stop = asyncio.Event()
        stop.set()
        await server.serve_until(stop)

    asyncio.run(go())
