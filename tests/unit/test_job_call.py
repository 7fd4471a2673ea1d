"""Calling a decorated job runs the undecorated function inline, sync or async."""

from __future__ import annotations

import asyncio
import inspect

from conveyor.testing import capture_signals, memory_app


def test_calling_a_sync_job_runs_it_and_returns_its_result() -> None:
    app = memory_app()
    ran: list[int] = []

    @app.job
    def add(a: int, b: int) -> int:
        ran.append(a)
        return a + b

    with capture_signals(app) as events:
        assert add(2, b=3) == 5
    assert ran == [2]
    assert app.stats()["default"].ready == 0  # nothing was enqueued
    assert events == []


def test_calling_an_async_job_returns_a_coroutine_that_runs_when_awaited() -> None:
    app = memory_app()
    ran: list[int] = []

    @app.job
    async def add(a: int, b: int) -> int:
        ran.append(a)
        return a + b

    with capture_signals(app) as events:
        call = add(2, b=3)
        assert inspect.iscoroutine(call)
        assert ran == []  # like the undecorated function: nothing runs until awaited
        assert asyncio.run(call) == 5
    assert ran == [2]
    assert app.stats()["default"].ready == 0  # nothing was enqueued
    assert events == []
