"""The worker registry shows threads stuck past a sync job's timeout, and `conveyor workers` says so."""

from __future__ import annotations

import asyncio
import threading
import time

from rich.console import Console

from conveyor import Worker, WorkerConfig
from conveyor.history import history_of
from conveyor.history import render as r

from .scenarios import MakeApp


async def test_a_stuck_thread_is_in_the_heartbeat_and_in_conveyor_workers(make_app: MakeApp) -> None:
    app = make_app(heartbeat_interval=0.1)
    release = threading.Event()

    @app.job(name="hang", timeout=0.1, max_attempts=1)
    def hang() -> None:
        release.wait(30)

    job_id = await hang.send_async()
    # No spare thread: the stuck one leaves the worker a thread short.
    worker = Worker(app, WorkerConfig(concurrency=1, spare_threads=0, poll_interval=0.05))
    task = asyncio.create_task(worker.run())
    store = history_of(app).store
    try:
        deadline = time.monotonic() + 30
        while True:
            rows = await asyncio.to_thread(store.workers)
            found = [w for w in rows if w.id == worker.id and w.stuck()]
            if found or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        [w] = found
        [stuck] = w.stuck()
        assert (stuck.id, stuck.type, stuck.attempt, stuck.replaced) == (job_id, "hang", 1, False)
        assert w.threads_short() == 1
        data = r.worker_dict(w)
        assert data["stuck_threads"] == 1 and data["threads_short"] == 1
        assert data["jobs"][0]["stuck"] is True
        console = Console(record=True, width=240)
        r.workers_table([w], console)
        text = console.export_text()
        assert "capacity reduced: 0/1 threads" in text
        assert f"{job_id} hang STUCK thread" in text and "NOT replaced" in text
    finally:
        release.set()
        worker.request_stop()
        await asyncio.wait_for(task, 30)
