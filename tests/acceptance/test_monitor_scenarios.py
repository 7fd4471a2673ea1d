"""Each alert provoked for real with worker processes: it fires once, respects the cooldown, resolves.

The app (written to a temporary directory) has History and a Monitor with short
thresholds writing alerts to a JSON-lines file, which the tests read: whichever
worker holds the monitor lock writes there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.acceptance

CONVEYOR = str(Path(sys.executable).parent / "conveyor")
APP = "monitor_app:app"
COOLDOWN = 60.0

APP_SOURCE = f'''
import os, time
from conveyor import App, Backoff
from conveyor.history import History
from conveyor.monitor import JsonLinesSink, Monitor, MonitorConfig

config = MonitorConfig(
    interval=0.3, cooldown={COOLDOWN}, heartbeat_timeout=1.5,
    latency_warning=0.5, latency_critical=1000,
    failure_window=3.0, failure_min_attempts=5, failure_rate_warning=0.2, failure_rate_critical=0.5,
    dlq_growth_warning=1000, dlq_growth_critical=None, retry_loop_attempts=4, retry_loop_window=60,
    resource_interval=0.2, resource_window=5, rss_growth_mb=20, rss_warning_mb=8192, rss_critical_mb=None,
)
app = App(extensions=[
    History(flush_interval=0.05, heartbeat_interval=0.2),
    Monitor(config, [JsonLinesSink(os.path.join(os.environ["MON_OUT"], "alerts.jsonl"))]),
])
KEPT = []


@app.job(name="sleepy")
def sleepy(seconds: float) -> None:
    time.sleep(seconds)


@app.job(name="quick", queue="slow")
def quick() -> None:
    pass


@app.job(name="fanout")
def fanout(name: str, n: int) -> None:
    app.send_jobs([app.message(name) for _ in range(n)])


@app.job(name="boom", max_attempts=1)
def boom() -> None:
    raise RuntimeError("payment gateway said no")


@app.job(name="loop", max_attempts=9, backoff=Backoff(base=0.3, factor=1.0, maximum=0.3, jitter=0.0))
def loop() -> None:
    raise TimeoutError("upstream timed out")


@app.job(name="hog", timeout=60)
def hog(steps: int, mb: int) -> None:
    for _ in range(steps):
        block = bytearray(mb * 1024 * 1024)
        for i in range(0, len(block), 4096):
            block[i] = 1
        KEPT.append(block)
        time.sleep(0.1)
'''


class Scenario:
    """One isolated installation: a temporary directory, a SQLite file, worker processes, the alert log."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp
        (tmp / "monitor_app.py").write_text(APP_SOURCE)
        self.alerts_path = tmp / "alerts.jsonl"
        self.env = {
            **os.environ,
            "CONVEYOR_BROKER_URL": f"sqlite:///{tmp / 'q.db'}",
            "MON_OUT": str(tmp),
            "PYTHONUNBUFFERED": "1",
        }
        self.procs: list[subprocess.Popen[bytes]] = []

    def cli(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CONVEYOR, *args], cwd=self.dir, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def enqueue(self, job: str, *args: str) -> str:
        r = self.cli("enqueue", APP, job, *args)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    def worker(self, *args: str) -> subprocess.Popen[bytes]:
        out = open(self.dir / f"worker{len(self.procs)}.log", "wb")  # noqa: SIM115 - owned by the process
        proc = subprocess.Popen(
            [CONVEYOR, "worker", APP, "--poll-interval", "0.05", "--shutdown-timeout", "1", *args],
            cwd=self.dir, env=self.env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        out.close()
        self.procs.append(proc)
        return proc

    def alerts(self, name: str) -> list[dict[str, Any]]:
        if not self.alerts_path.exists():
            return []
        lines = [json.loads(line) for line in self.alerts_path.read_text().splitlines() if line]
        return [a for a in lines if a["name"] == name]

    def kinds(self, name: str) -> list[str]:
        return [a["kind"] for a in self.alerts(name)]

    def wait_for(self, check: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                logs = "\n".join(p.read_text()[-3000:] for p in sorted(self.dir.glob("worker*.log")))
                pytest.fail(f"timed out after {timeout}s waiting for {what}\nalerts: {self.alerts_text()}\n{logs}")
            time.sleep(0.05)

    def alerts_text(self) -> str:
        return self.alerts_path.read_text() if self.alerts_path.exists() else "(none)"

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture
def scenario(tmp_path: Path) -> Iterator[Scenario]:
    s = Scenario(tmp_path)
    try:
        yield s
    finally:
        s.close()


def holds_for(check: Callable[[], bool], seconds: float) -> bool:
    """True when ``check`` stays true for ``seconds`` (a condition that must keep holding)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not check():
            return False
        time.sleep(0.1)
    return True


def test_worker_stalled_by_sigstop_fires_once_names_its_job_and_resolves_on_sigcont(scenario: Scenario) -> None:
    victim = scenario.worker("-c", "1")
    scenario.worker("-q", "slow")  # a healthy worker that takes over the monitor lock
    job_id = scenario.enqueue("sleepy", "--args", "[60]")
    time.sleep(1.5)  # the victim leases the job and heartbeats
    victim.send_signal(signal.SIGSTOP)
    fired = scenario.wait_for(lambda: scenario.alerts("worker_stalled"), 20, "worker_stalled to fire")[0]
    assert fired["kind"] == "fired" and fired["severity"] == "critical"
    assert fired["labels"]["worker"].split(":")[1] == str(victim.pid)
    assert f"sleepy {job_id}" in fired["message"]
    # the condition holds for many evaluations (interval 0.3s), but the alert is not sent again
    assert holds_for(lambda: scenario.kinds("worker_stalled") == ["fired"], 2.0), scenario.alerts_text()
    health = scenario.cli("health", APP, "--json")
    assert health.returncode == 1, health.stdout + health.stderr  # a critical check fails the probe
    report = json.loads(health.stdout)
    assert report["checks"]["worker_stalled"] == "critical"
    assert [j["id"] for j in report["lost_workers"][0]["jobs"]] == [job_id]
    victim.send_signal(signal.SIGCONT)
    scenario.wait_for(lambda: scenario.kinds("worker_stalled") == ["fired", "resolved"], 20, "the resolve")


def test_backlog_past_the_latency_threshold_fires_once_and_resolves_when_drained(scenario: Scenario) -> None:
    scenario.worker("-q", "default")  # runs the monitor but does not consume "slow"
    for _ in range(3):
        scenario.enqueue("quick")
    fired = scenario.wait_for(lambda: scenario.alerts("queue_latency"), 20, "queue_latency to fire")[0]
    assert (fired["kind"], fired["severity"], fired["labels"]) == ("fired", "warning", {"queue": "slow"})
    assert fired["value"] >= 0.5
    assert holds_for(lambda: scenario.kinds("queue_latency") == ["fired"], 1.5), scenario.alerts_text()
    once = scenario.cli("monitor", APP, "--once", "--json")
    assert once.returncode == 0 and json.loads(once.stdout)["checks"]["queue_latency"] == "warning"
    probe = scenario.cli("health", APP, "--fail-on", "warning")
    assert probe.returncode == 1, probe.stdout
    drain = scenario.worker("-q", "slow", "--burst")
    assert drain.wait(30) == 0
    scenario.wait_for(lambda: scenario.kinds("queue_latency") == ["fired", "resolved"], 20, "the resolve")
    assert scenario.cli("health", APP).returncode == 0


def test_failure_burst_fires_failure_rate_once_and_resolves_after_the_window(scenario: Scenario) -> None:
    scenario.worker("-c", "4")
    scenario.enqueue("fanout", "--args", '["boom", 12]')  # a burst: 12 failures within a second
    fired = scenario.wait_for(lambda: scenario.alerts("failure_rate"), 20, "failure_rate to fire")[0]
    assert fired["severity"] == "critical" and fired["labels"] == {"job_type": "boom", "queue": "default"}
    assert fired["value"] == 1.0 and "payment" not in fired["message"]  # the rate, not the error
    # failures stay in the 3s window for a while: still one notification
    assert holds_for(lambda: scenario.kinds("failure_rate") == ["fired"], 1.0), scenario.alerts_text()
    scenario.wait_for(lambda: scenario.kinds("failure_rate") == ["fired", "resolved"], 20, "the resolve")


def test_retry_loop_fires_once_while_a_job_keeps_failing_and_resolves_when_it_dies(scenario: Scenario) -> None:
    scenario.worker()
    job_id = scenario.enqueue("loop")
    fired = scenario.wait_for(lambda: scenario.alerts("retry_loop"), 20, "retry_loop to fire")[0]
    assert fired["labels"] == {"job_type": "loop"} and job_id in fired["message"]
    assert "TimeoutError: upstream timed out" in fired["message"]
    scenario.wait_for(lambda: scenario.kinds("retry_loop") == ["fired", "resolved"], 30, "the resolve")
    dead = scenario.cli("dlq", "list", APP, "--json")
    assert [d["id"] for d in json.loads(dead.stdout)] == [job_id]  # it looped 9 times, then died


def test_worker_whose_memory_keeps_growing_fires_once_and_resolves_when_it_stops(scenario: Scenario) -> None:
    worker = scenario.worker("-c", "1")
    scenario.enqueue("hog", "--args", "[40, 6]")  # 240 MiB over ~5s, kept
    fired = scenario.wait_for(lambda: scenario.alerts("worker_memory_growing"), 30, "worker_memory_growing")[0]
    assert fired["severity"] == "warning" and fired["labels"]["worker"].split(":")[1] == str(worker.pid)
    assert fired["value"] >= 20 and "running hog" in fired["message"]
    scenario.wait_for(
        lambda: scenario.kinds("worker_memory_growing") == ["fired", "resolved"], 30, "the resolve"
    )
    assert scenario.kinds("worker_memory_growing") == ["fired", "resolved"]  # fired once while it grew
