"""Sync handlers: the timeout counts from when a thread begins the call; stuck threads are reported and replaced."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

import pytest

from conveyor import App, Worker, WorkerConfig, current_job
from conveyor.telemetry import Telemetry
from conveyor.testing import capture_signals, run_until_idle_async


async def _until(check: Callable[[], object], what: str, deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


_EARLIER: set[threading.Thread] = set()


@pytest.fixture(autouse=True)
def _ignore_earlier_job_threads() -> None:
    """Threads of other tests in this process (a stuck handler of theirs) are not ours to count."""
    _EARLIER.clear()
    _EARLIER.update(t for t in threading.enumerate() if t.name.startswith("conveyor-job"))


def _job_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("conveyor-job") and t not in _EARLIER]


async def test_a_sync_job_settled_while_waiting_for_a_thread_never_runs(app: App) -> None:
    starts: list[tuple[str, float]] = []
    blocker_done = threading.Event()

    @app.job(timeout=0.2, max_attempts=1)
    def blocker() -> None:
        threading.Event().wait(1.0)  # outlives its timeout; the only thread stays busy
        blocker_done.set()

    @app.job(timeout=0.2, max_attempts=1)
    def quick(n: int) -> None:
        ctx = current_job()
        assert ctx is not None
        starts.append((ctx.job.id, time.time()))

    blocker.send()
    quick_ids = [quick.send(n) for n in range(3)]
    # No replacement thread: the queued calls wait for the busy one.
    await run_until_idle_async(app, concurrency=1, spare_threads=0)
    await _until(blocker_done.is_set, "the blocker to return")
    await _until(lambda: not _job_threads(), "the worker threads to exit")
    dead = {d.id: d.dead_at for d in app.dlq_list()}
    ran_after_dead = [(job_id, at) for job_id, at in starts if job_id in dead and at >= dead[job_id]]
    assert ran_after_dead == [], "a job body ran after its job was dead-lettered"
    # Their clocks started when the thread began them: none of the quick jobs timed out.
    assert not set(quick_ids) & set(dead)
    assert sorted(job_id for job_id, _ in starts) == sorted(quick_ids)


async def test_the_timeout_of_a_sync_job_counts_from_when_a_thread_begins_it(app: App) -> None:
    @app.job(timeout=0.2, max_attempts=1)
    def blocker() -> None:
        threading.Event().wait(2.0)

    @app.job(timeout=1.0, max_attempts=1)
    def behind() -> None:
        time.sleep(0.1)

    blocker_id = blocker.send()
    behind_id = behind.send()
    result = await run_until_idle_async(app, concurrency=1, spare_threads=0)
    # behind waited ~1.8 s for the busy thread, then ran 0.1 s of its 1 s timeout.
    assert {d.id: d.reason for d in app.dlq_list()} == {blocker_id: "timeout"}
    assert result.counters.completed == 1 and behind_id not in {d.id for d in app.dlq_list()}


async def test_a_stuck_thread_is_reported_counted_and_replaced_so_other_jobs_keep_full_concurrency() -> None:
    telemetry = Telemetry(tracing=False, logs=None)
    app = App("memory://", telemetry=telemetry)
    release = threading.Event()
    together = threading.Barrier(2, timeout=20)
    done: list[int] = []

    @app.job(timeout=0.2, max_attempts=1)
    def hang() -> None:
        release.wait(30)

    @app.job(max_attempts=1)
    def pair(n: int) -> None:
        together.wait()  # breaks unless two threads run pair jobs at the same time
        done.append(n)

    hang_id = hang.send()
    for n in range(6):
        pair.send(n)
    worker = Worker(app, WorkerConfig(concurrency=2))
    reg = telemetry.registry
    assert reg is not None
    labels = {"queue": "default", "job_type": hang.name}
    try:
        with capture_signals(app, ["worker.thread_stuck", "worker.thread_returned", "job.dead"]) as events:
            task = asyncio.create_task(worker.run())
            await _until(lambda: len(done) == 6, "the pair jobs to complete")
            [stuck] = events.named("worker.thread_stuck")
            assert stuck.attrs["job_id"] == hang_id and stuck.attrs["replaced"] is True
            assert stuck.attrs["stuck"] == 1 and stuck.attrs["running"] >= 0.2
            assert [e.attrs["job_id"] for e in events.named("job.dead")] == [hang_id]
            assert [t.tag.id for t in worker.stuck_threads()] == [hang_id]
            await _until(lambda: reg.get_sample_value("conveyor_worker_threads_stuck", labels) == 1, "the gauge")
            assert len(_job_threads()) == 3  # two serving, one stuck

            release.set()
            await _until(lambda: events.named("worker.thread_returned"), "the stuck thread to return")
            await _until(lambda: reg.get_sample_value("conveyor_worker_threads_stuck", labels) == 0, "the gauge")
            await _until(lambda: len(_job_threads()) == 2, "the extra thread to retire")
            assert worker.stuck_threads() == []
    finally:
        release.set()
        worker.request_stop()
        await asyncio.wait_for(task, 30)
        telemetry.close()
    assert sorted(done) == list(range(6))


async def test_past_the_cap_of_replacements_the_worker_says_its_capacity_is_reduced(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    release = threading.Event()

    @app.job(timeout=0.1, max_attempts=1)
    def hang(n: int) -> None:
        release.wait(30)

    hang.send(1)
    hang.send(2)
    worker = Worker(app, WorkerConfig(concurrency=1, spare_threads=1))
    caplog.set_level(logging.ERROR, "conveyor.worker")
    try:
        with capture_signals(app, ["worker.thread_stuck", "worker.capacity_reduced"]) as events:
            task = asyncio.create_task(worker.run())
            await _until(lambda: events.named("worker.capacity_reduced"), "capacity_reduced")
            assert [e.attrs["replaced"] for e in events.named("worker.thread_stuck")] == [True, False]
            [reduced] = events.named("worker.capacity_reduced")
            assert (reduced.attrs["concurrency"], reduced.attrs["threads"], reduced.attrs["stuck"]) == (1, 0, 2)
            assert [t.replaced for t in worker.stuck_threads()] == [True, False]
            assert any("capacity reduced: 0 of 1 threads" in r.getMessage() for r in caplog.records)
    finally:
        release.set()
        worker.request_stop()
        await asyncio.wait_for(task, 30)


async def test_a_sync_job_waiting_for_a_thread_at_shutdown_never_runs_and_keeps_its_attempt(app: App) -> None:
    release = threading.Event()
    ran: list[str] = []
    stuck = asyncio.Event()

    @app.job(timeout=0.1, max_attempts=1)
    def hang() -> None:
        release.wait(30)

    @app.job
    def waiting() -> None:
        ran.append("waiting")

    hang.send()
    waiting_id = waiting.send()
    worker = Worker(app, WorkerConfig(concurrency=1, spare_threads=0, shutdown_timeout=0.1))
    app.bus.subscribe(lambda e: stuck.set(), ["worker.thread_stuck"])
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(stuck.wait(), 30)
        await _until(lambda: waiting_id in {j.id for j in worker.current_jobs()}, "waiting to be picked up")
        worker.request_stop()
        result = await asyncio.wait_for(task, 30)
    finally:
        release.set()
    assert result.reason == "shutdown_timeout" and result.abandoned == 1
    await _until(lambda: not _job_threads(), "the worker threads to exit")
    assert ran == []
    broker = await app.broker()
    [d] = await broker.lease(["default"], 10, 30)
    # Given back unstarted: the attempt is refunded and no interruption is counted.
    assert (d.id, d.attempts, d.redelivery) == (waiting_id, 1, "worker_shutdown")
