"""A worker SIGKILLed under ``--processes``: its stall is alerted once, its job is rescued,
it is marked lost, and ``conveyor health`` is ok again (with real worker processes)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .test_monitor_scenarios import APP, Scenario

pytestmark = pytest.mark.acceptance

APP_SOURCE = """
import os, time
from conveyor import App
from conveyor.history import History
from conveyor.monitor import JsonLinesSink, Monitor, MonitorConfig

OUT = os.environ["MON_OUT"]
config = MonitorConfig(interval=0.3, cooldown=60.0, heartbeat_timeout=1.5)
app = App(extensions=[
    History(flush_interval=0.05, heartbeat_interval=0.2),
    Monitor(config, [JsonLinesSink(os.path.join(OUT, "alerts.jsonl"))]),
])


@app.job(name="sleepy")
def sleepy(seconds: float) -> None:
    with open(os.path.join(OUT, "ran"), "a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(seconds)
"""


@pytest.fixture
def scenario(tmp_path: Path) -> Iterator[Scenario]:
    s = Scenario(tmp_path)
    (tmp_path / "monitor_app.py").write_text(APP_SOURCE)
    try:
        yield s
    finally:
        s.close()


def test_a_sigkilled_worker_is_alerted_once_then_marked_lost_and_health_recovers(scenario: Scenario) -> None:
    # The lease outlives the stall alert by a margin, so the alert still finds the job unrescued.
    scenario.worker("--processes", "2", "-c", "1", "--visibility-timeout", "5")
    ran = scenario.dir / "ran"

    def runs() -> list[int]:
        return [int(line) for line in ran.read_text().split()] if ran.exists() else []

    job_id = scenario.enqueue("sleepy", "--args", "[3]")
    [victim] = scenario.wait_for(runs, 30, "a worker to start the job")
    time.sleep(1.0)  # it heartbeats with the job and history records the attempt
    os.kill(victim, signal.SIGKILL)  # the supervisor starts a new process in its place
    fired = scenario.wait_for(lambda: scenario.alerts("worker_stalled"), 30, "worker_stalled to fire")[0]
    assert fired["kind"] == "fired" and fired["labels"]["worker"].split(":")[1] == str(victim)
    assert f"sleepy {job_id}" in fired["message"]
    rescuer = scenario.wait_for(lambda: runs()[1:], 30, "the job to run again after its lease expired")[0]
    assert rescuer != victim
    scenario.wait_for(lambda: scenario.kinds("worker_stalled") == ["fired", "resolved"], 30, "the resolve")
    health = scenario.cli("health", APP, "--json")
    report = json.loads(health.stdout)
    assert health.returncode == 0, health.stdout + health.stderr
    assert report["checks"]["worker_stalled"] == "ok" and report["lost_workers"] == []
    assert scenario.kinds("worker_stalled") == ["fired", "resolved"]  # once each
