"""A job that always outlives the shutdown timeout is not requeued forever."""

from __future__ import annotations

import asyncio

import pytest

from conveyor import App, Worker, WorkerConfig
from conveyor.brokers import MAX_REFUNDED_INTERRUPTIONS


@pytest.mark.parametrize("forced", [False, True], ids=["shutdown_timeout", "forced"])
async def test_a_job_always_outliving_the_shutdown_ends_in_the_dlq_after_bounded_interruptions(
    app: App, forced: bool
) -> None:
    starts: list[int] = []
    started = asyncio.Event()

    @app.job(max_attempts=2)
    async def endless() -> None:
        starts.append(1)
        started.set()
        await asyncio.sleep(60)

    job_id = await endless.send_async()
    bound = MAX_REFUNDED_INTERRUPTIONS + 2  # every refunded interruption, then max_attempts counted ones
    for _ in range(bound + 3):  # a few more runs than the bound: the loop must stop by itself
        started.clear()
        worker = Worker(app, WorkerConfig(concurrency=1, burst=True, shutdown_timeout=0.05 if not forced else 60))
        task = asyncio.create_task(worker.run())
        began = asyncio.create_task(started.wait())
        await asyncio.wait([task, began], timeout=30, return_when=asyncio.FIRST_COMPLETED)
        began.cancel()
        if started.is_set():
            worker.request_stop()
            if forced:
                worker.request_stop()
        result = await asyncio.wait_for(task, 30)
        if not started.is_set():
            assert result.reason == "burst_done"
            break
        assert result.abandoned == 1
    [dead] = await (await app.broker()).dlq_list()
    assert dead.id == job_id and dead.reason == "max_attempts_exceeded"
    assert "worker_shutdown" in dead.error_message
    assert len(starts) == bound
