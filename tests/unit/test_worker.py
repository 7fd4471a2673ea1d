"""Worker behaviour on the memory broker: retries, dead letters, timeouts, shutdown."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from conveyor import App, Backoff, Event, NonRetryable, Retry, Worker, WorkerConfig, current_job
from conveyor.brokers import Message
from conveyor.job import new_id
from conveyor.testing import capture_signals, run_until_idle, run_until_idle_async

FAST = Backoff(base=0.01, maximum=0.02)


def dead_reasons(app: App) -> dict[str, str]:
    return {d.id: d.reason for d in app.dlq_list()}


def test_success_acks_and_emits_lifecycle(app: App) -> None:
    @app.job
    async def ok(x: int) -> int:
        return x

    with capture_signals(app) as events:
        job_id = ok.send(1)
        result = run_until_idle(app)
    assert result.counters.completed == 1 and result.reason == "burst_done"
    names = [e.name for e in events if e.get("job_id") == job_id]
    assert names == ["job.enqueued", "job.started", "job.completed"]
    started = events.named("job.started")[0]
    assert started.attrs["attempt"] == 1 and started.attrs["worker_id"] == result.worker_id
    assert app.stats()["default"].ready == 0 and app.stats()["default"].in_flight == 0
    assert {"worker.started", "worker.busy", "worker.idle", "worker.stopped"} <= {e.name for e in events}


def test_failures_retry_with_backoff_then_dead_letter(app: App) -> None:
    calls: list[int] = []

    @app.job(max_attempts=3, backoff=FAST)
    def always_fails() -> None:
        calls.append(current_job().attempt)  # type: ignore[union-attr]
        raise ValueError("nope")

    with capture_signals(app) as events:
        job_id = always_fails.send()
        run_until_idle(app)
    assert calls == [1, 2, 3]
    assert len(events.named("job.failed")) == 3
    assert [e.attrs["will_retry"] for e in events.named("job.failed")] == [True, True, False]
    assert len(events.named("job.retrying")) == 2
    [dead] = app.dlq_list()
    assert (dead.id, dead.reason, dead.attempts) == (job_id, "max_attempts_exceeded", 3)
    assert dead.error_type == "ValueError" and dead.error_message == "nope"
    assert "Traceback" in dead.traceback and "always_fails" in dead.traceback


def test_retry_exception_sets_the_delay(app: App) -> None:
    stamps: list[float] = []

    @app.job(max_attempts=2)
    def later() -> None:
        stamps.append(time.monotonic())
        if len(stamps) == 1:
            raise Retry(delay=0.3)

    later.send()
    run_until_idle(app)
    assert len(stamps) == 2 and stamps[1] - stamps[0] >= 0.28


def test_non_retryable_and_retry_on(app: App) -> None:
    @app.job(max_attempts=5)
    def fatal() -> None:
        raise NonRetryable("bad input")

    @app.job(max_attempts=5, retry_on=ConnectionError, backoff=FAST)
    def picky() -> None:
        raise KeyError("not a connection error")

    a, b = fatal.send(), picky.send()
    run_until_idle(app)
    assert dead_reasons(app) == {a: "non_retryable", b: "non_retryable"}
    assert {d.attempts for d in app.dlq_list()} == {1}


@pytest.mark.parametrize("is_async", [True, False])
def test_timeout_is_retried_then_dead_with_reason_timeout(app: App, is_async: bool) -> None:
    if is_async:

        @app.job(name="slow", timeout=0.1, max_attempts=2, backoff=FAST)
        async def slow() -> None:
            await asyncio.sleep(5)
    else:

        @app.job(name="slow", timeout=0.1, max_attempts=2, backoff=FAST)
        def slow() -> None:
            time.sleep(0.3)

    job_id = slow.send()
    start = time.monotonic()
    result = run_until_idle(app)
    assert dead_reasons(app) == {job_id: "timeout"}
    assert result.counters.failed == 2
    assert time.monotonic() - start < 3
    assert "timeout of 0.1s" in app.dlq_list()[0].error_message


async def test_unknown_type_and_undecodable_go_to_the_dlq_and_the_worker_continues(
    app: App,
) -> None:
    @app.job
    async def good(n: int) -> None: ...

    broker = await app.broker()
    before = await good.send_async(1)
    bad_body = Message(new_id(), "default", "?", b"\xff garbage", 0, 0, time.time())
    missing = Message(new_id(), "default", "x", b'{"queue": "default"}', 0, 0, time.time())
    ghost_id = new_id()
    ghost = Message(
        ghost_id, "default", "ghost", b'{"id": "%s", "type": "ghost"}' % ghost_id.encode(), 0, 0, time.time()
    )
    await broker.enqueue([bad_body, missing, ghost])
    after = await good.send_async(2)
    with capture_signals(app, ["job.completed", "job.dead"]) as events:
        await run_until_idle_async(app)
    assert {e.attrs["job_id"] for e in events.named("job.completed")} == {before, after}
    letters = {d.id: d for d in await broker.dlq_list()}
    assert letters[bad_body.id].reason == "undecodable"
    assert letters[missing.id].reason == "undecodable"
    assert letters[ghost_id].reason == "unknown_job_type"
    assert "ghost" in letters[ghost_id].error_message


def test_burst_waits_for_its_own_retries(app: App) -> None:
    attempts: list[int] = []

    @app.job(max_attempts=2)
    def flaky() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise Retry(delay=0.5)

    flaky.send()
    result = run_until_idle(app)
    assert len(attempts) == 2 and result.counters.completed == 1


def test_burst_ignores_future_scheduled_jobs(app: App) -> None:
    @app.job
    def later() -> None: ...

    later.options(delay=60).send()
    start = time.monotonic()
    run_until_idle(app)
    assert time.monotonic() - start < 2
    assert app.stats()["default"].delayed == 1


def test_priority_order_with_one_slot(app: App) -> None:
    order: list[str] = []

    @app.job
    def work(tag: str) -> None:
        order.append(tag)

    for tag, prio in (("low", 0), ("high", 9), ("mid", 5)):
        work.options(priority=prio).send(tag)
    run_until_idle(app, concurrency=1, prefetch=0)  # type: ignore[arg-type]
    assert order == ["high", "mid", "low"]


def test_concurrency_bounds_parallelism(app: App) -> None:
    running, peak = [0], [0]
    lock = threading.Lock()

    @app.job
    def work() -> None:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1

    app.send_batch([work.message() for _ in range(20)])
    run_until_idle(app, concurrency=3)
    assert peak[0] == 3


def test_job_context_is_visible_in_sync_and_async_handlers(app: App) -> None:
    seen: list[tuple[str, str, int]] = []

    @app.job(queue="ctx")
    def sync_job() -> None:
        c = current_job()
        assert c is not None
        seen.append((c.job.type, c.job.queue, c.attempt))

    @app.job(queue="ctx")
    async def async_job() -> None:
        c = current_job()
        assert c is not None
        seen.append((c.job.type, c.job.queue, c.attempt))

    sync_job.send()
    async_job.send()
    run_until_idle(app)
    assert sorted(seen) == sorted([(sync_job.name, "ctx", 1), (async_job.name, "ctx", 1)])
    assert current_job() is None


def test_a_failing_sink_never_breaks_a_job(app: App, caplog: pytest.LogCaptureFixture) -> None:
    @app.job
    def ok() -> None: ...

    def broken(event: Event) -> None:
        raise RuntimeError("sink exploded")

    app.bus.subscribe(broken)
    ok.send()
    with caplog.at_level(logging.ERROR):
        result = run_until_idle(app)
    assert result.counters.completed == 1 and app.stats()["default"].dead == 0
    assert "sink exploded" in caplog.text


def test_user_signals_emitted_from_handlers(app: App) -> None:
    from conveyor import Signal, StringKey

    sent = Signal("email.sent", "An email left.", [StringKey("to")])

    @app.job
    def send_email(to: str) -> None:
        app.emit(sent, to=to)

    with capture_signals(app, [sent]) as events:
        send_email.send("a@b")
        run_until_idle(app)
    assert [e.attrs["to"] for e in events] == ["a@b"]


async def test_graceful_stop_finishes_running_and_returns_unstarted(app: App) -> None:
    started = asyncio.Event()
    finished: list[int] = []

    @app.job
    async def slow(n: int) -> None:
        started.set()
        await asyncio.sleep(0.3)
        finished.append(n)

    await app.send_batch_async([slow.message(i) for i in range(6)])
    worker = Worker(app, WorkerConfig(concurrency=2, prefetch=2, shutdown_timeout=5))
    task = asyncio.create_task(worker.run())
    await started.wait()
    worker.request_stop()
    result = await task
    assert len(finished) == 2 and result.reason == "signal" and result.abandoned == 0
    s = (await (await app.broker()).stats(["default"]))["default"]
    assert (s.ready, s.in_flight) == (4, 0)


async def test_shutdown_timeout_requeues_running_jobs(app: App) -> None:
    started = asyncio.Event()

    @app.job
    async def stuck() -> None:
        started.set()
        await asyncio.sleep(30)

    job_id = await stuck.send_async()
    worker = Worker(app, WorkerConfig(concurrency=1, shutdown_timeout=0.2))
    task = asyncio.create_task(worker.run())
    await started.wait()
    t0 = time.monotonic()
    worker.request_stop()
    result = await task
    assert time.monotonic() - t0 < 2
    assert result.reason == "shutdown_timeout" and result.abandoned == 1
    [d] = await (await app.broker()).lease(["default"], 1, 30)
    assert d.id == job_id and d.attempts == 1 and d.redelivery == "worker_shutdown"


async def test_second_stop_requeues_at_once(app: App) -> None:
    started = asyncio.Event()

    @app.job
    async def stuck() -> None:
        started.set()
        await asyncio.sleep(30)

    await stuck.send_async()
    worker = Worker(app, WorkerConfig(concurrency=1, shutdown_timeout=60))
    task = asyncio.create_task(worker.run())
    await started.wait()
    t0 = time.monotonic()
    worker.request_stop()
    await asyncio.sleep(0.1)
    worker.request_stop()
    result = await task
    assert time.monotonic() - t0 < 2 and result.reason == "forced"
    assert (await (await app.broker()).stats(["default"]))["default"].ready == 1


async def test_heartbeat_keeps_a_long_job_leased(app: App) -> None:
    @app.job
    async def long() -> None:
        await asyncio.sleep(1.0)

    await long.send_async()
    # visibility 0.3 s, job 1 s: without heartbeats the lease would expire and be rescued
    result = await Worker(app, WorkerConfig(burst=True, visibility_timeout=0.3, rescue_interval=0.1)).run()
    assert result.counters.completed == 1
    assert (await (await app.broker()).stats(["default"]))["default"].ready == 0


async def test_queue_depth_is_emitted_periodically(app: App) -> None:
    @app.job(queue="depth")
    async def slow() -> None:
        await asyncio.sleep(0.4)

    await slow.send_async()
    with capture_signals(app, ["queue.depth"]) as events:
        await Worker(app, WorkerConfig(burst=True, stats_interval=0.1)).run()
    assert events and all(e.attrs["queue"] == "depth" for e in events)
    assert any(e.attrs["in_flight"] == 1 for e in events)


async def test_sqlite_rescue_prunes_expired_lock_rows(tmp_path: object) -> None:
    from conveyor.brokers.sqlite import SQLiteBroker

    broker = SQLiteBroker(f"{tmp_path}/locks.db")
    assert await broker.acquire_lock("a", "me", 0.05)
    assert await broker.acquire_lock("b", "me", 60)
    await asyncio.sleep(0.1)
    await broker.rescue()
    rows = await broker._run(lambda conn: conn.execute("SELECT name FROM conveyor_locks").fetchall())
    assert rows == [("b",)]
    await broker.close()
