"""The health monitor on a SQLite broker with History: each check, alerts, lost workers, the leader lock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import App, Backoff
from conveyor.history import Change, ErrorRecord, History, RunningJobRecord, WorkerRecord, history_of
from conveyor.monitor import (
    CHECKS,
    WORKER_LOST,
    AlertManager,
    HealthMonitor,
    HealthReport,
    MonitorConfig,
    Notification,
    QueueThresholds,
)
from conveyor.monitor.health import LOCK_NAME, monitor_loop
from conveyor.testing import capture_signals, run_until_idle

FAST = Backoff(base=0.01, maximum=0.02)


class Recorder:
    def __init__(self) -> None:
        self.got: list[Notification] = []

    def send(self, notification: Notification) -> None:
        self.got.append(notification)

    def of(self, name: str) -> list[tuple[str, str]]:
        return [(n.kind, n.alert.severity) for n in self.got if n.alert.name == name]


class Env:
    """An app with History on a temporary SQLite file, and a health monitor with a recording sink."""

    def __init__(self, tmp_path: Path, history: bool = True, **config: Any) -> None:
        extensions = [History(flush_interval=0.05, heartbeat_interval=0.2)] if history else []
        self.app = App(f"sqlite:///{tmp_path / 'q.db'}", extensions=extensions)
        self.sink = Recorder()
        self.config = MonitorConfig(**{"interval": 1.0, "cooldown": 60.0, **config})
        self.monitor = HealthMonitor(self.app, self.config, AlertManager([self.sink], cooldown=self.config.cooldown))

    @property
    def store(self) -> Any:
        return history_of(self.app).store

    def evaluate(self, **kw: Any) -> HealthReport:
        if self.app.extensions:
            history_of(self.app).flush()
        report: HealthReport = self.app.run(lambda _b: self.monitor.evaluate(**kw))
        return report

    def close(self) -> None:
        for ext in self.app.extensions:
            ext.close()  # type: ignore[attr-defined]
        self.app.close()


@pytest.fixture
def make_env(tmp_path: Path) -> Iterator[Callable[..., Env]]:
    made: list[Env] = []

    def make(**kw: Any) -> Env:
        env = Env(tmp_path, **kw)
        made.append(env)
        return env

    yield make
    for env in made:
        env.close()


def statuses(report: HealthReport, check: str) -> list[str]:
    return [r.status for r in report.results if r.check == check]


def test_latency_and_size_fire_once_then_resolve_when_drained(make_env: Callable[..., Env]) -> None:
    env = make_env(latency_warning=0.05, latency_critical=10, size_warning=3, size_critical=100)

    @env.app.job(queue="mail")
    def send(n: int) -> None:
        pass

    for i in range(5):
        send.send(i)
    time.sleep(0.1)
    for _ in range(3):
        report = env.evaluate()
    assert statuses(report, "queue_latency") == ["warning"] and statuses(report, "queue_size") == ["warning"]
    assert report.status == "warning"
    assert env.sink.of("queue_latency") == env.sink.of("queue_size") == [("fired", "warning")]
    run_until_idle(env.app)
    report = env.evaluate()
    assert statuses(report, "queue_latency") == ["ok"]
    assert env.sink.of("queue_latency") == [("fired", "warning"), ("resolved", "warning")]


def test_per_queue_thresholds_override_the_defaults(make_env: Callable[..., Env]) -> None:
    env = make_env(size_warning=100, queues={"bulk": QueueThresholds(size_warning=1, size_critical=2)})

    @env.app.job(queue="bulk")
    def load() -> None:
        pass

    for _ in range(2):
        load.send()
    assert statuses(env.evaluate(), "queue_size") == ["critical"]


def test_dlq_growth_from_samples_once_they_span_the_window(make_env: Callable[..., Env]) -> None:
    env = make_env(dlq_growth_warning=2, dlq_growth_critical=5, dlq_window=0.5)

    @env.app.job(max_attempts=1)
    def broken() -> None:
        raise ValueError("no")

    env.evaluate()
    for _ in range(3):
        broken.send()
    run_until_idle(env.app)
    time.sleep(0.6)  # the first sample is now older than the window
    report = env.evaluate()
    [result] = [r for r in report.results if r.check == "dlq_growth"]
    assert (result.status, result.value) == ("warning", 3.0) and "samples" in result.message


def test_backlog_growing_over_the_last_samples(make_env: Callable[..., Env]) -> None:
    env = make_env(backlog_samples=3, backlog_min_growth=2)

    @env.app.job
    def work() -> None:
        pass

    for _ in range(2):
        assert statuses(env.evaluate(), "backlog_growing") == ["ok"]  # 0, then 2 ready: too few samples
        work.send()
        work.send()
    assert statuses(env.evaluate(), "backlog_growing") == ["warning"]  # 0 -> 2 -> 4
    assert env.sink.of("backlog_growing") == [("fired", "warning")]


def heartbeat(env: Env, worker_id: str, age: float, jobs: list[RunningJobRecord], rss: int | None = None) -> None:
    now = time.time()
    env.store.heartbeat(
        WorkerRecord(
            id=worker_id, host="h", pid=4242, queues=["default"], concurrency=2, started_at=now - 600,
            last_heartbeat=now - age, heartbeat_interval=1.0, rss_bytes=rss, cpu_percent=5.0, jobs=jobs,
        )
    )  # fmt: skip


def test_stalled_worker_is_critical_names_its_jobs_and_is_recorded(make_env: Callable[..., Env]) -> None:
    env = make_env(heartbeat_timeout=5)
    job = RunningJobRecord("job-1", "reports.build", "default", 1, time.time() - 30)
    heartbeat(env, "w-stalled", age=30, jobs=[job], rss=300 * 1024 * 1024)
    heartbeat(env, "w-fine", age=0.1, jobs=[])
    with capture_signals(env.app, [WORKER_LOST]) as lost:
        env.evaluate(worker=None)
        report = env.evaluate()
    [stalled] = [r for r in report.results if r.check == "worker_stalled"]
    assert stalled.status == "critical" and stalled.labels == {"worker": "w-stalled"}
    assert "reports.build job-1" in stalled.message
    assert [w.worker_id for w in report.lost_workers] == ["w-stalled"]
    assert [j.id for j in report.lost_workers[0].jobs] == ["job-1"]
    assert len(lost) == 1 and lost[0].attrs["job_types"] == "reports.build"
    assert env.sink.of("worker_stalled") == [("fired", "critical")]
    assert statuses(report, "job_stuck") == ["ok"]  # silent 30s: its 60s lease has not lapsed yet
    heartbeat(env, "w-stalled", age=0.1, jobs=[])
    report = env.evaluate()
    assert statuses(report, "worker_stalled") == ["ok"] and report.lost_workers == []
    assert env.sink.of("worker_stalled") == [("fired", "critical"), ("resolved", "critical")]


def test_stuck_jobs_past_timeout_or_lease(make_env: Callable[..., Env]) -> None:
    env = make_env(heartbeat_timeout=5, stuck_grace=1, stuck_after=1000)

    @env.app.job(name="slow.job", timeout=10)
    def slow() -> None:
        pass

    heartbeat(env, "w1", age=0.1, jobs=[RunningJobRecord("j-late", "slow.job", "default", 1, time.time() - 20)])
    heartbeat(env, "w2", age=0.1, jobs=[RunningJobRecord("j-ok", "other", "default", 1, time.time() - 20)])
    heartbeat(env, "w3", age=120, jobs=[RunningJobRecord("j-orphan", "other", "default", 1, time.time() - 130)])
    report = env.evaluate()
    stuck = {r.labels["job_id"]: r.message for r in report.results if r.check == "job_stuck"}
    assert set(stuck) == {"j-late", "j-orphan"}
    assert "past its timeout of 10s" in stuck["j-late"] and "lease has lapsed" in stuck["j-orphan"]


def record_attempts(env: Env, job_type: str, ok: int, failed: int) -> None:
    now = time.time()
    changes = []
    for i in range(ok + failed):
        jid = f"{job_type}-{i}"
        changes += [
            Change("enqueued", jid, job_type, "default", now - 5),
            Change("started", jid, job_type, "default", now - 4, attempt=1, worker_id="w"),
        ]
        if i < ok:
            changes.append(Change("completed", jid, job_type, "default", now - 3, 1, "w", duration=0.5))
        else:
            err = ErrorRecord("ValueError", "bad", "", "f" * 12)
            changes.append(Change("failed", jid, job_type, "default", now - 3, 1, "w", duration=0.5, error=err))
    env.store.record(changes)


def test_failure_rate_over_the_window(make_env: Callable[..., Env]) -> None:
    env = make_env(failure_rate_warning=0.2, failure_rate_critical=0.5, failure_min_attempts=10)
    record_attempts(env, "charge", ok=4, failed=8)
    record_attempts(env, "email", ok=9, failed=1)
    record_attempts(env, "rare", ok=0, failed=3)  # under failure_min_attempts
    report = env.evaluate()
    rates = {r.labels["job_type"]: (r.status, r.value) for r in report.results if r.check == "failure_rate"}
    assert rates == {"charge": ("critical", pytest.approx(0.6667, abs=1e-3)), "email": ("ok", 0.1)}


def test_retry_loop_reports_unfinished_jobs_only(make_env: Callable[..., Env]) -> None:
    env = make_env(retry_loop_attempts=3)
    now = time.time()
    err = ErrorRecord("TimeoutError", "upstream timed out", "", "a" * 12)
    for jid, final in (("loop-1", None), ("done-1", "dead")):
        changes = [Change("enqueued", jid, "sync.pull", "default", now - 10)]
        for attempt in range(1, 5):
            at = now - 9 + attempt
            changes += [
                Change("started", jid, "sync.pull", "default", at, attempt, "w"),
                Change("failed", jid, "sync.pull", "default", at + 0.1, attempt, "w", duration=0.1, error=err),
                Change("retrying", jid, "sync.pull", "default", at + 0.2, attempt, "w", delay=0.5, error=err),
            ]
        if final:
            changes.append(Change("dead", jid, "sync.pull", "default", now - 1, 4, "w", reason="max", error=err))
        env.store.record(changes)
    report = env.evaluate()
    [loop] = [r for r in report.results if r.check == "retry_loop"]
    assert loop.status == "warning" and loop.labels == {"job_type": "sync.pull"} and loop.value == 1.0
    assert "loop-1" in loop.message and "TimeoutError: upstream timed out" in loop.message


def test_worker_memory_is_reported_but_not_alerted_by_the_leader(make_env: Callable[..., Env]) -> None:
    env = make_env(rss_warning_mb=100, rss_critical_mb=200)
    heartbeat(env, "fat", age=0.1, jobs=[], rss=250 * 1024 * 1024)
    report = env.evaluate()
    assert statuses(report, "worker_memory") == ["critical"] and report.status == "critical"
    assert env.sink.of("worker_memory") == []


def test_without_history_worker_checks_are_skipped_and_queue_checks_run(make_env: Callable[..., Env]) -> None:
    env = make_env(history=False)
    report = env.evaluate()
    checks = report.checks()
    assert list(checks) == ["broker", *[c.name for c in CHECKS]]
    assert {checks[n] for n in ("worker_stalled", "failure_rate", "retry_loop", "worker_memory")} == {"skipped"}
    assert checks["queue_latency"] == checks["job_stuck"] == "ok" and report.forecasts == []


def test_a_broker_failure_is_critical(make_env: Callable[..., Env], monkeypatch: pytest.MonkeyPatch) -> None:
    env = make_env()

    async def broken(*args: Any) -> Any:
        raise ConnectionError("down")

    broker = env.app.run(lambda b: asyncio.sleep(0, b))
    monkeypatch.setattr(broker, "stats", broken)
    report = env.evaluate()
    assert report.status == "critical" and report.results[0].check == "broker"
    assert env.sink.of("broker") == [("fired", "critical")]


def test_forecast_from_history_and_samples(make_env: Callable[..., Env]) -> None:
    env = make_env(throughput_window=60, drain_target=60)
    record_attempts(env, "work", ok=60, failed=0)  # 1 job/s, 0.5s each

    @env.app.job(name="work")
    def work() -> None:
        pass

    for _ in range(30):
        work.send()
    [f] = env.evaluate().forecasts
    assert (f.queue, f.backlog, f.sampled) == ("default", 30, False)
    assert f.throughput == pytest.approx(1.0) and f.mean_duration == pytest.approx(0.5)
    assert f.drain_eta == pytest.approx(30.0)
    # (1/s + 30/60s) * 0.5s / 8 slots per worker -> 1 worker
    assert f.recommended_workers == 1


def test_only_the_lock_holder_evaluates_checks(make_env: Callable[..., Env]) -> None:
    env = make_env(interval=0.1)
    other = HealthMonitor(env.app, env.config, AlertManager([], cooldown=60))

    async def race() -> bool:
        tasks = [
            asyncio.create_task(monitor_loop(env.monitor, "A")),
            asyncio.create_task(monitor_loop(other, "B")),
        ]
        await asyncio.sleep(0.5)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        broker = await env.app.broker()
        return await broker.acquire_lock(LOCK_NAME, "C", 1.0)

    free = env.app.run(lambda _b: race())
    reports = [m.last_report for m in (env.monitor, other)]
    assert all(r is not None for r in reports)
    ran_checks = [len(r.results) > 1 for r in reports if r is not None]
    assert sorted(ran_checks) == [False, True]
    assert free  # the leader released the lock when it stopped


def test_the_cooldown_holds_across_processes_and_the_resolve_still_comes(make_env: Callable[..., Env]) -> None:
    env = make_env(latency_warning=0.01)
    other_sink = type(env.sink)()
    other = HealthMonitor(env.app, env.config, AlertManager([other_sink], cooldown=env.config.cooldown))
    other.owner = "another-process"

    @env.app.job
    def work() -> None:
        pass

    work.send()
    time.sleep(0.05)
    env.evaluate()
    env.app.run(lambda _b: other.evaluate())  # e.g. a new leader, or `conveyor monitor --once`
    assert env.sink.of("queue_latency") == [("fired", "warning")]
    assert other_sink.of("queue_latency") == []  # held back: sent by the first within the cooldown
    run_until_idle(env.app)
    env.app.run(lambda _b: other.evaluate())
    assert other_sink.of("queue_latency") == [("resolved", "warning")]
