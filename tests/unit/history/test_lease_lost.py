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


def test_a_failure_settled_after_the_lease_was_lost_records_no_retry_and_no_death(make_app: MakeApp) -> None:
    app = make_app()

    @app.job(max_attempts=2)
    async def fails_then_retries() -> None:
        time.sleep(VT * 4)  # blocks the loop: no heartbeat, the lease expires
        take_over(app)
        raise RuntimeError("boom")

    @app.job(max_attempts=1)
    async def fails_for_good() -> None:
        time.sleep(VT * 4)
        take_over(app)
        raise RuntimeError("boom")

    config = WorkerConfig(burst=True, visibility_timeout=VT, poll_interval=0.05)
    ids = []
    for job in (fails_then_retries, fails_for_good):  # one at a time: the other worker takes all it finds
        ids.append(job.send())
        asyncio.run(Worker(app, config).run())
    for job_id in ids:
        t = store_of(app).get_job(job_id)
        assert t is not None
        assert t.job.state not in ("retrying", "dead")
        assert [a.outcome for a in t.attempts] == ["failed"]  # the handler did fail
        kinds = [e.kind for e in t.events]
        assert "retrying" not in kinds and "dead" not in kinds
        [lost] = [e for e in t.events if e.kind == "lease_lost"]
        assert lost.detail["detected_by"] in ("nack", "dead", "extend")  # the heartbeat may see it first
    assert app.dlq_list() == []
