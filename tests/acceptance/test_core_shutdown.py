"""Workers that die or are told to stop: nothing is lost, nothing runs twice."""

from __future__ import annotations

import signal
import time

import pytest

from .conftest import ZERO, Core

pytestmark = pytest.mark.acceptance


def test_core_sigkill(core: Core) -> None:
    """A SIGKILLed worker's jobs run again, once, on another worker after their leases expire."""
    ids = [core.jobs.sleepy.send(4, f"long{i}") for i in range(3)]
    a = core.start_worker("-c", "2", "--visibility-timeout", "2")
    core.wait_for(lambda: len(core.events("start")) >= 2, 10, "worker A to start two jobs")
    # A holds all three leases: two running, one prefetched.
    assert core.depth(cli=False) == {**ZERO, "in_flight": 3}
    a.send_signal(signal.SIGKILL)
    assert a.wait(5) == -signal.SIGKILL
    killed_at = time.time()
    started_on_a = {e["id"] for e in core.events("start")}
    assert core.events("done") == [], "A finished a job before it was killed"

    # Leases last 2 s from A's last heartbeat (<= 2 s before the kill): all expired by now.
    time.sleep(max(0.0, killed_at + 2.3 - time.time()))
    b = core.burst("-c", "3", timeout=20)

    done = core.count("done")
    assert done == {i: 1 for i in ids}, f"each job must complete exactly once, got {done}"
    assert {e["pid"] for e in core.events("done")} == {b.pid}, "B must be the one finishing"
    b_starts = [e for e in core.events("start") if e["pid"] == b.pid]
    assert sorted(e["id"] for e in b_starts) == sorted(ids)
    assert all(e["redelivery"] == "lease_expired" for e in b_starts), b_starts
    assert all(e["t"] > killed_at for e in b_starts)
    assert started_on_a <= set(ids)
    assert core.depth() == ZERO
    assert core.dlq() == []


def test_core_sigterm_graceful(core: Core) -> None:
    """SIGTERM: running jobs finish, prefetched ones go back unstarted, exit 0 in time."""
    ids = [core.jobs.sleepy.send(1.5, f"j{i}") for i in range(6)]
    w = core.start_worker("-c", "2", "--shutdown-timeout", "5")
    core.wait_for(lambda: len(core.events("start")) >= 2, 10, "two jobs to start")
    # Two running and two prefetched (prefetch defaults to the concurrency).
    assert core.depth(cli=False) == {**ZERO, "ready": 2, "in_flight": 4}
    sent_at = time.monotonic()
    w.send_signal(signal.SIGTERM)
    rc = w.wait(10)
    took = time.monotonic() - sent_at
    assert rc == 0, core.output(w)
    assert took < 5 + 1.5, f"exit took {took:.1f}s with --shutdown-timeout 5"

    started = {e["id"] for e in core.events("start")}
    assert len(started) == 2, "a job started after SIGTERM"
    assert set(core.count("done")) == started, "an in-flight job did not finish"
    # The two prefetched jobs were given back, next to the two never leased.
    assert core.depth() == {**ZERO, "ready": len(ids) - len(started)}

    core.burst("-c", "4", timeout=15)
    assert core.count("done") == {i: 1 for i in ids}
    late = [e for e in core.events("start") if e["id"] not in started]
    assert len(late) == 4
    # Giving back an unstarted job does not use up one of its attempts.
    assert all(e["attempt"] == 1 for e in late), late
    assert core.depth() == ZERO


def test_core_sigterm_shutdown_timeout(core: Core) -> None:
    """A job longer than --shutdown-timeout is requeued, and the worker exits on time."""
    job_id = core.jobs.sleepy.send(10, "too-long")
    w = core.start_worker("-c", "1", "--shutdown-timeout", "1")
    core.wait_for(lambda: core.events("start"), 10, "the job to start")
    sent_at = time.monotonic()
    w.send_signal(signal.SIGTERM)
    rc = w.wait(10)
    took = time.monotonic() - sent_at
    assert rc == 0, core.output(w)
    assert 0.9 < took < 1 + 1.5, f"exit took {took:.1f}s with --shutdown-timeout 1"
    assert core.events("done") == []
    assert core.depth() == {**ZERO, "ready": 1}, "the interrupted job must be back in the queue"
    assert core.dlq() == []
    assert [e["id"] for e in core.events("start")] == [job_id]


def test_core_sigterm_twice(core: Core) -> None:
    """A second SIGTERM requeues running jobs and exits at once."""
    core.jobs.sleepy.send(10, "too-long")
    w = core.start_worker("-c", "1", "--shutdown-timeout", "30")
    core.wait_for(lambda: core.events("start"), 10, "the job to start")
    w.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert w.poll() is None, "the first SIGTERM must wait for the running job"
    sent_at = time.monotonic()
    w.send_signal(signal.SIGTERM)
    rc = w.wait(10)
    took = time.monotonic() - sent_at
    assert rc == 0, core.output(w)
    assert took < 1.5, f"exit took {took:.1f}s after the second SIGTERM"
    assert core.events("done") == []
    assert core.depth() == {**ZERO, "ready": 1}, "the interrupted job must be back in the queue"


def test_core_sigterm_with_a_job_that_ignores_cancellation(core: Core) -> None:
    """A job that swallows every cancellation cannot keep the worker process from exiting."""
    job_id = core.jobs.stubborn.send("forever")
    w = core.start_worker("-c", "1", "--shutdown-timeout", "0.5")
    core.wait_for(lambda: len(core.events("start")) == 1, 10, "the job to start")
    sent_at = time.monotonic()
    w.send_signal(signal.SIGTERM)
    rc = w.wait(30)
    took = time.monotonic() - sent_at
    out = core.output(w)
    assert rc == 0, out
    assert took < 15, f"exit took {took:.1f}s"
    assert "ignored cancellation" in out and ", 1 requeued at shutdown" in out, out
    # Requeued as an interrupted attempt, not left leased to a process that is gone.
    assert core.depth(cli=False) == {**ZERO, "ready": 1}
    assert [d["id"] for d in core.dlq()] == []
    assert job_id in {e["id"] for e in core.events("start")}
