"""Emitting behaves the same whether or not anything subscribes, and never fails a job on its own."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from conveyor import App, Bus, Event, IntKey, Signal, StringKey
from conveyor import signals as sig
from conveyor.telemetry import Telemetry
from conveyor.testing import capture_signals, memory_app, run_until_idle

EMAIL_SENT = Signal("email.sent", "An email left the building.", [StringKey("to"), IntKey("bytes")])

BAD_EMITS: list[tuple[dict[str, object], str]] = [
    ({"to": "a", "bytes": "x"}, "key 'bytes' takes int values, got str"),
    ({"to": "a", "bytes": True}, "key 'bytes' takes int values, got bool"),
    ({"to": "a", "size": 3}, "signal 'email.sent' has no key 'size'"),
    ({"to": 5}, "key 'to' takes string values, got int"),
]


@pytest.mark.parametrize(("attrs", "message"), BAD_EMITS)
def test_a_bad_emit_with_no_subscriber_raises(attrs: dict[str, object], message: str) -> None:
    bus = Bus()
    assert not bus.wants(EMAIL_SENT)
    with pytest.raises(TypeError, match=message):
        bus.emit(EMAIL_SENT, **attrs)


@pytest.mark.parametrize(("attrs", "message"), BAD_EMITS)
def test_app_emit_raises_the_same_type_error_with_or_without_a_subscriber(
    attrs: dict[str, object], message: str
) -> None:
    app = memory_app()
    with pytest.raises(TypeError) as alone:
        app.emit(EMAIL_SENT, **attrs)
    with capture_signals(app) as events, pytest.raises(TypeError) as observed:
        app.emit(EMAIL_SENT, **attrs)
    assert str(alone.value) == str(observed.value) == message
    assert events == []  # an invalid event reaches no sink


def test_a_good_emit_with_no_subscriber_is_accepted_and_coerced_values_pass() -> None:
    bus = Bus()
    bus.emit(EMAIL_SENT, to="a", bytes=3)
    bus.emit(sig.JOB_COMPLETED, job_id="1", attempt=1, duration=2)  # an int duration is coerced
    bus.emit(EMAIL_SENT)  # every key is optional


def _run_emitting_job(app: App, attrs: dict[str, object]) -> tuple[tuple[int, int, int], list[str]]:
    @app.job(name="send_email", max_attempts=1)
    def send_email(to: str) -> None:
        app.emit(EMAIL_SENT, to=to, **attrs)

    send_email.send("ada@example.com")
    counters = run_until_idle(app).counters
    dead = [f"{d.reason}: {d.error_type}: {d.error_message}" for d in app.dlq_list()]
    return (counters.completed, counters.failed, counters.dead), dead


def _with_telemetry() -> App:
    return App("memory://", telemetry=Telemetry())  # the defaults: metrics, signal logs, tracing


def _with_a_sink_on_every_signal() -> App:
    app = memory_app()
    app.bus.subscribe(lambda event: None)
    return app


OBSERVED: list[Callable[[], App]] = [_with_telemetry, _with_a_sink_on_every_signal]


@pytest.mark.parametrize("observed", OBSERVED)
def test_a_job_emitting_a_bad_value_fails_the_same_with_and_without_observers(observed: Callable[[], App]) -> None:
    bad = {"bytes": "x"}
    without = _run_emitting_job(memory_app(), bad)
    with_observers = _run_emitting_job(observed(), bad)
    assert without == with_observers
    assert without == ((0, 1, 1), ["max_attempts_exceeded: TypeError: key 'bytes' takes int values, got str"])


@pytest.mark.parametrize("observed", OBSERVED)
def test_a_job_emitting_good_values_completes_with_and_without_observers(observed: Callable[[], App]) -> None:
    good = {"bytes": 1234}
    assert _run_emitting_job(memory_app(), good) == _run_emitting_job(observed(), good) == ((1, 0, 0), [])


def test_an_invalid_emit_from_the_worker_is_logged_and_the_job_completes(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Simulate a bug in conveyor's own code: the worker's job.started attributes no
    # longer match the signal's declared keys.
    broken = Signal("job.started", "A worker began an attempt.", [sig.JOB_ID])
    monkeypatch.setattr(sig, "JOB_STARTED", broken)
    app = memory_app()

    @app.job(name="noop", max_attempts=1)
    def noop() -> None:
        pass

    noop.send()
    with caplog.at_level(logging.ERROR, logger="conveyor.worker"), capture_signals(app) as events:
        counters = run_until_idle(app).counters
    assert (counters.completed, counters.failed, counters.dead) == (1, 0, 0)
    assert [e.name for e in events if e.name.startswith("job.")] == ["job.completed"]
    errors = [e for e in events if e.name == "worker.error"]
    assert [e.attrs["stage"] for e in errors] == ["signal"]
    assert "has no key 'job_type'" in errors[0].attrs["error"].message
    reported = [r for r in caplog.records if r.name == "conveyor.worker" and r.exc_info]
    assert len(reported) == 1 and "has no key 'job_type'" in str(reported[0].exc_info[1])  # type: ignore[index]


def test_a_raising_sink_never_fails_the_job(caplog: pytest.LogCaptureFixture) -> None:
    app = memory_app()

    def broken(event: Event) -> None:
        raise RuntimeError("sink bug")

    app.bus.subscribe(broken)

    @app.job(name="emitter", max_attempts=1)
    def emitter() -> None:
        app.emit(EMAIL_SENT, to="a", bytes=1)

    emitter.send()
    with caplog.at_level(logging.ERROR, logger="conveyor.signals"):
        counters = run_until_idle(app).counters
    assert (counters.completed, counters.failed, counters.dead) == (1, 0, 0)
    failed_on = {r.getMessage().rsplit(" ", 1)[-1] for r in caplog.records if r.name == "conveyor.signals"}
    assert {"job.enqueued", "job.started", "email.sent", "job.completed"} <= failed_on
