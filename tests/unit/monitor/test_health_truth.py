"""The health monitor tells the truth: alerts reach a sink, lost workers stop counting, finished jobs are not stuck."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor.dashboard.extensions import Monitoring
from conveyor.history import Change, RunningJobRecord
from conveyor.monitor import AlertManager, HealthMonitor, JsonLinesSink, Monitor
from conveyor.testing import run_until_idle

from .test_health import Env, heartbeat, statuses


@pytest.fixture
def make_env(tmp_path: Path) -> Iterator[Callable[..., Env]]:
    made: list[Env] = []

    def make(**kw: Any) -> Env:
        made.append(Env(tmp_path, **kw))
        return made[-1]

    yield make
    for env in made:
        env.close()


def run_attempt(env: Env, job_id: str, worker: str, attempt: int, started: float, finished: float | None) -> None:
    """Record in history that ``worker`` started (and, with ``finished``, completed) an attempt."""
    redelivery = "lease_expired" if attempt > 1 else ""
    changes = [Change("started", job_id, "slow.job", "default", started, attempt, worker, redelivery=redelivery)]
    if attempt == 1:
        changes.insert(0, Change("enqueued", job_id, "slow.job", "default", started - 1))
    if finished is not None:
        changes.append(Change("completed", job_id, "slow.job", "default", finished, attempt, worker, duration=1.0))
    env.store.record(changes)


def test_an_evaluator_without_sinks_leaves_the_alert_to_the_monitor_that_delivers_it(
    make_env: Callable[..., Env], tmp_path: Path
) -> None:
    env = make_env(heartbeat_timeout=5)
    heartbeat(env, "w-killed", age=30, jobs=[RunningJobRecord("job-1", "slow.job", "default", 1, time.time() - 40)])
    dashboard = Monitoring(env.app, Monitor(env.config))
    dashboard.health.owner = "dashboard-process"
    env.app.run(lambda _b: dashboard.refresh())
    assert [a["name"] for a in dashboard.active_alerts()] == ["worker_stalled"]  # the dashboard shows it
    path = tmp_path / "alerts.jsonl"
    sink = JsonLinesSink(path)
    monitor = HealthMonitor(env.app, env.config, AlertManager([sink], cooldown=env.config.cooldown))
    monitor.owner = "monitor-process"
    env.app.run(lambda _b: monitor.evaluate())
    sent = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(n["kind"], n["name"], n["labels"]) for n in sent] == [("fired", "worker_stalled", {"worker": "w-killed"})]


def test_a_silent_worker_whose_jobs_were_rescued_is_marked_lost_and_health_is_ok_again(
    make_env: Callable[..., Env],
) -> None:
    env = make_env(heartbeat_timeout=5)
    now = time.time()
    heartbeat(env, "w-killed", age=120, jobs=[RunningJobRecord("job-1", "slow.job", "default", 1, now - 130)])
    run_attempt(env, "job-1", "w-killed", 1, now - 130, None)
    report = env.evaluate()
    assert statuses(report, "worker_stalled") == ["critical"]  # its job is not accounted for yet
    run_attempt(env, "job-1", "w-new", 2, now - 5, now - 1)  # the lease expired; another worker ran it
    heartbeat(env, "w-new", age=0.1, jobs=[])
    report = env.evaluate()
    assert report.status == "ok", [r for r in report.results if r.status != "ok"]
    assert report.lost_workers == []
    assert env.sink.of("worker_stalled") == [("fired", "critical"), ("resolved", "critical")]
    [killed] = [w for w in env.store.workers() if w.id == "w-killed"]
    assert (killed.status(), killed.stop_reason) == ("lost", "lost")
    assert killed.last_heartbeat == pytest.approx(now - 120, abs=1)  # when it was last heard from


def test_a_worker_marked_lost_that_heartbeats_again_is_running(make_env: Callable[..., Env]) -> None:
    env = make_env(heartbeat_timeout=5)
    heartbeat(env, "w-paused", age=120, jobs=[])  # e.g. SIGSTOPped, while idle
    env.evaluate()  # worker_stalled fires
    env.evaluate()  # it ran nothing: all its work is accounted for
    [paused] = env.store.workers()
    assert (paused.status(), paused.stop_reason) == ("lost", "lost")
    heartbeat(env, "w-paused", age=0.1, jobs=[])  # SIGCONT
    [paused] = env.store.workers()
    assert (paused.status(), paused.stopped_at, paused.stop_reason) == ("running", None, "")


def test_a_stalled_worker_whose_job_is_not_rescued_stays_critical(make_env: Callable[..., Env]) -> None:
    env = make_env(heartbeat_timeout=5)
    now = time.time()
    heartbeat(env, "w-killed", age=120, jobs=[RunningJobRecord("job-1", "slow.job", "default", 1, now - 130)])
    run_attempt(env, "job-1", "w-killed", 1, now - 130, None)
    for _ in range(2):
        report = env.evaluate()
        assert statuses(report, "worker_stalled") == ["critical"]
    assert [w.status() for w in env.store.workers()] == ["lost"]  # silent, but not marked: still registered
    assert [w.stopped_at for w in env.store.workers()] == [None]


def test_a_job_that_already_finished_is_not_reported_stuck(make_env: Callable[..., Env]) -> None:
    env = make_env(heartbeat_timeout=5, stuck_grace=1, stuck_after=1000)

    @env.app.job(name="slow.job", timeout=10)
    def slow() -> None:
        pass

    now = time.time()
    # the last heartbeat of a live worker lists a job that completed since, and one still running
    done, late = (RunningJobRecord(j, "slow.job", "default", 1, now - 20) for j in ("j-done", "j-late"))
    heartbeat(env, "w-live", age=0.1, jobs=[done, late])
    run_attempt(env, "j-done", "w-live", 1, now - 20, now - 0.5)
    run_attempt(env, "j-late", "w-live", 1, now - 20, None)
    # a worker that stalled just after its job completed
    heartbeat(env, "w-stalled", age=30, jobs=[RunningJobRecord("j-last", "slow.job", "default", 1, now - 50)])
    run_attempt(env, "j-last", "w-stalled", 1, now - 50, now - 31)
    report = env.evaluate()
    assert [r.labels["job_id"] for r in report.results if r.check == "job_stuck"] == ["j-late"]
    assert statuses(report, "worker_stalled") == ["critical"]
    assert [n.alert.labels["job_id"] for n in env.sink.got if n.alert.name == "job_stuck"] == ["j-late"]


def test_dlq_growth_stays_fired_on_a_new_leaders_next_evaluations(make_env: Callable[..., Env]) -> None:
    env = make_env()

    @env.app.job(max_attempts=1)
    def broken() -> None:
        raise ValueError("no")

    for _ in range(3):
        broken.send()
    run_until_idle(env.app)
    for _ in range(3):  # a monitor that just became leader: its first samples
        report = env.evaluate()
        [result] = [r for r in report.results if r.check == "dlq_growth"]
        assert (result.status, result.value) == ("warning", 3.0)
    assert env.sink.of("dlq_growth") == [("fired", "warning")]
