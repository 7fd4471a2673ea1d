"""Connections belong to the App, on the real Redis and PostgreSQL servers.

One broker per live event loop; the end of a loop closes its broker;
``close()`` / ``aclose()`` / ``async with`` free every connection; an embedded
worker leaves the connection of its host application open; a script that exits
without ``close()`` prints nothing. Each test counts this process's connections
by a client name of its own (Redis ``CLIENT LIST``, PostgreSQL
``pg_stat_activity.application_name``).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import redis

from conveyor import App, Worker, WorkerConfig
from tests.contract.factories import postgres as pg_factory
from tests.contract.factories import redis as redis_factory

pytestmark = pytest.mark.integration

DEADLINE = 30.0
QUEUE = "q"


@dataclass
class Server:
    """A broker URL whose connections carry ``name``, and a way to count them."""

    url: str
    name: str
    count: Callable[[], int]

    def app(self) -> App:
        app = App(self.url)

        @app.job(name="ping", queue=QUEUE)
        def ping(n: int) -> None: ...

        return app


def _redis_clients(name: str) -> int:
    client = redis.Redis.from_url(redis_factory.REDIS_URL)
    try:
        return sum(1 for c in client.client_list() if c.get("name") == name)
    finally:
        client.close()


def _pg_backends(name: str) -> int:
    with psycopg.connect(pg_factory.server_url(), autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (name,)).fetchone()
    return int(row[0]) if row else 0


@pytest.fixture(params=["redis", "postgres"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    name = f"conveyor-own-{uuid.uuid4().hex[:12]}"
    if request.param == "redis":
        url = f"{redis_factory.url_for(tmp_path)}&client_name={name}"
        yield Server(url, name, lambda: _redis_clients(name))
        asyncio.run(redis_factory.delete_prefix(redis_factory.prefix_for(tmp_path)))
    else:
        schema = pg_factory.new_schema()
        yield Server(pg_factory.url_for(schema, application_name=name), name, lambda: _pg_backends(name))
        pg_factory.drop_schema(schema)


def settles(server: Server, expected: int) -> None:
    """Wait until ``server`` counts ``expected`` connections (a closed one may linger a moment)."""
    deadline = time.monotonic() + DEADLINE
    while (found := server.count()) != expected:
        assert time.monotonic() < deadline, f"{found} connection(s) open after {DEADLINE}s, expected {expected}"
        time.sleep(0.05)


async def asettles(server: Server, expected: int) -> None:
    """:func:`settles` for async tests: the event loop keeps running while it waits."""
    deadline = time.monotonic() + DEADLINE
    while (found := await asyncio.to_thread(server.count)) != expected:
        assert time.monotonic() < deadline, f"{found} connection(s) open after {DEADLINE}s, expected {expected}"
        await asyncio.sleep(0.05)


def ready(app: App) -> int:
    return app.stats([QUEUE])[QUEUE].ready


# -- one broker per live loop, closed with its loop ----------------------------


def test_each_loop_that_ends_closes_its_connections(server: Server) -> None:
    app = server.app()
    try:
        for i in range(20):
            asyncio.run(app.send_jobs_async([app.message("ping", [i])]))
        settles(server, 0)
        assert ready(app) == 20
    finally:
        app.close()


def test_a_live_loop_keeps_one_pool_however_many_sends(server: Server) -> None:
    app = server.app()

    async def producer() -> None:
        first = await app.broker()
        for i in range(20):
            await app.send_jobs_async([app.message("ping", [i])])
        assert await app.broker() is first
        await asettles(server, 1)

    try:
        asyncio.run(producer())
    finally:
        app.close()


def test_a_loop_shut_down_by_hand_closes_its_connections(server: Server) -> None:
    app = server.app()
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(app.send_jobs_async([app.message("ping", [1])]))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()
    try:
        settles(server, 0)
    finally:
        app.close()


# -- close(), aclose(), async with ---------------------------------------------


def test_close_frees_the_connections_of_the_portal_and_of_loops_in_other_threads(server: Server) -> None:
    app = server.app()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        app.send_jobs([app.message("ping", [1])])  # the portal's connection
        asyncio.run_coroutine_threadsafe(app.send_jobs_async([app.message("ping", [2])]), loop).result(DEADLINE)
        for i in range(5):  # and loops that ended
            asyncio.run(app.send_jobs_async([app.message("ping", [3 + i])]))
        app.close()
        settles(server, 0)
        assert loop.is_running()  # the other thread's loop goes on, without the app's connection
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(DEADLINE)
        loop.close()
    assert ready(app) == 7
    app.close()
    settles(server, 0)


async def test_async_with_closes_every_connection_of_the_app(server: Server) -> None:
    async with server.app() as app:
        await app.send_jobs_async([app.message("ping", [1])])
        await asyncio.to_thread(app.send_jobs, [app.message("ping", [2])])  # opens the portal's too
        await asettles(server, 2)
    await asettles(server, 0)
    app.close()


async def test_close_inside_a_running_loop_returns_and_closes_that_loops_connection(server: Server) -> None:
    app = server.app()
    await app.send_jobs_async([app.message("ping", [1])])
    await asyncio.to_thread(app.send_jobs, [app.message("ping", [2])])  # and the portal's
    await asettles(server, 2)
    app.close()  # sync code in async code: must neither raise nor deadlock on this loop
    await asettles(server, 0)
    await app.send_jobs_async([app.message("ping", [3])])  # used again: opens again
    assert (await app.stats_async([QUEUE]))[QUEUE].ready == 3
    await app.aclose()
    await asettles(server, 0)


# -- an embedded worker leaves its host's connection alone ---------------------


async def test_embedded_worker_stopping_leaves_the_web_apps_connection_open(server: Server) -> None:
    app = server.app()
    done = asyncio.Event()
    handled: list[int] = []

    @app.job(name="work", queue="embedded")
    async def work(n: int) -> None:
        handled.append(n)
        if len(handled) == 3:
            done.set()

    held = await app.broker()  # what a web framework would hand to its request handlers
    for i in range(3):
        await work.send_async(i)
    worker = Worker(app, WorkerConfig(queues=("embedded",), concurrency=2))
    running = asyncio.create_task(worker.run())
    await asyncio.wait_for(done.wait(), DEADLINE)
    worker.request_stop()
    await asyncio.wait_for(running, DEADLINE)

    # The web app goes on serving requests on the same connection.
    assert await app.broker() is held
    for i in range(5):
        await app.send_jobs_async([app.message("ping", [i])])
    assert (await held.stats([QUEUE]))[QUEUE].ready == 5
    await app.aclose()
    await asettles(server, 0)


# -- a script that exits without close() ---------------------------------------

PRODUCER = textwrap.dedent(
    """
    import asyncio, os
    import conveyor

    app = conveyor.App(os.environ["CONVEYOR_TEST_URL"])

    @app.job(name="ping", queue="q")
    def ping(n):
        pass

    ping.send(1)                      # through the portal
    asyncio.run(ping.send_async(2))   # on a loop of its own
    ping.send(3)
    # no app.close(): the interpreter exits with the connections open
    # (ResourceWarning is shown: an unclosed socket would print one)
    """
)


def test_a_producer_that_exits_without_close_prints_nothing_and_its_jobs_arrive(
    server: Server, tmp_path: Path
) -> None:
    script = tmp_path / "producer.py"
    script.write_text(PRODUCER)
    env = {**os.environ, "CONVEYOR_TEST_URL": server.url}
    done = subprocess.run(
        [sys.executable, "-W", "default::ResourceWarning", str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=DEADLINE * 2,
    )
    assert (done.returncode, done.stderr) == (0, "")
    app = server.app()
    try:
        assert ready(app) == 3
    finally:
        app.close()


def test_a_sqlite_producer_that_exits_without_close_prints_nothing_and_its_jobs_arrive(tmp_path: Path) -> None:
    script = tmp_path / "producer.py"
    script.write_text(PRODUCER)
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    done = subprocess.run(
        [sys.executable, "-W", "default::ResourceWarning", str(script)],
        env={**os.environ, "CONVEYOR_TEST_URL": url},
        capture_output=True,
        text=True,
        timeout=DEADLINE * 2,
    )
    assert (done.returncode, done.stderr) == (0, "")
    app = App(url)
    try:
        assert app.stats(["q"])["q"].ready == 3
    finally:
        app.close()
