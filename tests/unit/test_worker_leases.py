"""A worker whose lease was taken over: it reports the loss once, and is not counted twice.

Leases are lost here the way they are in production: a handler blocks the
event loop longer than the visibility timeout, so the heartbeat cannot renew
the lease, and meanwhile another party (a thread standing for another worker)
rescues the job and leases it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Sequence

import pytest

from conveyor import App, Worker, WorkerConfig
from conveyor.brokers import WORKER_SHUTDOWN, Delivery
from conveyor.brokers.memory import MemoryBroker
from conveyor.testing import CapturedSignals, capture_signals
from conveyor.worker.cancel import CANCEL_TIMEOUT
from conveyor.worker.runtime import WorkerResult

VT = 0.3  # the heartbeat renews every VT / 3 seconds


def take_over(app: App) -> list[Delivery]:
    """From another thread: rescue expired leases and lease the jobs, as another worker would."""
    taken: list[Delivery] = []

    async def other_worker() -> None:
        broker = await app.broker()
        await broker.rescue()
        taken.extend(await broker.lease(["default"], 10, 30.0))

    thread = threading.Thread(target=asyncio.run, args=(other_worker(),))
    thread.start()
    thread.join()
    return taken


def config(**options: int) -> WorkerConfig:
    return WorkerConfig(burst=True, visibility_timeout=VT, poll_interval=0.05, **options)  # type: ignore[arg-type]


async def test_a_running_job_whose_lease_was_lost_finishes_but_its_refused_ack_is_not_a_completion(
    app: App,
) -> None:
    taken: list[Delivery] = []

    @app.job
    async def slow() -> None:
        time.sleep(VT * 4)  # blocks the loop: no heartbeat, the lease expires
        taken.extend(take_over(app))
        await asyncio.sleep(VT * 4)  # the heartbeat runs again and finds the lease gone

    job_id = await slow.send_async()
    with capture_signals(app) as events:
        result = await Worker(app, config()).run()
    assert [d.id for d in taken] == [job_id]
    [lost] = events.named("job.lease_lost")
    assert (lost.attrs["job_id"], lost.attrs["detected_by"], lost.attrs["started"]) == (job_id, "extend", True)
    [refused] = events.named("job.ack_refused")
    assert refused.attrs["job_id"] == job_id and refused.attrs["duration"] > 0
    assert events.named("job.completed") == []
    assert (result.counters.completed, result.counters.ack_refused) == (0, 1)
    s = app.stats()["default"]
    assert s.in_flight == 1  # the other worker's lease, untouched by the refused ack


async def test_a_refused_ack_reports_the_lost_lease_when_no_heartbeat_saw_it(app: App) -> None:
    @app.job
    async def blocks() -> None:
        time.sleep(VT * 4)
        take_over(app)

    job_id = await blocks.send_async()
    with capture_signals(app) as events:
        result = await Worker(app, config()).run()
    assert [(e.attrs["job_id"], e.attrs["detected_by"]) for e in events.named("job.lease_lost")] in (
        [(job_id, "ack")],
        [(job_id, "extend")],  # the heartbeat may run between the handler's end and the ack
    )
    assert [e.attrs["job_id"] for e in events.named("job.ack_refused")] == [job_id]
    assert (result.counters.completed, result.counters.ack_refused) == (0, 1)


async def test_a_prefetched_job_whose_lease_was_lost_does_not_run_here(app: App) -> None:
    ran: list[str] = []

    @app.job
    async def first() -> None:
        ran.append("first")
        time.sleep(VT * 4)
        take_over(app)
        await asyncio.sleep(VT * 4)

    @app.job
    async def second() -> None:
        ran.append("second")

    await first.send_async()
    second_id = await second.send_async()
    with capture_signals(app) as events:
        await Worker(app, config(concurrency=1, prefetch=1)).run()
    assert ran == ["first"]
    lost = {e.attrs["job_id"]: e.attrs["started"] for e in events.named("job.lease_lost")}
    assert lost[second_id] is False
    assert second_id not in {e.attrs["job_id"] for e in events.named("job.started")}


class RepliesLost(MemoryBroker):
    """A memory broker whose first lease that took messages commits and then raises."""

    def __init__(self) -> None:
        super().__init__()
        self.lost = asyncio.Event()

    async def lease(
        self, queues: Sequence[str], limit: int, visibility_timeout: float, *, claim: str | None = None
    ) -> list[Delivery]:
        taken = await super().lease(queues, limit, visibility_timeout, claim=claim)
        if taken and not self.lost.is_set():
            self.lost.set()
            raise ConnectionError("connection lost before the lease reply arrived")
        return taken


async def test_a_worker_stopping_after_a_lost_lease_reply_gives_back_what_the_claim_holds() -> None:
    app = App("memory://")
    broker = app._connections._shared = RepliesLost()

    @app.job(max_attempts=1)
    async def never_delivered() -> None:
        raise AssertionError("no lease reply ever arrived")

    job_id = await never_delivered.send_async()
    # the stop comes while the worker waits to repeat the failed lease call
    worker = Worker(app, WorkerConfig(poll_interval=30.0, visibility_timeout=30.0))
    run = asyncio.create_task(worker.run())
    await asyncio.wait_for(broker.lost.wait(), 10)
    worker.request_stop()
    await asyncio.wait_for(run, 10)
    s = (await broker.stats(["default"]))["default"]
    assert (s.ready, s.in_flight) == (1, 0)
    [again] = await MemoryBroker.lease(broker, ["default"], 1, 30.0)
    assert (again.id, again.attempts, again.redelivery) == (job_id, 1, WORKER_SHUTDOWN)


class SlowExtend(MemoryBroker):
    """A real memory broker whose lease heartbeat takes a while to answer (a slow network)."""

    async def extend(self, deliveries: Sequence[Delivery], visibility_timeout: float) -> list[str]:
        await asyncio.sleep(0.04)
        return await super().extend(deliveries, visibility_timeout)


async def test_a_job_acked_while_its_lease_was_being_renewed_is_not_reported_lost() -> None:
    app = App("memory://")
    app._connections._shared = SlowExtend()  # the app uses this (real) broker
    done: list[int] = []

    @app.job
    async def short(n: int) -> None:
        await asyncio.sleep(0.01)
        done.append(n)

    await app.send_jobs_async([short.message(i) for i in range(300)])
    with capture_signals(app, ["job.lease_lost", "job.ack_refused"]) as events:
        result = await Worker(app, config(concurrency=4)).run()
    assert sorted(done) == list(range(300)) and result.counters.completed == 300
    assert events.named("job.lease_lost") == [] and events.named("job.ack_refused") == []
    app.close()


async def test_a_handler_that_swallows_cancellation_cannot_keep_the_worker_from_stopping(app: App) -> None:
    started, give_in = asyncio.Event(), asyncio.Event()

    @app.job
    async def stubborn() -> None:
        started.set()
        while not give_in.is_set():  # a handler (or a library under it) that ignores cancellation
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.05)

    job_id = await stubborn.send_async()
    worker = Worker(app, WorkerConfig(shutdown_timeout=0.2, visibility_timeout=30, poll_interval=0.05))
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 10)
    worker.request_stop()
    try:
        result = await asyncio.wait_for(task, CANCEL_TIMEOUT + 10)
    finally:
        give_in.set()  # the left-behind task ends, so the test's loop can close
    assert (result.reason, result.abandoned) == ("shutdown_timeout", 1)
    broker = await app.broker()
    [again] = await broker.lease(["default"], 1, 30)  # requeued, not left leased to a stopped worker
    assert (again.id, again.redelivery) == (job_id, WORKER_SHUTDOWN)


class LeaseNeverCommits(MemoryBroker):
    """A memory broker whose first lease call fails before it takes anything."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = asyncio.Event()

    async def lease(
        self, queues: Sequence[str], limit: int, visibility_timeout: float, *, claim: str | None = None
    ) -> list[Delivery]:
        if not self.failed.is_set():
            self.failed.set()
            raise ConnectionError("connection lost before the lease was sent")
        return await super().lease(queues, limit, visibility_timeout, claim=claim)


