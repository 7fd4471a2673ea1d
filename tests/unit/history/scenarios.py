"""History scenarios run against every store: SQLite here, PostgreSQL in
tests/integration/test_history_postgres.py. Each takes ``make_app`` (History
keyword options -> a fresh App with History on its broker's database) and runs
real burst workers."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

from conveyor import App, Backoff, Worker, WorkerConfig
from conveyor import signals as sig
from conveyor.brokers import LEASE_EXPIRED, MANUAL_RETRY, Selector
from conveyor.history import Change, History, RunningJobRecord, WorkerRecord, history_of
from conveyor.testing import run_until_idle

MakeApp = Callable[..., App]
FAST = Backoff(base=0.01, maximum=0.02)


def store_of(app: App) -> Any:
    history = history_of(app)
    history.flush()
    return history.store


def timeline_after_retries_then_success(make_app: MakeApp) -> None:
    app = make_app()
    calls: list[int] = []

    @app.job(max_attempts=5, backoff=FAST)
    def flaky(user: int) -> int:
        calls.append(user)
        if len(calls) < 3:
            raise LookupError(f"user {user} not found")
        return user

    job_id = flaky.send(7)
    result = run_until_idle(app)
    t = store_of(app).get_job(job_id)
    assert t is not None
    assert (t.job.state, t.job.attempts, t.job.worker_id) == ("completed", 3, result.worker_id)
    assert [(a.attempt, a.outcome) for a in t.attempts] == [(1, "failed"), (2, "failed"), (3, "completed")]
    for a in t.attempts:
        assert a.worker_id == result.worker_id and a.redelivery == ""
        assert a.finished_at is not None and a.duration is not None and a.finished_at >= a.started_at
    assert t.attempts[0].error is not None and t.attempts[0].error.message == "user 7 not found"
    assert [e.kind for e in t.events] == [
        "enqueued", "started", "failed", "retrying", "started", "failed", "retrying", "started", "completed",
    ]  # fmt: skip
    assert [e.at for e in t.events] == sorted(e.at for e in t.events)
    # a unique prefix finds the job too
    assert store_of(app).get_job(job_id[:30]).job.id == job_id


def dead_job_with_error_and_fingerprint(make_app: MakeApp) -> None:
    app = make_app()

    @app.job(max_attempts=2, backoff=FAST)
    def charge(order: int) -> None:
        raise ValueError(f"card declined for order {order}")

    first, second = charge.send(1), charge.send(2)
    run_until_idle(app)
    store = store_of(app)
    t = store.get_job(first)
    assert t.job.state == "dead" and t.job.dead_reason == "max_attempts_exceeded"
    err = t.job.error
    assert err.type == "ValueError" and err.message == "card declined for order 1"
    assert "in charge" in err.traceback and len(err.fingerprint) == 12
    assert t.events[-1].kind == "dead" and t.events[-1].detail["reason"] == "max_attempts_exceeded"
    assert store.get_job(second).job.error.fingerprint == err.fingerprint
    [cluster] = store.failure_clusters(timedelta(minutes=5))
    assert (cluster.fingerprint, cluster.count, cluster.jobs, cluster.dead) == (err.fingerprint, 4, 2, 2)
    assert cluster.pattern == "card declined for order <n>" and set(cluster.example_ids) == {first, second}
    assert sorted(store.dead_jobs_in_cluster(err.fingerprint[:6])) == sorted([first, second])


def manual_retry_is_recorded(make_app: MakeApp) -> None:
    app = make_app()
    fixed = threading.Event()

    @app.job(max_attempts=1)
    def sync_user(user: int) -> None:
        if not fixed.is_set():
            raise RuntimeError("upstream down")

    job_id = sync_user.send(1)
    run_until_idle(app)
    assert store_of(app).get_job(job_id).job.state == "dead"
    fixed.set()
    assert app.dlq_retry(Selector(ids=[job_id])) == [job_id]  # History records it from dlq.retried
    assert store_of(app).get_job(job_id).job.state == "enqueued"
    run_until_idle(app)
    t = store_of(app).get_job(job_id)
    assert t.job.state == "completed"
    assert [(a.attempt, a.outcome, a.redelivery) for a in t.attempts] == [
        (1, "failed", ""), (1, "completed", MANUAL_RETRY),
    ]  # fmt: skip
    kinds = [e.kind for e in t.events]
    assert kinds == ["enqueued", "started", "failed", "dead", "manual_retry", "started", "completed"]
    assert t.events[5].detail == {"redelivery": MANUAL_RETRY}


def manual_retry_seen_by_the_worker(make_app: MakeApp) -> None:
    """A retry made straight on the broker (without the App's dlq.retried) is recorded when the job runs again."""
    app = make_app()

    @app.job(max_attempts=1)
    def once(n: int) -> None:
        if n == 1:
            raise RuntimeError("first run fails")

    job_id = once.send(1)
    run_until_idle(app)
    app.run(lambda broker: broker.dlq_retry(Selector(ids=[job_id])))
    run_until_idle(app)
    t = store_of(app).get_job(job_id)
    assert [e.kind for e in t.events].count("manual_retry") == 1, [e.kind for e in t.events]
    assert t.attempts[-1].redelivery == MANUAL_RETRY


def manual_retry_recorded_at_once_is_not_recorded_again_by_the_worker(make_app: MakeApp) -> None:
    """The retried run dies again in the same write batch as its start: still one manual_retry."""
    app = make_app()

    @app.job(max_attempts=1)
    def once(n: int) -> None:
        raise RuntimeError("fails every time")

    job_id = once.send(1)
    run_until_idle(app)
    app.dlq_retry(Selector(ids=[job_id]))
    history_of(app).record_manual_retry([job_id])  # as `dlq retry` always did; a no-op the second time
    run_until_idle(app)
    t = store_of(app).get_job(job_id)
    kinds = [e.kind for e in t.events]
    assert kinds == ["enqueued", "started", "failed", "dead", "manual_retry", "started", "failed", "dead"], kinds


def lease_expiry_is_recorded(make_app: MakeApp) -> None:
    """A worker starts the job and disappears; its lease expires and another worker runs it."""
    app = make_app()

    @app.job
    def report(n: int) -> int:
        return n

    job_id = report.send(1)

    async def lost_worker(broker: Any) -> None:
        [d] = await broker.lease(["default"], 1, 0.2)
        app.emit(  # what the vanished worker recorded before it died
            sig.JOB_STARTED,
            job_id=d.id, job_type=d.type, queue=d.queue, attempt=d.attempts, worker_id="ghost:1:dead",
            latency=0.0, redelivery="",
        )  # fmt: skip

    app.run(lost_worker)
    time.sleep(0.4)
    assert app.run(lambda b: b.rescue()) == [job_id]
    run_until_idle(app)
    store = store_of(app)
    t = store.get_job(job_id)
    assert t.job.state == "completed"
    assert next((a.attempt, a.worker_id, a.outcome, a.redelivery) for a in t.attempts) == (
        1, "ghost:1:dead", "lost", "",
    )  # fmt: skip
    assert (t.attempts[1].attempt, t.attempts[1].outcome, t.attempts[1].redelivery) == (2, "completed", LEASE_EXPIRED)
    assert [j.id for j in store.worker_jobs("ghost:1:dead")] == [job_id]
    counts = {c.job_type: c for c in store.failure_counts(timedelta(minutes=5))}
    assert counts[t.job.type].lost == 1 and counts[t.job.type].completed == 1


def retention_prunes_old_jobs(make_app: MakeApp) -> None:
    app = make_app(retention=timedelta(hours=1), max_rows=3)
    history = history_of(app)
    now = time.time()
    old = [Change("enqueued", f"old-{i}", "t", "q", now - 7200 - i) for i in range(4)]
    new = [Change("enqueued", f"new-{i}", "t", "q", now - i) for i in range(5)]
    history.store.record([*old, *new])
    assert history.prune() == 4 + 2
    left = {j.id for j in history.store.list_jobs(limit=100)}
    assert left == {"new-0", "new-1", "new-2"}
    assert history.store.get_job("old-0") is None


def failure_clusters_and_retry_loops(make_app: MakeApp) -> None:
    app = make_app()

    @app.job(max_attempts=4, backoff=FAST)
    def fetch(user: int) -> None:
        raise LookupError(f"user {user} not found")

    @app.job(max_attempts=4, backoff=FAST)
    def render(user: int) -> None:
        if user % 2:
            raise LookupError(f"user {user} not found")

    ids = [fetch.send(42), fetch.send(97), render.send(3), render.send(4)]
    run_until_idle(app)
    store = store_of(app)
    clusters = {c.job_type: c for c in store.failure_clusters(timedelta(minutes=5))}
    assert clusters[fetch.name].count == 8 and clusters[fetch.name].jobs == 2
    assert clusters[fetch.name].fingerprint != clusters[render.name].fingerprint
    loops = store.retry_loops(min_attempts=4, since=timedelta(minutes=5))
    assert {j.job_id for j in loops.jobs} == {ids[0], ids[1], ids[2]}
    looping = {j.job_id: j for j in loops.jobs}[ids[0]]
    assert looping.attempts == 4 and looping.repeats == 4 and looping.state == "dead"
    assert looping.error.type == "LookupError" and looping.error.fingerprint == clusters[fetch.name].fingerprint
    by_type = {t.job_type: t for t in loops.types}
    assert (by_type[fetch.name].jobs, by_type[fetch.name].attempts, by_type[fetch.name].max_attempts) == (2, 8, 4)
    assert store.retry_loops(min_attempts=5, since=timedelta(minutes=5)).jobs == []
    counts = {c.job_type: c for c in store.failure_counts(timedelta(minutes=5))}
    assert (counts[render.name].attempts, counts[render.name].failures, counts[render.name].dead) == (5, 4, 1)
    [tp] = store.throughput(timedelta(minutes=1))
    assert tp.job_type == render.name and tp.completed == 1 and abs(tp.per_minute - 1.0) < 0.01
    dead = store.list_jobs(state="dead", job_type=fetch.name)
    assert {j.id for j in dead} == {ids[0], ids[1]} and dead[0].updated_at >= dead[1].updated_at
    assert store.list_jobs(state="completed")[0].id == ids[3]
    assert store.list_jobs(id_prefix=ids[2][:36])[0].id == ids[2]
    assert store.list_jobs(since=timedelta(minutes=5), queue="nope") == []


def worker_registry_heartbeats(make_app: MakeApp) -> None:
    app = make_app(heartbeat_interval=0.1)
    release = threading.Event()

    @app.job
    def slow(n: int) -> None:
        release.wait(10)

    job_id = slow.send(1)
    worker = Worker(app, WorkerConfig(concurrency=2, burst=True, poll_interval=0.05))
    runner = threading.Thread(target=lambda: asyncio.run(worker.run()))
    runner.start()
    try:
        store = history_of(app).store
        deadline = time.monotonic() + 10
        while True:
            found = [w for w in store.workers() if w.id == worker.id and w.jobs]
            if found or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        [w] = found
        assert w.status() == "running" and w.heartbeat_age() < 5 and w.concurrency == 2 and w.queues == ["default"]
        assert w.rss_bytes is not None and w.rss_bytes > 10 * 2**20 and w.cpu_percent is not None
        assert [(j.id, j.type, j.attempt) for j in w.jobs] == [(job_id, slow.name, 1)]
        assert [j.id for j in store.worker_jobs(worker.id)] == [job_id]
        first_beat = w.last_heartbeat
        time.sleep(0.3)
        assert next(x for x in store.workers() if x.id == worker.id).last_heartbeat > first_beat
    finally:
        release.set()
        runner.join(10)
    [w] = [x for x in store.workers() if x.id == worker.id]
    assert w.status() == "stopped" and w.stop_reason == "burst_done" and w.jobs == []
    assert store.workers(include_stopped=False) == []
    store.heartbeat(replace(w, stopped_at=None, jobs=[RunningJobRecord(job_id, slow.name, "default", 1, 0.0)]))
    late = next(x for x in store.workers() if x.id == worker.id)
    assert late.status() == "stopped" and late.jobs == [], "a late heartbeat revived a stopped worker"


def silent_worker_marked_lost_until_it_heartbeats(make_app: MakeApp) -> None:
    store = store_of(make_app())
    now = time.time()
    job = RunningJobRecord("j-1", "t", "default", 1, now - 95)
    silent = WorkerRecord(
        id="w-silent", host="h", pid=1, queues=["default"], concurrency=1, started_at=now - 100,
        last_heartbeat=now - 90, heartbeat_interval=1.0, jobs=[job],
    )  # fmt: skip
    store.heartbeat(silent)
    assert not store.worker_lost("w-silent", now - 91, now), "marked lost though heard from since"
    assert store.worker_lost("w-silent", now - 90, now)
    [lost] = store.workers()
    assert (lost.status(), lost.stop_reason, lost.stopped_at) == ("lost", "lost", now)
    assert lost.last_heartbeat == now - 90 and [j.id for j in lost.jobs] == ["j-1"]
    assert store.workers(include_stopped=False) == []
    assert not store.worker_lost("w-silent", now, now + 1), "marked lost twice"
    store.heartbeat(replace(silent, last_heartbeat=now + 2, jobs=[]))
    [back] = store.workers(include_stopped=False)
    assert (back.status(now + 2), back.stopped_at, back.stop_reason, back.jobs) == ("running", None, "", [])


def attempt_over_from_history(make_app: MakeApp) -> None:
    store = store_of(make_app())
    now = time.time()
    first, second = (
        RunningJobRecord("j-1", "t", "default", 1, now - 50),
        RunningJobRecord("j-1", "t", "default", 2, now - 5),
    )
    assert not store.attempt_over(first, "w1"), "history does not know the job"
    store.record(
        [
            Change("enqueued", "j-1", "t", "default", now - 51),
            Change("started", "j-1", "t", "default", now - 50, 1, "w1"),
        ]
    )
    assert not store.attempt_over(first, "w1")
    assert not store.attempt_over(RunningJobRecord("j-", "t", "default", 1, now - 50), "w1"), "a prefix is another job"
    store.record([Change("started", "j-1", "t", "default", now - 5, 2, "w2", redelivery=LEASE_EXPIRED)])
    assert store.attempt_over(first, "w1") and not store.attempt_over(second, "w2")
    store.record([Change("completed", "j-1", "t", "default", now - 1, 2, "w2", duration=4.0)])
    assert store.attempt_over(second, "w2")


ALL = (
    timeline_after_retries_then_success,
    dead_job_with_error_and_fingerprint,
    manual_retry_is_recorded,
    manual_retry_seen_by_the_worker,
    manual_retry_recorded_at_once_is_not_recorded_again_by_the_worker,
    lease_expiry_is_recorded,
    retention_prunes_old_jobs,
    failure_clusters_and_retry_loops,
    worker_registry_heartbeats,
    silent_worker_marked_lost_until_it_heartbeats,
    attempt_over_from_history,
)


def history(**options: Any) -> History:
    """History tuned for tests: fast flushes and heartbeats."""
    return History(**{"flush_interval": 0.05, "heartbeat_interval": 0.5, **options})
