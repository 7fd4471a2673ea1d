"""The Redis broker against a real server: crashes, reconnects, ordering, wake-ups.

Uses the server and per-test key prefixes of the contract factory
(tests/contract/factories/redis.py); an unreachable server fails these tests.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from conveyor import App, Worker, WorkerConfig
from conveyor.brokers import LEASE_EXPIRED, Failure, Message, QueueStats, Selector
from conveyor.brokers.redis import BATCH, RedisBroker, split_url
from conveyor.job import new_id
from tests.contract.factories import redis as factory

pytestmark = pytest.mark.integration

VT = 30.0


def msg(queue: str = "q", priority: int = 0, eta: float = 0.0, body: bytes = b"{}") -> Message:
    return Message(new_id(), queue, "t", body, priority, eta, time.time())


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[RedisBroker]:
    async with factory.make(tmp_path) as b:
        yield b


async def _until(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check() if callable(check) else check
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


# -- crash safety -------------------------------------------------------------

WORKER_APP = textwrap.dedent(
    """
    import os, pathlib, time
    import conveyor

    app = conveyor.App(os.environ["CONVEYOR_TEST_URL"])
    out = pathlib.Path(os.environ["CONVEYOR_TEST_DIR"])

    @app.job(name="slow", queue="kill", max_attempts=5)
    def slow(n):
        ctx = conveyor.current_job()
        (out / f"started-{ctx.attempt}").write_text(str(os.getpid()))
        if ctx.attempt == 1:
            time.sleep(600)
        (out / "done").write_text(f"{n} {ctx.attempt} {ctx.redelivery}")
    """
)

RUN_WORKER = (
    "import asyncio, conveyor, app_mod; "
    "cfg = conveyor.WorkerConfig(queues=('kill',), concurrency=1, visibility_timeout=1.0,"
    " rescue_interval=0.2); "
    "asyncio.run(conveyor.Worker(app_mod.app, cfg).run())"
)


def _spawn_worker(tmp_path: Path, url: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CONVEYOR_TEST_URL": url, "CONVEYOR_TEST_DIR": str(tmp_path)}
    return subprocess.Popen([sys.executable, "-c", RUN_WORKER], cwd=tmp_path, env=env)


async def test_job_of_a_sigkilled_worker_is_rescued_and_completed(
    broker: RedisBroker, tmp_path: Path
) -> None:
    (tmp_path / "app_mod.py").write_text(WORKER_APP)
    url = factory.url_for(tmp_path)
    app = App(url)

    @app.job(name="slow", queue="kill")
    def slow(n: int) -> None: ...

    first = _spawn_worker(tmp_path, url)
    second: subprocess.Popen[bytes] | None = None
    try:
        job_id = await slow.send_async(7)
        await _until(lambda: (tmp_path / "started-1").exists(), 30, "the first worker to start")
        assert (await broker.stats(["kill"]))["kill"].in_flight == 1
        first.send_signal(signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL
        # Nothing is lost: the job sits in the in-flight set until its lease expires.
        s = (await broker.stats(["kill"]))["kill"]
        assert (s.in_flight, s.ready, s.dead) == (1, 0, 0)

        second = _spawn_worker(tmp_path, url)
        await _until(lambda: (tmp_path / "done").exists(), 30, "the second worker to finish")
        assert (tmp_path / "done").read_text() == f"7 2 {LEASE_EXPIRED}"

        async def drained() -> bool:
            s = (await broker.stats(["kill"]))["kill"]
            return (s.ready, s.delayed, s.in_flight, s.dead) == (0, 0, 0, 0)

        await _until(drained, 10, "the job to be acked")
        assert not await broker.client.exists(f"{broker.prefix}:job:{job_id}")
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
        await app.aclose()


async def test_rescue_puts_back_more_than_one_batch(broker: RedisBroker) -> None:
    n = BATCH * 2 + 7
    await broker.enqueue([msg() for _ in range(n)])
    leased = await broker.lease(["q"], n, 0.1)
    await asyncio.sleep(0.2)
    assert sorted(await broker.rescue()) == sorted(d.id for d in leased)
    assert (await broker.stats(["q"]))["q"].ready == n


# -- reconnects and delayed jobs ----------------------------------------------

async def test_delayed_job_is_due_after_a_reconnect(tmp_path: Path) -> None:
    async with factory.make(tmp_path) as first:
        m = msg(eta=time.time() + 0.8)
        await first.enqueue([m])
        await first.close()
        async with factory.make_peer(tmp_path) as second:
            s = (await second.stats(["q"]))["q"]
            assert (s.ready, s.delayed) == (0, 1)
            assert await second.lease(["q"], 10, VT) == []
            await asyncio.sleep(1.0)
            [d] = await second.lease(["q"], 10, VT)
            assert (d.id, d.attempts) == (m.id, 1)


async def test_close_then_connect_again_on_the_same_instance(broker: RedisBroker) -> None:
    await broker.enqueue([msg(eta=time.time() + 0.3)])
    await broker.close()
    await broker.connect()
    await asyncio.sleep(0.4)
    assert len(await broker.lease(["q"], 10, VT)) == 1


# -- the lease script -----------------------------------------------------------

async def test_lease_script_orders_by_priority_across_queues(broker: RedisBroker) -> None:
    now = time.time()
    a_low, a_high = msg("qa", 0, now - 3), msg("qa", 5, now - 1)
    b_mid, b_top = msg("qb", 3, now - 2), msg("qb", 9, now)
    b_low_old = msg("qb", 0, now - 10)
    a_low_fifo1, a_low_fifo2 = msg("qa", 0, now - 3), msg("qa", 0, now - 3)
    b_delayed = msg("qb", 99, now + 60)
    await broker.enqueue([a_low, a_high, b_mid, b_top, b_low_old, b_delayed])
    await broker.enqueue([a_low_fifo1])
    await broker.enqueue([a_low_fifo2])
    got = [d.id for d in await broker.lease(["qa", "qb"], 100, VT)]
    assert got == [b_top.id, a_high.id, b_mid.id, b_low_old.id, a_low.id, a_low_fifo1.id,
                   a_low_fifo2.id]


async def test_lease_limit_takes_the_best_across_queues(broker: RedisBroker) -> None:
    await broker.enqueue([msg("qa", p) for p in range(5)] + [msg("qb", p) for p in range(5)])
    got = await broker.lease(["qa", "qb", "qa"], 4, VT)
    assert [(d.queue, d.priority) for d in got] == [("qa", 4), ("qb", 4), ("qa", 3), ("qb", 3)]


async def test_release_keeps_the_original_position(broker: RedisBroker) -> None:
    first, second = msg(), msg()
    await broker.enqueue([first])
    await broker.enqueue([second])
    d1, d2 = await broker.lease(["q"], 2, VT)
    await broker.release([d2, d1])
    assert [d.id for d in await broker.lease(["q"], 2, VT)] == [first.id, second.id]


async def test_finished_jobs_leave_no_keys_behind(broker: RedisBroker) -> None:
    await broker.enqueue([msg(body=os.urandom(100_000)) for _ in range(5)])
    ds = await broker.lease(["q"], 5, VT)
    await broker.ack(ds[:3])
    await broker.nack(ds[3], time.time(), Failure("E", "m", "tb"))
    await broker.dead(ds[4], "non_retryable")
    [again] = await broker.lease(["q"], 5, VT)
    await broker.ack([again])
    assert await broker.dlq_purge(Selector(all=True)) == [ds[4].id]
    keys = {k.decode() async for k in broker.client.scan_iter(match=f"{broker.prefix}:*")}
    assert keys == {f"{broker.prefix}:{k}" for k in ("queues", "seq", "leased")}
    assert (await broker.stats(["q"]))["q"] == QueueStats()


async def test_dlq_retry_and_purge_all_span_several_batches(broker: RedisBroker) -> None:
    n = BATCH + 50
    await broker.enqueue([msg("d1") for _ in range(n)] + [msg("d2") for _ in range(3)])
    for d in await broker.lease(["d1", "d2"], n + 3, VT):
        await broker.dead(d, "non_retryable")
    assert len(await broker.dlq_list(limit=n * 2)) == n + 3
    assert len(set(await broker.dlq_retry(Selector(all=True, queue="d1")))) == n
    assert (await broker.stats(["d1"]))["d1"].ready == n
    assert len(await broker.dlq_purge(Selector(all=True))) == 3
    assert await broker.dlq_list() == []


async def test_dlq_prune_spans_several_batches_and_leaves_no_keys_behind(broker: RedisBroker) -> None:
    n = BATCH + 50
    await broker.enqueue([msg("d1") for _ in range(2 * n)] + [msg("d2") for _ in range(3)])
    for d in await broker.lease(["d1", "d2"], 2 * n + 3, VT):
        await broker.dead(d, "non_retryable")
    assert await broker.dlq_prune(keep=n) == n  # d1 keeps its newest n
    assert (await broker.stats(["d1"]))["d1"].dead == n
    assert await broker.dlq_prune(dead_before=time.time() + 1) == n + 3
    keys = {k.decode() async for k in broker.client.scan_iter(match=f"{broker.prefix}:*")}
    assert keys == {f"{broker.prefix}:{k}" for k in ("queues", "seq", "leased")}


# -- waking idle workers ----------------------------------------------------------

async def test_wait_wakes_at_once_when_another_instance_enqueues(
    broker: RedisBroker, tmp_path: Path
) -> None:
    assert await broker.lease(["q"], 1, VT) == []
    await broker.wait(["q"], 2.0)  # first call subscribes; may return early once
    assert await broker.lease(["q"], 1, VT) == []
    async with factory.make_peer(tmp_path) as producer:
        waiter = asyncio.create_task(broker.wait(["q"], 5.0))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        sent = time.monotonic()
        await producer.enqueue([msg()])
        await asyncio.wait_for(waiter, 1.0)
        assert time.monotonic() - sent < 0.5
        assert len(await broker.lease(["q"], 1, VT)) == 1


async def test_every_waiter_wakes(broker: RedisBroker, tmp_path: Path) -> None:
    await broker.lease(["q"], 1, VT)
    await broker.wait(["q"], 2.0)
    await broker.lease(["q"], 1, VT)
    async with factory.make_peer(tmp_path) as producer:
        waiters = [asyncio.create_task(broker.wait(["q"], 5.0)) for _ in range(3)]
        await asyncio.sleep(0.05)
        await producer.enqueue([msg()])
        await asyncio.wait_for(asyncio.gather(*waiters), 1.0)


async def test_wait_ignores_other_queues(broker: RedisBroker, tmp_path: Path) -> None:
    await broker.lease(["q"], 1, VT)
    await broker.wait(["q"], 2.0)
    await broker.lease(["q"], 1, VT)
    async with factory.make_peer(tmp_path) as producer:
        start = time.monotonic()
        waiter = asyncio.create_task(broker.wait(["q"], 0.5))
        await producer.enqueue([msg("other")])
        await waiter
        assert time.monotonic() - start >= 0.45


async def test_wait_wakes_when_a_delayed_job_falls_due(
    broker: RedisBroker, tmp_path: Path
) -> None:
    await broker.lease(["q"], 1, VT)
    await broker.wait(["q"], 2.0)
    await broker.lease(["q"], 1, VT)
    async with factory.make_peer(tmp_path) as producer:
        waiter = asyncio.create_task(broker.wait(["q"], 10.0))
        await asyncio.sleep(0.05)
        due = time.time() + 0.5
        await producer.enqueue([msg(eta=due)])
        await asyncio.wait_for(waiter, 5.0)
        assert due - 0.05 <= time.time() <= due + 0.5
    [d] = await broker.lease(["q"], 1, VT)
    assert d.attempts == 1


async def test_wait_learns_due_times_from_lease(broker: RedisBroker) -> None:
    await broker.lease(["q"], 1, VT)
    await broker.wait(["q"], 2.0)  # subscribe first
    due = time.time() + 0.4
    await broker.enqueue([msg(eta=due)])
    assert await broker.lease(["q"], 1, VT) == []
    start = time.monotonic()
    await broker.wait(["q"], 10.0)
    assert time.monotonic() - start < 2.0 and time.time() >= due - 0.05


async def test_wake_channel_comes_back_after_its_connection_is_killed(tmp_path: Path) -> None:
    name = f"wake-{factory.prefix_for(tmp_path)}"
    async with factory.make(tmp_path) as plain:
        await plain.close()  # only for the prefix cleanup around this test
        broker = RedisBroker.from_url(f"{factory.url_for(tmp_path)}&client_name={name}")
        await broker.connect()
        try:
            await broker.lease(["q"], 1, VT)
            await broker.wait(["q"], 2.0)  # subscribes
            await broker.lease(["q"], 1, VT)
            listing = await broker.client.client_list(_type="pubsub")
            ids = [c["id"] for c in listing if c.get("name") == name]
            assert len(ids) == 1
            await broker.client.client_kill_filter(_id=ids[0])
            start = time.monotonic()
            await broker.wait(["q"], 5.0)  # the lost channel wakes the waiter to look again
            assert time.monotonic() - start < 3.0
            await broker.lease(["q"], 1, VT)
            async with factory.make_peer(tmp_path) as producer:
                waiter = asyncio.create_task(broker.wait(["q"], 10.0))
                await asyncio.sleep(0.3)  # resubscribed by now
                if waiter.done():  # the resubscription itself may wake it once
                    await broker.lease(["q"], 1, VT)
                    waiter = asyncio.create_task(broker.wait(["q"], 10.0))
                    await asyncio.sleep(0.05)
                sent = time.monotonic()
                await producer.enqueue([msg()])
                await asyncio.wait_for(waiter, 5.0)
                assert time.monotonic() - sent < 0.5
        finally:
            await broker.close()


async def test_wait_never_exceeds_its_timeout(broker: RedisBroker) -> None:
    for timeout in (0.0, 0.05, 0.3):
        start = time.monotonic()
        await broker.wait(["q"], timeout)
        assert time.monotonic() - start < timeout + 0.1


async def test_enqueue_to_start_latency_with_a_worker(tmp_path: Path) -> None:
    """500 jobs/s through a real Worker. Idle workers must wake on the notification,
    never by polling: with a 5 s poll interval a missed wake-up would show as seconds.
    The target on a quiet machine is p99 <= 5 ms (set CONVEYOR_TEST_P99_LIMIT=0.005)."""
    url = factory.url_for(tmp_path)
    app = App(url)
    lags: list[float] = []

    @app.job(name="lat", queue="lat")
    async def lat(sent: float) -> None:
        lags.append(time.time() - sent)

    await factory.delete_prefix(factory.prefix_for(tmp_path))
    worker = Worker(app, WorkerConfig(queues=("lat",), concurrency=8, poll_interval=5.0))
    running = asyncio.create_task(worker.run())
    n = 500
    try:
        await asyncio.sleep(0.5)
        start = time.perf_counter()
        for i in range(n):
            await asyncio.sleep(max(0.0, start + i * 0.002 - time.perf_counter()))
            await lat.send_async(time.time())
        await _until(lambda: len(lags) == n, 20, "every job to start")
    finally:
        worker.request_stop()
        await asyncio.wait_for(running, 15)
        await factory.delete_prefix(factory.prefix_for(tmp_path))
    lags.sort()
    p50, p99 = lags[n // 2], lags[int(n * 0.99)]
    print(f"enqueue->start latency: p50 {p50 * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms")
    assert p99 < float(os.environ.get("CONVEYOR_TEST_P99_LIMIT", "0.5"))


# -- configuration ---------------------------------------------------------------

def test_prefix_is_taken_out_of_the_url() -> None:
    url, prefix = split_url("redis://:pw@example:6380/3?prefix=app1&socket_timeout=5")
    assert (url, prefix) == ("redis://:pw@example:6380/3?socket_timeout=5", "app1")
    assert split_url("rediss://h/0") == ("rediss://h/0", "conveyor")
    b = RedisBroker.from_url("redis://h/1?prefix=x.y")
    assert (b.url, b.prefix) == ("redis://h/1", "x.y")


@pytest.mark.parametrize("bad", ["", "a b", "a*", "{x}"])
def test_bad_prefix_is_refused(bad: str) -> None:
    from conveyor.errors import ConfigError

    with pytest.raises(ConfigError):
        split_url(f"redis://h/0?prefix={bad}")


def test_decode_responses_is_refused() -> None:
    from conveyor.errors import ConfigError

    with pytest.raises(ConfigError, match="decode_responses"):
        split_url("redis://h/0?decode_responses=true")


async def test_unreachable_server_raises_broker_unavailable_on_connect() -> None:
    from conveyor.errors import BrokerUnavailable

    b = RedisBroker.from_url("redis://:hunter2@127.0.0.1:1/0")
    expected = r"Redis broker at redis://:\*\*\*@127\.0\.0\.1:1/0: .*refused"
    with pytest.raises(BrokerUnavailable, match=expected) as info:
        await b.connect()
    assert "hunter2" not in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value.__cause__, RedisConnectionError)
