"""Job history end to end through the ``conveyor`` CLI: real workers, real SQLite, subprocesses.

Each test writes a small app module into its own directory (``hist_jobs``)
and runs ``conveyor`` commands and workers against it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

pytestmark = pytest.mark.acceptance

T = TypeVar("T")
CONVEYOR = str(Path(sys.executable).parent / "conveyor")
APP = "hist_jobs:app"

APP_SOURCE = '''
import os
import time
from pathlib import Path

from conveyor import App, Backoff, current_job
from conveyor.history import History

OUT = Path(os.environ["HIST_OUT"])
FAST = Backoff(base=0.01, maximum=0.02)
app = App(extensions=[History(heartbeat_interval=0.3, flush_interval=0.05)])
plain_app = App()


def load_profile(user):
    raise LookupError(f"user {user} not found")


def load_invoice(user):
    raise LookupError(f"user {user} not found")


@app.job(name="sync.profile", max_attempts=2, backoff=FAST)
def profile(user):
    if not (OUT / "fixed").exists():
        load_profile(user)


@app.job(name="sync.invoice", max_attempts=2, backoff=FAST)
def invoice(user):
    if not (OUT / "fixed").exists():
        load_invoice(user)


@app.job(name="work.slow")
def slow(n):
    while not (OUT / "release").exists():
        time.sleep(0.02)


@app.job(name="work.flaky", max_attempts=6, backoff=FAST)
def flaky(n):
    if current_job().attempt < 4:
        raise TimeoutError(f"gateway timed out after {current_job().attempt * 10}s")
'''


class Harness:
    """A directory with the app module and a SQLite database; runs ``conveyor``."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        (tmp_path / "hist_jobs.py").write_text(textwrap.dedent(APP_SOURCE))
        self.out = tmp_path / "out"
        self.out.mkdir()
        self.env = {
            **os.environ,
            "CONVEYOR_BROKER_URL": f"sqlite:///{tmp_path / 'q.db'}",
            "HIST_OUT": str(self.out),
            "PYTHONPATH": str(tmp_path),
            "PYTHONUNBUFFERED": "1",
        }
        self.procs: list[subprocess.Popen[str]] = []

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CONVEYOR, *args], cwd=self.dir, env=self.env, capture_output=True, text=True, timeout=30
        )

    def ok(self, *args: str) -> str:
        r = self.cli(*args)
        assert r.returncode == 0, f"conveyor {' '.join(args)} exited {r.returncode}:\n{r.stderr}"
        return r.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))

    def enqueue(self, job: str, *args: Any) -> str:
        return self.ok("enqueue", APP, job, "--args", json.dumps(list(args))).strip()

    def worker(self, *args: str) -> subprocess.Popen[str]:
        log = open(self.dir / f"worker{len(self.procs)}.log", "w")  # noqa: SIM115 - the Popen owns it
        proc = subprocess.Popen(
            [CONVEYOR, "worker", APP, "--poll-interval", "0.05", *args],
            cwd=self.dir, env=self.env, stdout=log, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        log.close()
        self.procs.append(proc)
        return proc

    def burst(self) -> None:
        proc = self.worker("--burst")
        assert proc.wait(60) == 0

    @staticmethod
    def wait_for(check: Callable[[], T], what: str, timeout: float = 20.0) -> T:
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}")
            time.sleep(0.1)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    harness.close()


def one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_failures_and_dlq_retry_by_cluster(h: Harness) -> None:
    profiles = [h.enqueue("sync.profile", 42), h.enqueue("sync.profile", 97)]
    invoice = h.enqueue("sync.invoice", 5)
    h.burst()

    clusters = {c["job_type"]: c for c in h.json("failures", APP, "--since", "10m")}
    assert set(clusters) == {"sync.profile", "sync.invoice"}
    p = clusters["sync.profile"]
    assert (p["count"], p["jobs"], p["dead"]) == (4, 2, 2)
    assert sorted(p["example_ids"]) == sorted(profiles)
    assert p["error_type"] == "LookupError" and p["error_message"] in ("user 42 not found", "user 97 not found")
    assert p["pattern"] == "user <n> not found" and p["fingerprint"] != clusters["sync.invoice"]["fingerprint"]
    table = h.ok("failures", APP)
    assert p["fingerprint"] in table and "LookupError" in table

    (h.out / "fixed").touch()
    assert h.ok("dlq", "retry", APP, "--cluster", p["fingerprint"]).strip() == (
        f"retried 2 dead letters of cluster {p['fingerprint']}"
    )
    assert [d["id"] for d in h.json("dlq", "list", APP)] == [invoice]
    assert sorted(j["id"] for j in h.json("jobs", APP, "--state", "enqueued")) == sorted(profiles)
    h.burst()
    t = h.json("job", APP, profiles[0])
    assert t["job"]["state"] == "completed"
    assert [(a["attempt"], a["outcome"], a["redelivery"]) for a in t["attempts"]] == [
        (1, "failed", ""), (2, "failed", ""), (1, "completed", "manual_retry"),
    ]  # fmt: skip
    assert [e["kind"] for e in t["events"]].count("manual_retry") == 1

    assert "no dead job of cluster" in one_line_error(h.cli("dlq", "retry", APP, "--cluster", "ffffffffffff"))
    assert h.cli("dlq", "retry", APP, "--cluster", p["fingerprint"], "--all").returncode == 2
    assert h.ok("dlq", "retry", APP, invoice).strip() == "retried 1 dead letter"


