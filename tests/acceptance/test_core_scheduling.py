"""Delays, priorities, timeouts and bringing dead letters back."""

from __future__ import annotations

import time

import pytest

from .conftest import APP, ZERO, Core

pytestmark = pytest.mark.acceptance


def test_core_delay(core: Core) -> None:
    """``enqueue --delay 1``: the job waits in 'delayed', then runs no sooner than 1 s later."""
    w = core.start_worker("-c", "1")
    core.wait_for(lambda: "consuming" in core.output(w), 10, "the worker to start")
    sent_at = time.time()
    job_id = core.enqueue("core.record", "--args", '["late"]', "--delay", "1")
    s = core.app.stats()["default"]
    if time.time() < sent_at + 1:  # the stats read happened before the job was due
        assert (s.ready, s.delayed) == (0, 1)
    [done] = core.wait_for(lambda: core.events("done"), 10, "the delayed job to run")
    assert done["id"] == job_id
    assert done["t"] >= sent_at + 1.0, f"ran {done['t'] - sent_at:.3f}s after enqueue"
    assert done["t"] < sent_at + 4.0, f"ran only {done['t'] - sent_at:.3f}s after enqueue"
    assert core.stop(w) == 0
    assert core.depth() == ZERO


def test_core_priority(core: Core) -> None:
    """A concurrency-1 worker runs higher priorities first, then in enqueue order."""
    record, urgent = core.jobs.record, core.jobs.urgent
    record.send("p0-a")
    record.options(priority=5).send("p5-a")
    core.enqueue("core.record", "--args", '["p-1"]', "--priority", "-1")
    core.enqueue("core.record", "--args", '["p10"]', "--priority", "10")
    record.options(priority=5).send("p5-b")
    urgent.send("p7-default")  # registered with priority=7
    record.send("p0-b")
    core.burst("-c", "1")
    order = [e["label"] for e in core.events("done")]
    assert order == ["p10", "p7-default", "p5-a", "p5-b", "p0-a", "p0-b", "p-1"]
    assert core.depth() == ZERO


def test_core_timeout(core: Core) -> None:
    """A job over its timeout is cut off each attempt, then dead-lettered with reason 'timeout'."""
    job_id = core.jobs.slow_async.send(10)  # timeout=0.3, max_attempts=2
    started = time.monotonic()
    core.burst("-c", "2", timeout=15)
    assert time.monotonic() - started < 6, "the job was not cut off at its timeout"
    starts = core.events("start")
    assert [(e["id"], e["attempt"]) for e in starts] == [(job_id, 1), (job_id, 2)]
    assert core.events("done") == []
    [dead] = core.dlq()
    assert dead["id"] == job_id
    assert dead["reason"] == "timeout"
    assert dead["attempts"] == 2
    assert dead["error_type"] == "JobTimeout"
    assert "timeout of 0.3s" in dead["error_message"]
    assert core.depth() == {**ZERO, "dead": 1}


def test_core_dlq_retry(core: Core) -> None:
    """``dlq retry --all`` sends dead jobs back with fresh attempts, and they run."""
    ids = [core.jobs.gated.send(f"g{i}") for i in range(2)]  # max_attempts=1, fail until gate
    core.burst("-c", "2")
    dead = core.dlq()
    assert sorted(d["id"] for d in dead) == sorted(ids)
    assert {d["reason"] for d in dead} == {"max_attempts_exceeded"}
    assert all("gate closed" in d["error_message"] for d in dead)
    assert core.depth() == {**ZERO, "dead": 2}

    (core.out / "gate").touch()
    assert core.ok("dlq", "retry", APP, "--all").strip() == "retried 2 dead letters"
    assert core.depth() == {**ZERO, "ready": 2}
    core.burst("-c", "2")
    done = core.events("done")
    assert sorted(e["id"] for e in done) == sorted(ids)
    assert all(e["attempt"] == 1 and e["redelivery"] == "manual_retry" for e in done), done
    assert core.dlq() == []
    assert core.depth() == ZERO
