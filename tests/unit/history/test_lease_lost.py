"""History records a lease lost by the worker running the job (SQLite store; the SQL is shared)."""

from __future__ import annotations

import asyncio
import time

from conveyor import Worker, WorkerConfig
from tests.unit.test_worker_leases import VT, take_over

from .scenarios import MakeApp, store_of


def test_a_lost_lease_ends_the_attempt_as_lost_and_is_on_the_timeline(make_app: MakeApp) -> None:
    app = make_app()

    @app.job
    async def slow() -> None:
        time.sleep(VT * 4)  # blocks the loop: no heartbeat, the lease expires
        take_over(app)
        await asyncio.sleep(VT * 4)

    job_id = slow.send()
    config = WorkerConfig(burst=True, visibility_timeout=VT, poll_interval=0.05)
    result = asyncio.run(Worker(app, config).run())
    t = store_of(app).get_job(job_id)
    assert t is not None
    assert [(a.attempt, a.worker_id, a.outcome) for a in t.attempts] == [(1, result.worker_id, "lost")]
    assert t.job.state == "running"  # not completed: the other worker holds the job now
    [lost] = [e for e in t.events if e.kind == "lease_lost"]
    assert (lost.attempt, lost.worker_id, lost.detail) == (1, result.worker_id, {"detected_by": "extend"})
