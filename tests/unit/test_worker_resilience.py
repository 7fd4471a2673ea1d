"""The worker cannot wedge: whatever a job or conveyor's own code around it raises, the
delivery is settled (or left to its lease) and the consumers keep consuming.

Also: the job's own ``max_attempts`` (per send) governs retries, and "worker lost" is
said only after a lease really expired.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import App, Backoff, ConfigError, Retry, RetryPolicy, Worker, WorkerConfig, WorkerResult, current_job
from conveyor.brokers import MANUAL_RETRY, WORKER_SHUTDOWN, Delivery, Failure, Message
from conveyor.brokers.memory import MemoryBroker
from conveyor.job import new_id
from conveyor.retry import Decision
from conveyor.signals import Event
from conveyor.testing import capture_signals, run_until_idle_async
from conveyor.worker.acker import Acker
from conveyor.worker.executor import Executor
from conveyor.worker.threads import ThreadRunner

FAST = Backoff(base=0.01, maximum=0.02)
DEADLINE = 60.0
"""Generous: a healthy run takes well under a second; a wedged worker never ends."""
JOB_CONTEXT = ("job_id", "job_type", "queue", "attempt", "worker_id")


@pytest.fixture(params=["memory", "sqlite"])
def any_app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[App]:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'conveyor.db'}"
    a = App(url)
    yield a
    a.close()


async def burst(app: App, concurrency: int = 2, **options: Any) -> WorkerResult:
    """Run a burst worker; fail (instead of hanging) when it never finishes."""
    try:
        return await asyncio.wait_for(run_until_idle_async(app, concurrency=concurrency, **options), DEADLINE)
    except TimeoutError:
        stats = (await (await app.broker()).stats())
        pytest.fail(f"the worker wedged: it never finished its burst; queues: {stats}")


def assert_nothing_left(stats: dict[str, Any]) -> None:
    for queue, s in stats.items():
        assert (s.ready, s.delayed, s.in_flight) == (0, 0, 0), (queue, s)


def assert_job_context(event: Event, job_id: str, job_type: str, worker_id: str) -> None:
    assert set(JOB_CONTEXT) <= set(event.attrs)
    assert event.attrs["job_id"] == job_id and event.attrs["job_type"] == job_type
    assert event.attrs["queue"] == "default" and event.attrs["worker_id"] == worker_id
    assert event.attrs["attempt"] >= 1


# -- a handler's own CancelledError --------------------------------------------------------


async def test_handler_raising_cancelled_error_settles_the_job_and_the_worker_keeps_consuming(
    any_app: App,
) -> None:
    app = any_app
    done: list[int] = []

    @app.job(name="cancelled", backoff=FAST)
    async def cancelled() -> None:
        fut = asyncio.get_running_loop().create_future()
        fut.cancel()
        await fut  # a library future cancelled under the handler; the worker is not stopping

    @app.job(name="normal")
    async def normal(n: int) -> None:
        done.append(n)

    bad = [await cancelled.send_async(), await cancelled.send_async()]
    await app.send_batch_async([normal.message(i) for i in range(10)])
    result = await burst(app, concurrency=2)
    broker = await app.broker()
    assert sorted(done) == list(range(10))
    assert result.counters.completed == 10
    letters = {d.id: d for d in await broker.dlq_list()}
    assert set(letters) == set(bad)
    for letter in letters.values():
        assert letter.reason == "max_attempts_exceeded" and letter.attempts == 3
        assert letter.error_type == "JobCancelled" and "did not cancel" in letter.error_message
        assert "CancelledError" in letter.traceback
    assert_nothing_left(await broker.stats())


async def test_the_workers_own_cancellation_is_not_taken_for_a_handlers(app: App) -> None:
    started = asyncio.Event()

    @app.job(name="stuck")
    async def stuck() -> None:
        started.set()
        await asyncio.sleep(30)

    worker = Worker(app, WorkerConfig(concurrency=1, shutdown_timeout=0.2))
    with capture_signals(app, ["job.failed", "worker.error"]) as events:
        job_id = await stuck.send_async()
        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(started.wait(), DEADLINE)
        worker.request_stop()
        result = await asyncio.wait_for(task, DEADLINE)
    assert result.reason == "shutdown_timeout" and result.counters.failed == 0
    assert list(events) == []
    broker = await app.broker()
    assert await broker.dlq_list() == []
    [d] = await broker.lease(["default"], 1, 30)
    assert (d.id, d.attempts, d.redelivery) == (job_id, 1, WORKER_SHUTDOWN)


async def test_a_sync_handler_raising_cancelled_error_is_a_failure_of_the_job(app: App) -> None:
    @app.job(max_attempts=1)
    def sync_cancelled() -> None:
        raise asyncio.CancelledError()

    job_id = await sync_cancelled.send_async()
    await burst(app)
    [dead] = await (await app.broker()).dlq_list()
    assert (dead.id, dead.reason, dead.error_type) == (job_id, "max_attempts_exceeded", "JobCancelled")


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str() of this error fails")


async def test_a_handler_error_whose_str_fails_still_settles_the_job(app: App) -> None:
    @app.job(name="odd", max_attempts=1)
    async def odd() -> None:
        raise Unprintable()

    @app.job(name="normal")
    async def normal() -> None: ...

    job_id = await odd.send_async()
    await app.send_batch_async([normal.message() for _ in range(3)])
    result = await burst(app, concurrency=1)
    assert result.counters.completed == 3
    [dead] = await (await app.broker()).dlq_list()
    assert (dead.id, dead.reason, dead.error_type) == (job_id, "max_attempts_exceeded", "Unprintable")
    assert "str() failed" in dead.error_message
    assert_nothing_left(await (await app.broker()).stats())


# -- backoff and retry policy failures -----------------------------------------------------


def exploding_backoff(attempt: int) -> float:
    raise ZeroDivisionError("backoff exploded")


async def test_a_raising_backoff_retries_after_the_default_backoff_and_reports_it(any_app: App) -> None:
    app = any_app
    calls: list[int] = []

    @app.job(name="flaky", max_attempts=2, backoff=exploding_backoff)
    async def flaky() -> None:
        calls.append(current_job().attempt)  # type: ignore[union-attr]
        raise ValueError("handler failed")

    @app.job(name="normal")
    async def normal() -> None: ...

    with capture_signals(app, ["job.retrying", "worker.error", "job.completed"]) as events:
        job_id = await flaky.send_async()
        await app.send_batch_async([normal.message() for _ in range(4)])
        result = await burst(app, concurrency=1)
    assert calls == [1, 2]
    [retrying] = events.named("job.retrying")
    assert 0.0 <= retrying.attrs["delay"] <= Backoff().ceiling(1)
    assert retrying.attrs["error"].type == "ValueError"
    [error] = events.named("worker.error")
    assert error.attrs["stage"] == "backoff"
    assert error.attrs["error"].type == "ZeroDivisionError"
    assert_job_context(error, job_id, "flaky", result.worker_id)
    assert len(events.named("job.completed")) == 4
    [dead] = await (await app.broker()).dlq_list()
    assert (dead.reason, dead.error_type) == ("max_attempts_exceeded", "ValueError")
    assert dead.error_message == "handler failed"
    assert_nothing_left(await (await app.broker()).stats())


@pytest.mark.parametrize("value", [-1.0, math.nan, math.inf, "soon", None])
async def test_a_backoff_returning_a_bad_value_retries_after_the_default_backoff(app: App, value: Any) -> None:
    calls: list[int] = []

    @app.job(name="flaky", max_attempts=2, backoff=lambda attempt: value)
    async def flaky() -> None:
        calls.append(1)
        raise ValueError("handler failed")

    with capture_signals(app, ["job.retrying", "worker.error"]) as events:
        await flaky.send_async()
        await burst(app)
    assert len(calls) == 2
    [retrying] = events.named("job.retrying")
    assert 0.0 <= retrying.attrs["delay"] <= Backoff().ceiling(1)
    [error] = events.named("worker.error")
    assert error.attrs["stage"] == "backoff" and repr(value) in error.attrs["error"].message


@pytest.mark.parametrize("delay", [math.nan, -5.0, "soon"])
async def test_retry_with_a_bad_delay_falls_back_to_the_jobs_backoff(app: App, delay: Any) -> None:
    calls: list[int] = []

    @app.job(name="flaky", max_attempts=2, backoff=FAST)
    async def flaky() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise Retry(delay=delay)

    with capture_signals(app, ["job.retrying", "worker.error"]) as events:
        await flaky.send_async()
        result = await burst(app)
    assert len(calls) == 2 and result.counters.completed == 1
    [retrying] = events.named("job.retrying")
    assert 0.0 <= retrying.attrs["delay"] <= FAST.ceiling(1)
    [error] = events.named("worker.error")
    assert error.attrs["stage"] == "backoff"


@dataclasses.dataclass(frozen=True, slots=True)
class ExplodingPolicy(RetryPolicy):
    def decide(self, error: BaseException, attempt: int, max_attempts: int | None = None) -> Decision:
        raise RuntimeError("policy exploded")


async def test_a_raising_retry_policy_dead_letters_the_job_and_the_worker_keeps_consuming(any_app: App) -> None:
    app = any_app
    done: list[int] = []

    @app.job(name="victim")
    async def victim() -> None:
        raise ValueError("handler failed")

    @app.job(name="normal")
    async def normal(n: int) -> None:
        done.append(n)

    app.registry["victim"] = dataclasses.replace(app.registry["victim"], policy=ExplodingPolicy())
    with capture_signals(app, ["worker.error", "job.dead"]) as events:
        bad = [await victim.send_async() for _ in range(2)]
        await app.send_batch_async([normal.message(i) for i in range(6)])
        result = await burst(app, concurrency=1)
    assert sorted(done) == list(range(6))
    letters = {d.id: d for d in await (await app.broker()).dlq_list()}
    assert set(letters) == set(bad)
    for letter in letters.values():
        assert (letter.reason, letter.error_type, letter.attempts) == ("retry_policy_error", "ValueError", 1)
    errors = events.named("worker.error")
    assert [e.attrs["stage"] for e in errors] == ["retry_policy", "retry_policy"]
    assert errors[0].attrs["error"].message == "policy exploded"
    assert_job_context(errors[0], bad[0], "victim", result.worker_id)
    assert_nothing_left(await (await app.broker()).stats())


def test_retry_on_must_hold_exception_classes(app: App) -> None:
    with pytest.raises(ConfigError, match="retry_on"):

        @app.job(retry_on=("ValueError",))  # type: ignore[arg-type]
        def typo() -> None: ...


# -- per-send max_attempts ----------------------------------------------------------------


async def test_per_send_max_attempts_of_one_runs_once_and_dead_letters_with_the_real_error(any_app: App) -> None:
    app = any_app
    calls: list[int] = []

    @app.job(name="once", max_attempts=3, backoff=FAST)
    async def once() -> None:
        calls.append(current_job().attempt)  # type: ignore[union-attr]
        raise ValueError("the real failure")

    job_id = await once.options(max_attempts=1).send_async()
    await burst(app)
    assert calls == [1]
    [dead] = await (await app.broker()).dlq_list()
    assert (dead.id, dead.reason, dead.attempts) == (job_id, "max_attempts_exceeded", 1)
    assert (dead.error_type, dead.error_message) == ("ValueError", "the real failure")


@pytest.mark.parametrize(("defined", "per_send"), [(3, 5), (5, 2)])
async def test_per_send_max_attempts_governs_the_number_of_attempts(
    any_app: App, defined: int, per_send: int
) -> None:
    app = any_app
    calls: list[int] = []

    @app.job(name="flaky", max_attempts=defined, backoff=FAST)
    async def flaky() -> None:
        calls.append(current_job().attempt)  # type: ignore[union-attr]
        raise ValueError("nope")

    await flaky.options(max_attempts=per_send).send_async()
    await burst(app)
    assert calls == list(range(1, per_send + 1))
    [dead] = await (await app.broker()).dlq_list()
    assert (dead.reason, dead.attempts, dead.error_type) == ("max_attempts_exceeded", per_send, "ValueError")


async def test_timeout_on_the_last_per_send_attempt_is_reason_timeout(app: App) -> None:
    @app.job(name="slow", timeout=0.05, max_attempts=5, backoff=FAST)
    async def slow() -> None:
        await asyncio.sleep(5)

    await slow.options(max_attempts=2).send_async()
    await burst(app)
    [dead] = await (await app.broker()).dlq_list()
    assert (dead.reason, dead.attempts) == ("timeout", 2)


# -- "worker lost" only when a worker was lost ---------------------------------------------


async def test_a_job_whose_lease_expired_on_its_last_attempt_says_the_worker_was_lost(any_app: App) -> None:
    app = any_app

    @app.job(name="fragile", max_attempts=1)
    async def fragile() -> None: ...

    broker = await app.broker()
    job_id = await fragile.send_async()
    await broker.lease(["default"], 1, 0.05)  # a worker took it and died
    await asyncio.sleep(0.1)
    assert await broker.rescue() == [job_id]
    await burst(app)
    [dead] = await broker.dlq_list()
    assert dead.reason == "max_attempts_exceeded" and dead.error_type == "LeaseExpired"
    assert "was lost" in dead.error_message and "lease expired" in dead.error_message
    assert "lease_expired" in dead.error_message  # the redelivery reason, by its name


@pytest.mark.parametrize(
    ("redelivery", "error_type", "named"),
    [
        (WORKER_SHUTDOWN, "WorkerShutdown", "worker_shutdown"),
        (MANUAL_RETRY, "AttemptsExhausted", "manual_retry"),
        ("", "AttemptsExhausted", "no redelivery reason"),
    ],
)
async def test_attempts_exhausted_without_a_lost_worker_names_the_real_redelivery_reason(
    app: App, redelivery: str, error_type: str, named: str
) -> None:
    @app.job(name="interrupted", max_attempts=1)
    async def interrupted() -> None:
        raise AssertionError("must not run past its max_attempts")

    broker = await app.broker()
    job_id = await interrupted.send_async()
    [leased] = await broker.lease(["default"], 1, 30)
    # What a broker hands out when earlier attempts counted without a lost lease (e.g. the
    # shutdown interruptions a broker stops refunding): one delivery past max_attempts.
    delivery = dataclasses.replace(leased, attempts=2, redelivery=redelivery)
    threads = ThreadRunner(asyncio.get_running_loop(), 1)
    executor = Executor(app, broker, Acker(broker), threads, "w1", lambda _: None, lambda _d, _b: None, lambda _d: True)
    try:
        await executor.execute(delivery)
    finally:
        executor.threads.stop()
    [dead] = await broker.dlq_list()
    assert (dead.id, dead.reason, dead.error_type) == (job_id, "max_attempts_exceeded", error_type)
    assert "lost" not in dead.error_message and named in dead.error_message


# -- conveyor's own code failing around a job ----------------------------------------------


class FailsOnce(MemoryBroker):
    """A real memory broker whose ``method`` raises the first time it is called."""

    def __init__(self, method: str) -> None:
        super().__init__()
        self.method = method
        self.failed = threading.Event()

    def _maybe_fail(self, name: str) -> None:
        if name == self.method and not self.failed.is_set():
            self.failed.set()
            raise ConnectionError(f"{name} lost its connection")

    async def nack(self, delivery: Delivery, retry_at: float, failure: Failure | None = None) -> bool:
        self._maybe_fail("nack")
        return await super().nack(delivery, retry_at, failure)

    async def dead(self, delivery: Delivery, reason: str, failure: Failure | None = None) -> bool:
        self._maybe_fail("dead")
        return await super().dead(delivery, reason, failure)


@pytest.fixture(params=["nack", "dead"])
def failing_broker(request: pytest.FixtureRequest) -> Iterator[FailsOnce]:
    yield FailsOnce(request.param)


@pytest.fixture
def failing_app(failing_broker: FailsOnce) -> Iterator[App]:
    a = App("memory://")
    a._connections._shared = failing_broker  # the app uses this (real) broker instead of opening its own
    yield a
    a.close()


async def test_a_failing_broker_call_emits_worker_error_and_the_worker_keeps_consuming(
    failing_app: App, failing_broker: FailsOnce, caplog: pytest.LogCaptureFixture
) -> None:
    app, broker, method = failing_app, failing_broker, failing_broker.method
    done: list[int] = []

    @app.job(name="flaky", max_attempts=1 if method == "dead" else 2, backoff=FAST)
    async def flaky() -> None:
        raise ValueError("handler failed")

    @app.job(name="normal")
    async def normal(n: int) -> None:
        done.append(n)

    with capture_signals(app, ["worker.error"]) as events:
        job_id = await flaky.send_async()
        await app.send_batch_async([normal.message(i) for i in range(5)])
        first = await burst(app, concurrency=1, visibility_timeout=0.5)
    assert sorted(done) == list(range(5))
    [error] = events.named("worker.error")
    assert error.attrs["stage"] == method and error.attrs["error"].type == "ConnectionError"
    assert_job_context(error, job_id, "flaky", first.worker_id)
    [record] = [r for r in caplog.records if r.name == "conveyor.worker" and r.levelno == logging.ERROR]
    assert f"{method} failed for job {job_id}" in record.getMessage() and record.exc_info is not None
    context = tuple(getattr(record, k, None) for k in JOB_CONTEXT)
    assert context == (job_id, "flaky", "default", 1, first.worker_id)  # JSON logs lift these to the top
    # The unsettled job is not lost: its lease expires and it comes back.
    deadline = time.monotonic() + DEADLINE
    while not await broker.dlq_list() and job_id not in await broker.rescue():
        assert time.monotonic() < deadline, "the job never came back"
        await asyncio.sleep(0.05)
    await burst(app)
    [dead] = await broker.dlq_list()
    assert (dead.id, dead.reason) == (job_id, "max_attempts_exceeded")
    assert_nothing_left(await broker.stats())


class SinkAbort(BaseException):
    """Not an Exception: the bus does not isolate it."""


async def test_a_signal_emission_that_raises_is_reported_and_the_job_still_runs(app: App) -> None:
    done: list[int] = []

    @app.job(name="normal")
    async def normal(n: int) -> None:
        done.append(n)

    def aborting_sink(event: Event) -> None:
        if event.attrs["job_id"] == first:
            raise SinkAbort("sink aborted")

    app.bus.subscribe(aborting_sink, ["job.started"])
    with capture_signals(app, ["worker.error"]) as events:
        first = await normal.send_async(0)
        await app.send_batch_async([normal.message(i) for i in range(1, 5)])
        result = await burst(app, concurrency=1)
    assert sorted(done) == list(range(5)) and result.counters.completed == 5
    [error] = events.named("worker.error")
    assert error.attrs["stage"] == "signal" and error.attrs["error"].type == "SinkAbort"
    assert_job_context(error, first, "normal", result.worker_id)
    assert_nothing_left(await (await app.broker()).stats())


async def test_a_message_too_deeply_nested_to_decode_is_dead_lettered_and_reported(any_app: App) -> None:
    app = any_app
    done: list[int] = []

    @app.job(name="normal")
    async def normal(n: int) -> None:
        done.append(n)

    broker = await app.broker()
    deep_id = new_id()
    body = b'{"id": "%s", "type": "normal", "args": %s%s}' % (deep_id.encode(), b"[" * 100_000, b"]" * 100_000)
    with capture_signals(app, ["worker.error"]) as events:
        await broker.enqueue([Message(deep_id, "default", "normal", body, 0, 0, time.time())])
        await app.send_batch_async([normal.message(i) for i in range(3)])
        result = await burst(app, concurrency=1)
    assert sorted(done) == [0, 1, 2]
    [dead] = await broker.dlq_list()
    assert (dead.id, dead.reason, dead.error_type) == (deep_id, "undecodable", "RecursionError")
    [error] = events.named("worker.error")
    assert error.attrs["stage"] == "decode"
    assert_job_context(error, deep_id, "normal", result.worker_id)
