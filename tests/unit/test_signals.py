from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading

import pytest

from conveyor import (
    BoolKey,
    Bus,
    DurationKey,
    ErrorInfo,
    ErrorKey,
    Event,
    FloatKey,
    IntKey,
    Signal,
    StringKey,
)
from conveyor import signals as sig

SENT = Signal(
    "email.sent",
    "An email left.",
    [StringKey("to"), IntKey("size"), FloatKey("score"), BoolKey("html"), DurationKey("took"), ErrorKey("err")],
)


def test_keys_coerce_and_type_check() -> None:
    e = SENT.event(
        {
            "to": "a",
            "size": 3,
            "score": 1,
            "html": False,
            "took": dt.timedelta(milliseconds=1500),
            "err": ValueError("x"),
        }
    )
    assert e.attrs["score"] == 1.0 and isinstance(e.attrs["score"], float)
    assert e.attrs["took"] == 1.5
    assert isinstance(e.attrs["err"], ErrorInfo) and e.attrs["err"].type == "ValueError"
    for bad in ({"size": "3"}, {"size": True}, {"html": 1}, {"to": 5}, {"took": "1s"}, {"err": "x"}):
        with pytest.raises(TypeError):
            SENT.event(bad)


def test_unknown_key_is_rejected() -> None:
    with pytest.raises(TypeError, match="has no key 'nope'"):
        SENT.event({"nope": 1})


def test_subscribe_all_and_chosen() -> None:
    bus, everything, chosen = Bus(), [], []
    bus.subscribe(everything.append)
    bus.subscribe(chosen.append, [sig.JOB_DEAD])
    bus.emit(SENT, to="x")
    bus.emit(sig.JOB_DEAD, job_id="1", reason="timeout")
    assert [e.name for e in everything] == ["email.sent", "job.dead"]
    assert [e.name for e in chosen] == ["job.dead"]


def test_cancelled_subscription_receives_nothing() -> None:
    bus, got = Bus(), []
    sub = bus.subscribe(got.append)
    sub.cancel()
    bus.emit(SENT, to="x")
    assert got == [] and not bus.wants(SENT)


def test_a_raising_sink_is_isolated_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    bus, got = Bus(), []

    def broken(event: Event) -> None:
        raise RuntimeError("sink bug")

    bus.subscribe(broken)
    bus.subscribe(got.append)
    with caplog.at_level(logging.ERROR, "conveyor.signals"):
        bus.emit(SENT, to="x")
    assert len(got) == 1
    assert "sink bug" in caplog.text


async def test_async_sinks_run_and_failures_are_isolated(caplog: pytest.LogCaptureFixture) -> None:
    bus, got = Bus(), []

    async def good(event: Event) -> None:
        await asyncio.sleep(0)
        got.append(event.name)

    async def bad(event: Event) -> None:
        raise RuntimeError("async sink bug")

    bus.subscribe(good)
    bus.subscribe(bad)
    with caplog.at_level(logging.ERROR, "conveyor.signals"):
        bus.emit(SENT, to="x")
        await bus.drain()
    assert got == ["email.sent"]
    assert "async sink bug" in caplog.text


async def test_async_sink_emitted_from_a_thread_runs_on_the_bound_loop() -> None:
    bus, loops = Bus(), []

    async def record(event: Event) -> None:
        loops.append(asyncio.get_running_loop())

    bus.subscribe(record)
    bus.bind_loop(asyncio.get_running_loop())
    t = threading.Thread(target=bus.emit, args=(SENT,), kwargs={"to": "x"})
    t.start()
    t.join()
    for _ in range(100):
        if loops:
            break
        await asyncio.sleep(0.01)
    await bus.drain()
    assert loops == [asyncio.get_running_loop()]


def test_builtin_signals_are_documented() -> None:
    names = {s.name for s in sig.BUILTIN}
    assert names == {
        "job.enqueued",
        "job.started",
        "job.completed",
        "job.failed",
        "job.retrying",
        "job.dead",
        "queue.depth",
        "worker.started",
        "worker.stopped",
        "worker.idle",
        "worker.busy",
        "worker.error",
        "worker.thread_stuck",
        "worker.thread_returned",
        "worker.capacity_reduced",
        "dlq.retried",
        "dlq.purged",
        "dlq.pruned",
        "job.lease_lost",
        "job.ack_refused",
    }
    assert all(s.description for s in sig.BUILTIN)
