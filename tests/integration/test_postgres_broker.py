"""The PostgreSQL broker against a real server: transactional enqueue, NOTIFY wake-ups,
migrations, and rescue of a job whose worker process was SIGKILLed.

The server is found as in tests/contract/factories/postgres.py; when none
answers, these tests fail (they are never skipped). Each test works in a
schema of its own, dropped afterwards.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import conveyor
from conveyor.brokers import Message
from conveyor.brokers.postgres import PostgresBroker
from conveyor.brokers.postgres_sql import latest_version, parse_url
from conveyor.brokers.postgres_tx import send_in_transaction, send_in_transaction_sync
from conveyor.errors import ConfigError
from conveyor.job import new_id
from tests.contract.factories.postgres import drop_schema, new_schema, server_url, url_for

pytestmark = pytest.mark.integration

Q = "itest"


@pytest.fixture
def schema() -> Iterator[str]:
    name = new_schema()
    yield name
    drop_schema(name)


@pytest.fixture
async def broker(schema: str) -> AsyncIterator[PostgresBroker]:
    b = PostgresBroker.from_url(url_for(schema))
    await b.connect()
    yield b
    await b.close()


@pytest.fixture
async def peer(broker: PostgresBroker, schema: str) -> AsyncIterator[PostgresBroker]:
    b = PostgresBroker.from_url(url_for(schema))
    await b.connect()
    yield b
    await b.close()


def make_app(schema: str) -> tuple[conveyor.App, Any]:
    app = conveyor.App(url_for(schema))

    @app.job(name="itest.record", queue=Q)
    def record(n: int) -> None:
        """Never run here: the tests only build and send it."""

    return app, record


def msg(queue: str = Q) -> Message:
    return Message(new_id(), queue, "t", b"{}", 0, 0.0, time.time())


# -- transactional enqueue -----------------------------------------------------
async def test_send_in_committed_async_transaction_enqueues(
    broker: PostgresBroker, schema: str
) -> None:
    app, record = make_app(schema)
    async with await psycopg.AsyncConnection.connect(server_url()) as conn, conn.transaction():
        await conn.execute("SELECT 1")  # the caller's own work
        ids = await send_in_transaction(app, conn, [record.message(1), record.message(2)])
        assert await broker.lease([Q], 10, 30) == []  # not visible before commit
    got = await broker.lease([Q], 10, 30)
    assert sorted(d.id for d in got) == sorted(ids)
    assert {d.type for d in got} == {"itest.record"}


async def test_send_in_rolled_back_async_transaction_enqueues_nothing(
    broker: PostgresBroker, schema: str
) -> None:
    app, record = make_app(schema)
    async with await psycopg.AsyncConnection.connect(server_url()) as conn:
        ids = await send_in_transaction(app, conn, [record.message(1)])
        assert len(ids) == 1
        await conn.rollback()
    assert (await broker.stats([Q]))[Q].ready == 0
    assert await broker.lease([Q], 10, 30) == []


async def test_send_in_sync_transaction_commit_and_rollback(
    broker: PostgresBroker, schema: str
) -> None:
    app, record = make_app(schema)

    def in_thread() -> tuple[list[str], list[str]]:
        with psycopg.connect(server_url()) as conn:
            kept = send_in_transaction_sync(app, conn, [record.message(1)])
            conn.commit()
            dropped = send_in_transaction_sync(app, conn, [record.message(2)])
            conn.rollback()
        return kept, dropped

    kept, dropped = await asyncio.to_thread(in_thread)
    got = await broker.lease([Q], 10, 30)
    assert [d.id for d in got] == kept
    assert dropped[0] not in {d.id for d in got}


async def test_committed_transaction_wakes_a_waiting_worker(
    broker: PostgresBroker, schema: str
) -> None:
    app, record = make_app(schema)
    await _listening(broker)
    waiter = asyncio.create_task(broker.wait([Q], 5))
    async with await psycopg.AsyncConnection.connect(server_url()) as conn:
        async with conn.transaction():
            await send_in_transaction(app, conn, [record.message(1)])
            await asyncio.sleep(0.3)
            assert not waiter.done()  # no notification before commit
        start = time.monotonic()
    await waiter
    assert time.monotonic() - start < 0.5


def test_transactional_enqueue_needs_a_postgres_app() -> None:
    app = conveyor.App("memory://")

    @app.job(name="itest.mem")
    def mem() -> None:
        """Never run."""

    with pytest.raises(ConfigError), psycopg.connect(server_url()) as conn:
        send_in_transaction_sync(app, conn, [mem.message()])


# -- LISTEN/NOTIFY -------------------------------------------------------------
async def _listening(b: PostgresBroker) -> None:
    """Start the listener and swallow the wake-up it sends when it connects."""
    deadline = time.monotonic() + 10
    while not b.listening:
        assert time.monotonic() < deadline, "listener did not connect"
        await b.wait([Q], 0.05)
    await b.wait([Q], 0)


async def _wake_latency(waiter: PostgresBroker, sender: PostgresBroker, queue: str = Q) -> float:
    task = asyncio.create_task(waiter.wait([Q], 5))
    await asyncio.sleep(0.2)
    assert not task.done(), "wait returned before anything was enqueued"
    start = time.monotonic()
    await sender.enqueue([msg(queue)])
    await task
    return time.monotonic() - start


async def test_notify_wakes_a_waiting_broker_at_once(
    broker: PostgresBroker, peer: PostgresBroker
) -> None:
    await _listening(broker)
    assert await _wake_latency(broker, peer) < 0.5


async def test_notify_for_another_queue_does_not_wake(
    broker: PostgresBroker, peer: PostgresBroker
) -> None:
    await _listening(broker)
    start = time.monotonic()
    task = asyncio.create_task(broker.wait([Q], 0.6))
    await asyncio.sleep(0.1)
    await peer.enqueue([msg("elsewhere")])
    await task
    assert time.monotonic() - start >= 0.55


async def test_a_delayed_job_does_not_wake(broker: PostgresBroker, peer: PostgresBroker) -> None:
    await _listening(broker)
    start = time.monotonic()
    task = asyncio.create_task(broker.wait([Q], 0.6))
    await asyncio.sleep(0.1)
    await peer.enqueue([Message(new_id(), Q, "t", b"{}", 0, time.time() + 60, time.time())])
    await task
    assert time.monotonic() - start >= 0.55


async def test_nack_release_and_dlq_retry_notify(
    broker: PostgresBroker, peer: PostgresBroker
) -> None:
    await peer.enqueue([msg(), msg(), msg()])
    a, b, c = await peer.lease([Q], 3, 30)
    await peer.dead(c, "non_retryable")
    await _listening(broker)
    for make_ready in (
        lambda: peer.nack(a, time.time()),
        lambda: peer.release([b]),
        lambda: peer.dlq_retry(conveyor.Selector(ids=[c.id])),
    ):
        task = asyncio.create_task(broker.wait([Q], 5))
        await asyncio.sleep(0.1)
        start = time.monotonic()
        await make_ready()
        await task
        assert time.monotonic() - start < 0.5


async def test_listener_reconnects_after_its_connection_is_killed(
    broker: PostgresBroker, peer: PostgresBroker
) -> None:
    await _listening(broker)
    conn = broker._listen_conn
    assert conn is not None
    old_pid = conn.info.backend_pid
    async with await psycopg.AsyncConnection.connect(server_url(), autocommit=True) as admin:
        await admin.execute("SELECT pg_terminate_backend(%s)", (old_pid,))
    deadline = time.monotonic() + 10
    while True:
        await broker.wait([Q], 0.05)
        new = broker._listen_conn
        if new is not None and new.info.backend_pid != old_pid:
            break
        assert time.monotonic() < deadline, "listener did not reconnect"
    await broker.wait([Q], 0)
    assert await _wake_latency(broker, peer) < 0.5


async def test_operations_survive_killed_pool_connections(
    schema: str, broker: PostgresBroker
) -> None:
    await asyncio.gather(*(broker.stats([Q]) for _ in range(4)))  # open a few connections
    async with await psycopg.AsyncConnection.connect(server_url(), autocommit=True) as admin:
        cur = await admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE pid <> pg_backend_pid() AND query LIKE %s",
            (f"%{schema}%",),
        )
        row = await cur.fetchone()
        assert row and row[0] >= 1
    await broker.enqueue([msg()])
    [d] = await broker.lease([Q], 1, 30)
    await broker.ack([d])
    assert (await broker.stats([Q]))[Q].in_flight == 0


async def test_wait_without_a_connection_just_sleeps() -> None:
    b = PostgresBroker.from_url("postgresql://nobody@127.0.0.1:1/none?connect_timeout=1")
    start = time.monotonic()
    await b.wait([Q], 0.3)
    assert 0.25 <= time.monotonic() - start < 2.0
    assert not b.listening
    await b.close()


# -- migrations ----------------------------------------------------------------
async def _versions(schema: str) -> list[int]:
    async with await psycopg.AsyncConnection.connect(server_url()) as conn:
        cur = await conn.execute(f'SELECT version FROM "{schema}".schema_version ORDER BY 1')
        return [r[0] for r in await cur.fetchall()]


async def test_migrate_is_idempotent(schema: str) -> None:
    b = PostgresBroker.from_url(url_for(schema, auto_migrate="false"))
    assert await b.schema_version() == 0
    await b.migrate()
    await b.migrate()
    assert await b.schema_version() == latest_version()
    await b.connect()  # auto_migrate=false: connects without touching the schema
    await b.enqueue([msg()])
    assert (await b.stats([Q]))[Q].ready == 1
    await b.migrate()  # with data in place
    assert (await b.stats([Q]))[Q].ready == 1
    await b.close()
    assert await _versions(schema) == list(range(1, latest_version() + 1))


async def test_concurrent_migrations_are_safe(schema: str) -> None:
    brokers = [PostgresBroker.from_url(url_for(schema)) for _ in range(6)]
    await asyncio.gather(*(b.migrate() for b in brokers[:3]), *(b.connect() for b in brokers[3:]))
    assert await _versions(schema) == list(range(1, latest_version() + 1))
    await brokers[0].connect()
    await brokers[0].enqueue([msg()])
    assert (await brokers[5].stats([Q]))[Q].ready == 1
    await asyncio.gather(*(b.close() for b in brokers))


async def test_concurrent_migrations_from_processes(schema: str) -> None:
    code = (
        "import asyncio, sys\n"
        "from conveyor.brokers.postgres import PostgresBroker\n"
        "asyncio.run(PostgresBroker.from_url(sys.argv[1]).migrate())\n"
    )
    procs = [
        await asyncio.create_subprocess_exec(sys.executable, "-c", code, url_for(schema))
        for _ in range(4)
    ]
    codes = await asyncio.gather(*(p.wait() for p in procs))
    assert codes == [0, 0, 0, 0]
    assert await _versions(schema) == list(range(1, latest_version() + 1))


async def test_a_newer_schema_is_refused(broker: PostgresBroker, schema: str) -> None:
    async with await psycopg.AsyncConnection.connect(server_url(), autocommit=True) as conn:
        await conn.execute(f'INSERT INTO "{schema}".schema_version (version) VALUES (999)')
    with pytest.raises(ConfigError, match="newer"):
        await broker.migrate()


async def test_connect_to_an_unreachable_server_raises_broker_unavailable() -> None:
    from conveyor.errors import BrokerUnavailable

    b = PostgresBroker.from_url("postgresql://nobody:hunter2@127.0.0.1:1/none?connect_timeout=1")
    expected = r"PostgreSQL broker at postgresql://nobody:\*\*\*@127\.0\.0\.1:1/none"
    with pytest.raises(BrokerUnavailable, match=expected) as info:
        await b.connect()
    assert "hunter2" not in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value.__cause__, psycopg.OperationalError)


# -- URL options ---------------------------------------------------------------
def test_url_options_are_read_and_stripped() -> None:
    s = parse_url(
        "postgres://u:p%40w@h:5433/db?schema=jobs_2&sslmode=disable&auto_migrate=off"
        "&pool_min=0&pool_max=3&relaxed_commit=false&application_name=a%20b"
    )
    assert (s.schema, s.auto_migrate, s.pool_min, s.pool_max, s.relaxed_commit) == (
        "jobs_2", False, 0, 3, False)
    assert s.conninfo == "postgres://u:p%40w@h:5433/db?sslmode=disable&application_name=a%20b"
    assert parse_url("postgresql:///db").schema == "conveyor"
    for bad in ("?schema=no-dash", "?schema=1x", "?pool_max=0", "?pool_min=5&pool_max=2",
                "?auto_migrate=maybe"):
        with pytest.raises(ConfigError):
            parse_url("postgresql://h/db" + bad)


# -- lease rescue after a worker is killed -------------------------------------
WORKER_SCRIPT = textwrap.dedent(
    """
    import asyncio, os, sys, time
    import conveyor

    app = conveyor.App(sys.argv[1])

    @app.job(name="itest.slow", queue="rescue")
    def slow(tag: str) -> None:
        ctx = conveyor.current_job()
        with open(sys.argv[2], "a") as marks:
            marks.write(f"started {ctx.attempt} {os.getpid()}\\n")
        time.sleep(300)

    config = conveyor.WorkerConfig(
        queues=("rescue",), concurrency=1, visibility_timeout=2.0, rescue_interval=0.5
    )
    asyncio.run(conveyor.Worker(app, config).run())
    """
)


async def _until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_lease_of_a_killed_worker_is_rescued_by_another(schema: str, tmp_path: Path) -> None:
    url = url_for(schema)
    script, marks = tmp_path / "worker.py", tmp_path / "marks.txt"
    script.write_text(WORKER_SCRIPT)
    app = conveyor.App(url)
    runs: list[tuple[int, str]] = []

    @app.job(name="itest.slow", queue="rescue")
    async def slow(tag: str) -> None:
        ctx = conveyor.current_job()
        assert ctx is not None
        runs.append((ctx.attempt, ctx.redelivery))

    await app.send_jobs_async([slow.message("x")])
    proc = subprocess.Popen(
        [sys.executable, str(script), url, str(marks)],
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        await _until(lambda: marks.exists() and "started 1" in marks.read_text(), 30,
                     "the first worker to start the job")
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    killed_at = time.monotonic()
    broker = await app.broker()
    assert (await broker.stats(["rescue"]))["rescue"].in_flight == 1

    worker = conveyor.Worker(
        app, conveyor.WorkerConfig(queues=("rescue",), concurrency=1, visibility_timeout=2.0,
                                   rescue_interval=0.2, shutdown_timeout=5),
    )
    running = asyncio.create_task(worker.run())
    try:
        await _until(lambda: bool(runs), 30, "the second worker to run the job")
    finally:
        worker.request_stop()
        result = await running
    assert runs == [(2, conveyor.brokers.LEASE_EXPIRED)]
    assert time.monotonic() - killed_at < 15
    assert result.counters.completed == 1
    checker = PostgresBroker.from_url(url)
    await checker.connect()
    s = (await checker.stats(["rescue"]))["rescue"]
    assert (s.ready, s.delayed, s.in_flight, s.dead) == (0, 0, 0, 0)
    assert await checker.dlq_list() == []
    await checker.close()
