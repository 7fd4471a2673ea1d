"""The ``unconsumed_queue`` health check on a SQLite broker with History's real worker registry."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.history import WorkerRecord, queue_consumers
from conveyor.monitor import HealthReport

from .test_health import Env as MonitorEnv


class Env(MonitorEnv):
    """The monitor's test app, with a job on the ``reports`` queue and hand-written heartbeats."""

    def __init__(self, tmp_path: Path, history: bool = True) -> None:
        super().__init__(tmp_path, history=history)

        @self.app.job(name="reports.build")
        def build(n: int) -> None:
            pass

        self.build = build

    def heartbeat(self, worker_id: str, queues: list[str], age: float = 0.1, stopped: bool = False) -> None:
        now = time.time()
        self.store.heartbeat(
            WorkerRecord(
                id=worker_id, host="h", pid=4242, queues=queues, concurrency=2, started_at=now - 600,
                last_heartbeat=now - age, heartbeat_interval=1.0,
            )
        )  # fmt: skip
        if stopped:
            self.store.worker_stopped(worker_id, now, "signal")


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    made = Env(tmp_path)
    yield made
    made.close()


def results(report: HealthReport) -> list[tuple[str, dict[str, str]]]:
    return [(r.status, dict(r.labels)) for r in report.results if r.check == "unconsumed_queue"]


def test_ready_jobs_in_a_queue_no_live_worker_consumes_raise_a_warning(env: Env) -> None:
    env.build.options(queue="bulk").send(1)
    env.build.options(queue="bulk").send(2)
    env.build.send(3)
    env.heartbeat("w-default", ["default"])
    report = env.evaluate()
    assert results(report) == [("warning", {"queue": "bulk"})]
    [bulk] = [r for r in report.results if r.check == "unconsumed_queue"]
    assert bulk.message.startswith("queue bulk: 2 ready jobs") and "no live worker consumes it" in bulk.message
    assert "live workers consume default" in bulk.message and bulk.value == 2.0
    assert [(n.kind, n.alert.name, n.alert.severity) for n in env.sink.got] == [
        ("fired", "unconsumed_queue", "warning")
    ]
    # A worker for bulk turns up: the alert resolves.
    env.heartbeat("w-bulk", ["bulk"])
    report = env.evaluate()
    assert results(report) == [("ok", {})]
    assert [n.kind for n in env.sink.got if n.alert.name == "unconsumed_queue"] == ["fired", "resolved"]


def test_a_stopped_or_silent_worker_is_not_a_live_consumer(env: Env) -> None:
    env.build.options(queue="bulk").send(1)
    env.heartbeat("w-stopped", ["bulk"], stopped=True)
    env.heartbeat("w-silent", ["bulk"], age=10.0)  # three heartbeat intervals are 3s
    assert results(env.evaluate()) == [("warning", {"queue": "bulk"})]


def test_delayed_jobs_and_empty_queues_do_not_warn(env: Env) -> None:
    env.build.options(queue="bulk", delay=3600).send(1)
    assert results(env.evaluate()) == [("ok", {})]


def test_without_history_the_check_is_skipped_not_ok(tmp_path: Path) -> None:
    plain = Env(tmp_path, history=False)
    try:
        plain.build.options(queue="bulk").send(1)
        report = plain.evaluate()
        [result] = [r for r in report.results if r.check == "unconsumed_queue"]
        assert result.status == "skipped" and "History" in result.message
    finally:
        plain.close()


def test_queue_consumers_counts_only_live_workers() -> None:
    now = time.time()

    def worker(wid: str, queues: list[str], age: float, stopped: float | None = None) -> WorkerRecord:
        return WorkerRecord(wid, "h", 1, queues, 1, now - 60, now - age, 1.0, stopped_at=stopped)

    found = queue_consumers(
        [
            worker("a", ["default", "mail"], 0.5),
            worker("b", ["mail"], 0.5),
            worker("c", ["bulk"], 5.0),
            worker("d", ["bulk"], 0.5, stopped=now),
        ],
        now,
    )
    assert found == {"default": ["a"], "mail": ["a", "b"]}