def test_killed_worker_lease_expiry_and_worker_registry(h: Harness) -> None:
    job_id = h.enqueue("work.slow", 1)
    lost = h.worker("--visibility-timeout", "1", "--concurrency", "2")

    def running_on_worker() -> Any:
        return [w for w in h.json("workers", APP) if w["jobs"] and w["jobs"][0]["id"] == job_id]

    [w] = h.wait_for(running_on_worker, "the worker's heartbeat to list the job")
    assert w["status"] == "running" and w["pid"] == lost.pid and w["concurrency"] == 2
    assert w["rss_bytes"] > 10 * 2**20 and w["cpu_percent"] is not None and w["heartbeat_age"] < 5
    assert w["jobs"][0]["type"] == "work.slow" and w["jobs"][0]["attempt"] == 1
    h.wait_for(lambda: h.json("job", APP, job_id)["job"]["state"] == "running", "the attempt to be recorded")

    lost.send_signal(signal.SIGKILL)
    lost.wait(10)
    h.wait_for(
        lambda: [x for x in h.json("workers", APP) if x["id"] == w["id"] and x["status"] == "lost"],
        "the killed worker to be reported lost",
    )
    (h.out / "release").touch()
    rescuer = h.worker()
    h.wait_for(lambda: h.json("job", APP, job_id)["job"]["state"] == "completed", "the job to run again")
    rescuer.send_signal(signal.SIGTERM)
    assert rescuer.wait(20) == 0

    t = h.json("job", APP, job_id)
    first, second = t["attempts"]
    assert (first["attempt"], first["worker_id"], first["outcome"]) == (1, w["id"], "lost")
    assert (second["attempt"], second["outcome"], second["redelivery"]) == (2, "completed", "lease_expired")
    assert second["worker_id"] != w["id"]
    workers = {x["id"]: x for x in h.json("workers", APP)}
    assert workers[w["id"]]["status"] == "lost" and [j["id"] for j in workers[w["id"]]["jobs"]] == [job_id]
    assert workers[second["worker_id"]]["status"] == "stopped"
    assert workers[second["worker_id"]]["stop_reason"] == "SIGTERM"
    timeline = h.ok("job", APP, job_id)
    assert "lease_expired" in timeline and "lost" in timeline


def test_retry_loops(h: Harness) -> None:
    looping = h.enqueue("work.flaky", 1)
    h.enqueue("sync.profile", 1)
    h.burst()
    loops = h.json("retries", APP, "--min-attempts", "3", "--since", "10m")
    assert [j["job_id"] for j in loops["jobs"]] == [looping]
    job = loops["jobs"][0]
    assert (job["attempts"], job["repeats"], job["state"]) == (4, 3, "completed")
    assert job["error"]["type"] == "TimeoutError" and job["error"]["message"].startswith("gateway timed out after")
    assert [(t["job_type"], t["jobs"], t["attempts"]) for t in loops["types"]] == [("work.flaky", 1, 4)]
    assert len(h.json("retries", APP, "--min-attempts", "2")["jobs"]) == 2
    assert "work.flaky" in h.ok("retries", APP)


def test_jobs_listing_and_user_errors(h: Harness) -> None:
    ids = [h.enqueue("work.flaky", n) for n in range(3)]
    slow = h.ok("enqueue", APP, "work.slow", "--args", "[9]", "--delay", "3600").strip()
    listed = h.json("jobs", APP)
    assert {j["id"] for j in listed} == {*ids, slow}
    assert [j["state"] for j in h.json("jobs", APP, "--type", "work.slow")] == ["scheduled"]
    assert len(h.json("jobs", APP, "--limit", "2")) == 2
    assert h.json("jobs", APP, "--queue", "nope") == []
    assert {j["id"] for j in h.json("jobs", APP, "--state", "enqueued", "--since", "1h")} == set(ids)
    assert ids[0] in h.ok("jobs", APP)

    error = one_line_error(h.cli("jobs", "hist_jobs:plain_app"))
    assert "job history is not enabled" in error and "History()" in error
    assert "is not in the history" in one_line_error(h.cli("job", APP, "no-such-job"))
    assert "not a duration" in h.cli("failures", APP, "--since", "5x").stderr
    assert h.cli("jobs", APP, "--state", "bogus").returncode == 2
