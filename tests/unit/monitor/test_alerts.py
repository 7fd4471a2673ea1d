"""AlertManager semantics (fire once, cooldown, escalation, resolve) and every alert sink."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from conveyor import App
from conveyor.monitor import (
    ALERT_FIRED,
    ALERT_RESOLVED,
    Alert,
    AlertManager,
    BusSink,
    JsonLinesSink,
    LogSink,
    Notification,
    WebhookSink,
    read_active,
)
from conveyor.testing import capture_signals


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    def __init__(self) -> None:
        self.got: list[Notification] = []

    def send(self, notification: Notification) -> None:
        self.got.append(notification)

    def kinds(self) -> list[tuple[str, str]]:
        return [(n.kind, n.alert.severity) for n in self.got]


def manager(cooldown: float = 60.0) -> tuple[AlertManager, Recorder, Clock]:
    clock, rec = Clock(), Recorder()
    return AlertManager([rec], cooldown=cooldown, clock=clock), rec, clock


LAT = Alert("queue_latency", "warning", "slow", {"queue": "q"}, 5.0)


def test_alert_validates_severity_and_keys_on_name_and_labels() -> None:
    with pytest.raises(ValueError):
        Alert("x", "urgent")
    assert Alert("a", labels={"q": "1"}).key == Alert("a", "critical", "other", {"q": "1"}).key
    assert Alert("a", labels={"q": "1"}).key != Alert("a", labels={"q": "2"}).key


def test_persistent_condition_fires_once_within_cooldown_then_resolves() -> None:
    alerts, rec, clock = manager(cooldown=60)
    for _ in range(10):
        alerts.update([LAT])
        clock.now += 5
    assert rec.kinds() == [("fired", "warning")]
    alerts.update([])
    assert rec.kinds() == [("fired", "warning"), ("resolved", "warning")]
    assert alerts.active() == []


def test_reminder_after_cooldown_and_escalation_bypasses_it() -> None:
    alerts, rec, clock = manager(cooldown=60)
    alerts.update([LAT])
    clock.now += 61
    alerts.update([LAT])
    assert [n.repeat for n in rec.got] == [False, True]
    clock.now += 1
    alerts.update([Alert("queue_latency", "critical", "slower", {"queue": "q"}, 50.0)])
    assert rec.kinds()[-1] == ("fired", "critical") and rec.got[-1].repeat


def test_flapping_alert_is_not_sent_again_within_cooldown() -> None:
    alerts, rec, clock = manager(cooldown=60)
    alerts.update([LAT])
    clock.now += 1
    alerts.update([])
    clock.now += 1
    alerts.update([LAT])  # back within the cooldown: held back
    clock.now += 1
    alerts.update([])  # and its resolve is not sent either (its firing was not)
    assert rec.kinds() == [("fired", "warning"), ("resolved", "warning")]
    clock.now += 60
    alerts.update([LAT])
    assert rec.kinds()[-1] == ("fired", "warning")


def test_update_only_resolves_alerts_of_the_named_checks() -> None:
    alerts, rec, _ = manager()
    other = Alert("worker_memory", "warning", labels={"worker": "w"})
    alerts.update([LAT, other])
    alerts.update([], names=["queue_latency"])
    assert [a.alert.name for a in alerts.active()] == ["worker_memory"]
    assert [n.kind for n in rec.got] == ["fired", "fired", "resolved"]


def test_fire_and_resolve_one_at_a_time_and_forget() -> None:
    alerts, rec, _ = manager()
    assert alerts.fire(LAT) is not None
    assert alerts.fire(LAT) is None
    assert alerts.resolve("queue_latency", {"queue": "q"}) is not None
    assert alerts.resolve("queue_latency", {"queue": "q"}) is None
    alerts.fire(Alert("x", labels={"a": "b"}))
    alerts.forget(["x"])
    assert alerts.active() == [] and [n.kind for n in rec.got] == ["fired", "resolved", "fired"]


def test_failing_sink_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def send(self, notification: Notification) -> None:
            raise RuntimeError("boom")

    rec = Recorder()
    alerts = AlertManager([Broken(), rec], cooldown=0)
    with caplog.at_level(logging.ERROR):
        alerts.fire(LAT)
    assert len(rec.got) == 1 and "alert sink" in caplog.text


def test_log_sink_levels(caplog: pytest.LogCaptureFixture) -> None:
    alerts = AlertManager([LogSink()], cooldown=0)
    with caplog.at_level(logging.INFO, logger="conveyor.alerts"):
        alerts.fire(Alert("worker_stalled", "critical", "gone", {"worker": "w1"}))
        alerts.resolve("worker_stalled", {"worker": "w1"})
    levels = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "conveyor.alerts"]
    assert levels[0][0] == "ERROR" and "worker_stalled fired [worker=w1]: gone" in levels[0][1]
    assert levels[1][0] == "INFO" and "resolved" in levels[1][1]


def test_json_lines_sink_and_read_active(tmp_path: Path) -> None:
    path = tmp_path / "alerts" / "log.jsonl"
    alerts = AlertManager([JsonLinesSink(path)], cooldown=0)
    alerts.fire(LAT)
    alerts.fire(Alert("retry_loop", "warning", "loops", {"job_type": "t"}))
    alerts.resolve("queue_latency", {"queue": "q"})
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(x["name"], x["kind"]) for x in lines] == [
        ("queue_latency", "fired"),
        ("retry_loop", "fired"),
        ("queue_latency", "resolved"),
    ]
    assert lines[0]["labels"] == {"queue": "q"} and lines[0]["value"] == 5.0
    assert [a["name"] for a in read_active(path)] == ["retry_loop"]
    assert read_active(tmp_path / "missing") == []


def test_bus_sink_emits_typed_signals(app: App) -> None:
    alerts = AlertManager([BusSink(app.bus)], cooldown=0)
    with capture_signals(app, [ALERT_FIRED, ALERT_RESOLVED]) as events:
        alerts.fire(LAT)
        alerts.resolve("queue_latency", {"queue": "q"})
    fired, resolved = events
    assert fired.name == "alert.fired" and fired.attrs["alert"] == "queue_latency"
    assert fired.attrs["labels"] == "queue=q" and fired.attrs["value"] == 5.0 and fired.attrs["repeat"] is False
    assert resolved.name == "alert.resolved" and resolved.attrs["duration"] >= 0


# -- webhook against a real HTTP server ---------------------------------------------


class Hook:
    """A local HTTP server answering with a scripted list of status codes (then 200)."""

    def __init__(self, statuses: list[int], delay: float = 0.0) -> None:
        self.statuses = list(statuses)
        self.delay = delay
        self.bodies: list[dict[str, Any]] = []
        self.hits = 0
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.hits += 1
                time.sleep(hook.delay)
                status = hook.statuses.pop(0) if hook.statuses else 200
                if status == 200:
                    hook.bodies.append(json.loads(body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook_factory() -> Iterator[Any]:
    made: list[Hook] = []

    def make(statuses: list[int] | None = None, delay: float = 0.0) -> Hook:
        h = Hook(statuses or [], delay)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def wait_until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_webhook_posts_json_and_retries_with_backoff(hook_factory: Any) -> None:
    hook = hook_factory([500, 503])
    sink = WebhookSink(hook.url, backoff=0.05, max_attempts=4)
    try:
        AlertManager([sink], cooldown=0).fire(LAT)
        wait_until(lambda: sink.delivered == 1)
    finally:
        sink.close()
    assert hook.hits == 3
    assert hook.bodies[0]["name"] == "queue_latency" and hook.bodies[0]["kind"] == "fired"
    assert hook.bodies[0]["labels"] == {"queue": "q"}


def test_webhook_gives_up_after_max_attempts_and_on_client_errors(hook_factory: Any) -> None:
    failing = hook_factory([500] * 10)
    sink = WebhookSink(failing.url, backoff=0.01, max_attempts=3)
    sink.send(Notification("fired", LAT, 0.0, 0.0))
    wait_until(lambda: failing.hits == 3)
    sink.close()
    assert sink.delivered == 0 and failing.hits == 3
    rejecting = hook_factory([404])
    sink = WebhookSink(rejecting.url, backoff=0.01, max_attempts=5)
    sink.send(Notification("fired", LAT, 0.0, 0.0))
    sink.close()
    assert rejecting.hits == 1 and sink.delivered == 0


def test_webhook_never_blocks_the_caller_and_bounds_its_queue(hook_factory: Any) -> None:
    slow = hook_factory(delay=0.3)
    sink = WebhookSink(slow.url, max_queue=2)
    started = time.monotonic()
    for i in range(10):
        sink.send(Notification("fired", Alert("a", labels={"i": str(i)}), 0.0, 0.0))
    assert time.monotonic() - started < 0.2
    sink.close(timeout=5)
    assert sink.dropped >= 6
    assert sink.delivered + sink.dropped <= 10


def test_webhook_unreachable_endpoint_is_retried_then_dropped() -> None:
    sink = WebhookSink("http://127.0.0.1:9/nothing", backoff=0.01, max_attempts=2, timeout=0.5)
    sink.send(Notification("fired", LAT, 0.0, 0.0))
    sink.close(timeout=5)
    assert sink.delivered == 0
