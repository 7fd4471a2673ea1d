"""The App owns its connections: ``async with``, ``aclose()``, ``close()`` and the exit hook.

These use the SQLite broker (one file, one connection: closed when its ``-wal``
file is gone) and the portal; the loop-bound brokers are covered against the
real servers in tests/integration/test_connection_ownership.py.
"""

from __future__ import annotations

import asyncio
import atexit
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from conveyor import App
from conveyor.portal import Portal

DEADLINE = 20.0


def sqlite_app(tmp_path: Path) -> tuple[App, Path]:
    db = tmp_path / "jobs.db"
    app = App(f"sqlite:///{db}")

    @app.job(name="ping", queue="q")
    def ping(n: int) -> None: ...

    return app, db.with_name(db.name + "-wal")


def is_open(wal: Path) -> bool:
    """SQLite deletes the write-ahead log when its last connection closes."""
    return wal.exists()


async def closes(wal: Path) -> None:
    deadline = time.monotonic() + DEADLINE
    while is_open(wal):
        assert time.monotonic() < deadline, f"the SQLite connection is still open after {DEADLINE}s"
        await asyncio.sleep(0.02)


async def test_async_with_closes_the_apps_connection(tmp_path: Path) -> None:
    app, wal = sqlite_app(tmp_path)
    async with app as entered:
        assert entered is app
        await app.send_jobs_async([app.message("ping", [1])])
        assert is_open(wal)
    assert not is_open(wal)


async def test_aclose_closes_the_connection_opened_by_sync_calls_too(tmp_path: Path) -> None:
    app, wal = sqlite_app(tmp_path)
    await asyncio.to_thread(app.send_jobs, [app.message("ping", [1])])  # opened through the portal
    assert is_open(wal)
    await app.aclose()
    assert not is_open(wal)
    app.close()


async def test_close_inside_a_running_loop_returns_and_closes_the_connection(tmp_path: Path) -> None:
    app, wal = sqlite_app(tmp_path)
    await app.send_jobs_async([app.message("ping", [1])])
    app.close()  # must neither raise nor block this loop
    await closes(wal)
    assert app.stats(["q"])["q"].ready == 1  # and the app opens a connection again when used
    app.close()


def test_close_outside_a_loop_closes_the_connection_and_the_app_can_be_used_again(tmp_path: Path) -> None:
    app, wal = sqlite_app(tmp_path)
    app.send_jobs([app.message("ping", [1])])
    app.close()
    assert not is_open(wal)
    app.send_jobs([app.message("ping", [2])])
    assert app.stats(["q"])["q"].ready == 2
    app.close()
    assert not is_open(wal)


def test_exit_hook_is_registered_when_the_first_connection_opens_and_dropped_by_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hooks: list[Callable[[], None]] = []
    register, unregister = atexit.register, atexit.unregister

    def spy_register(fn: Callable[[], None]) -> Callable[[], None]:
        hooks.append(fn)
        return register(fn)

    def spy_unregister(fn: Callable[[], None]) -> None:
        hooks.remove(fn)
        unregister(fn)

    monkeypatch.setattr(atexit, "register", spy_register)
    monkeypatch.setattr(atexit, "unregister", spy_unregister)
    app, wal = sqlite_app(tmp_path)
    assert hooks == []  # creating an app registers nothing
    app.send_jobs([app.message("ping", [1])])
    app.send_jobs([app.message("ping", [2])])
    assert len(hooks) == 1
    hooks[0]()  # what the interpreter runs at exit
    assert not is_open(wal)
    assert hooks == []  # closing unregisters it
    app.send_jobs([app.message("ping", [3])])
    assert len(hooks) == 1
    app.close()
    assert hooks == []


def test_stopping_the_portal_shuts_its_loop_down_like_asyncio_run() -> None:
    portal = Portal()
    finalised = threading.Event()

    async def guarded() -> AsyncIterator[None]:
        try:
            yield
        finally:
            await asyncio.sleep(0)  # the loop still runs while async generators are finalised
            finalised.set()

    gen = guarded()

    async def start() -> None:
        await gen.asend(None)

    portal.call(start())
    portal.stop()
    assert finalised.is_set()