async def test_a_worker_stopping_with_a_claim_that_holds_nothing_leaves_the_queued_jobs_alone() -> None:
    app = App("memory://")
    broker = app._connections._shared = LeaseNeverCommits()

    @app.job
    async def waiting() -> None:
        raise AssertionError("the worker never leased anything")

    job_ids = {await waiting.send_async() for _ in range(3)}
    worker = Worker(app, WorkerConfig(concurrency=1, poll_interval=30.0, visibility_timeout=30.0))
    run = asyncio.create_task(worker.run())
    await asyncio.wait_for(broker.failed.wait(), 10)
    worker.request_stop()  # while the worker waits to repeat the failed call with its claim
    await asyncio.wait_for(run, 10)
    s = (await broker.stats(["default"]))["default"]
    assert (s.ready, s.in_flight) == (3, 0)
    again = await MemoryBroker.lease(broker, ["default"], 10, 30.0)
    assert {(d.id, d.attempts, d.redelivery) for d in again} == {(i, 1, "") for i in job_ids}


# -- a failure settled after the lease was lost: the retry or dead letter is refused ----------


async def _fails_after_take_over(
    app: App, caplog: pytest.LogCaptureFixture, max_attempts: int, detected_by: str
) -> tuple[WorkerResult, CapturedSignals, list[logging.LogRecord]]:
    """Run a job that fails after another worker took its lease; check what both have in common."""
    taken: list[Delivery] = []

    @app.job(max_attempts=max_attempts)
    async def fails() -> None:
        time.sleep(VT * 4)  # blocks the loop: no heartbeat, the lease expires
        taken.extend(take_over(app))
        raise RuntimeError("boom")

    job_id = await fails.send_async()
    with capture_signals(app) as events, caplog.at_level(logging.WARNING, "conveyor.worker"):
        result = await Worker(app, config()).run()
    assert [d.id for d in taken] == [job_id]
    assert [e.attrs["will_retry"] for e in events.named("job.failed")] == [max_attempts > 1]  # it did fail
    [lost] = events.named("job.lease_lost")
    assert (lost.attrs["job_id"], lost.attrs["detected_by"], lost.attrs["started"]) == (job_id, detected_by, True)
    assert result.counters.failed == 1
    refused = [r for r in caplog.records if "lost its lease before it was settled" in r.getMessage()]
    assert [(r.levelno, r.__dict__["job_id"]) for r in refused] == [(logging.WARNING, job_id)]
    broker = await app.broker()
    assert await broker.extend(taken, 30.0) == []  # the other worker's lease is intact
    return result, events, refused


async def test_a_failed_job_whose_lease_was_lost_is_not_reported_as_retrying(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    result, events, [refused] = await _fails_after_take_over(app, caplog, 3, "nack")
    assert "the retry was refused" in refused.getMessage()
    assert events.named("job.retrying") == []
    assert result.counters.retried == 0


async def test_a_final_failure_whose_lease_was_lost_is_not_dead_lettered(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    result, events, [refused] = await _fails_after_take_over(app, caplog, 1, "dead")
    assert "the dead-letter (max_attempts_exceeded) was refused" in refused.getMessage()
    assert events.named("job.dead") == []
    assert result.counters.dead == 0
    assert not [r for r in caplog.records if "dead-lettered" in r.getMessage()]
    assert app.dlq_list() == []
    assert app.stats()["default"].in_flight == 1
