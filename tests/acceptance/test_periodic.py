"""Periodic jobs with several real worker processes on one SQLite broker: each tick runs once."""

from __future__ import annotations

import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.acceptance

CONVEYOR = str(Path(sys.executable).parent / "conveyor")

APP_SOURCE = '''
import json, os, time
from datetime import timedelta
from conveyor import App, current_job
from conveyor.scheduler import TICK_HEADER, scheduler_for

app = App()
scheduler_for(app).lock_ttl = float(os.environ.get("LOCK_TTL", "15"))


@app.periodic(every=timedelta(seconds=1), name="every.second", max_attempts=1)
def every_second() -> None:
    ctx = current_job()
    line = {"id": ctx.job.id, "tick": int(ctx.job.headers[TICK_HEADER]), "pid": os.getpid(), "t": time.time()}
    fd = os.open(os.environ["TICKS_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, (json.dumps(line) + "\\n").encode())
    finally:
        os.close(fd)
'''


class Cluster:
    """Worker processes of one periodic app on one SQLite file in a temporary directory."""

    def __init__(self, tmp: Path, **env: str) -> None:
        self.dir = tmp
        (tmp / "periodic_app.py").write_text(APP_SOURCE)
        self.db = tmp / "q.db"
        self.log = tmp / "ticks.jsonl"
        self.env = {**os.environ, "CONVEYOR_BROKER_URL": f"sqlite:///{self.db}", "TICKS_LOG": str(self.log), **env}
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, n: int) -> None:
        for i in range(n):
            out = open(self.dir / f"worker{len(self.procs)}.log", "wb")  # noqa: SIM115 - owned by the process
            argv = [CONVEYOR, "worker", "periodic_app:app", "--poll-interval", "0.05", "-c", "2"]
            proc = subprocess.Popen(argv, cwd=self.dir, env=self.env, stdout=out, stderr=subprocess.STDOUT)
            self.procs.append(proc)
            out.close()
            if i == 0:
                time.sleep(0.3)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def runs(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]

    def leftover(self) -> list[str]:
        """Ids of enqueued ticks that no worker ran before the stop."""
        with sqlite3.connect(self.db) as conn:
            return [r[0] for r in conn.execute("SELECT id FROM conveyor_jobs WHERE type = 'every.second'")]

    def leader_pid(self) -> int | None:
        with sqlite3.connect(self.db) as conn:
            row = conn.execute("SELECT owner FROM conveyor_locks WHERE name = 'conveyor:scheduler'").fetchone()
        return int(row[0].split(":")[1]) if row else None

    def logs(self) -> str:
        return "\n".join((self.dir / f"worker{i}.log").read_text() for i in range(len(self.procs)))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.stop()


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def test_one_tick_per_period_with_three_workers(cluster: Cluster) -> None:
    cluster.start(3)
    wait_for(cluster.runs, 15, "the first tick")
    time.sleep(5.2)
    cluster.stop()
    runs = cluster.runs()
    ids = [r["id"] for r in runs] + cluster.leftover()
    assert len(ids) == len(set(ids)), f"a tick ran twice: {Counter(ids).most_common(3)}"
    ticks = sorted(r["tick"] for r in runs)
    assert len(ticks) == len(set(ticks))
    # one tick per period: consecutive seconds, none missing, none doubled
    periods = (ticks[-1] - ticks[0]) // 1000 + 1
    assert len(ticks) == periods, ticks
    assert len(ticks) >= 5, f"only {len(ticks)} ticks in ~6s\n{cluster.logs()}"
    assert all(t % 1000 == 0 for t in ticks)
    assert len({r["pid"] for r in runs}) >= 1


def test_a_killed_leader_is_replaced_without_repeating_a_tick(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, LOCK_TTL="1.5")
    try:
        cluster.start(3)
        wait_for(lambda: len(cluster.runs()) >= 2, 15, "two ticks")
        leader = wait_for(cluster.leader_pid, 5, "a scheduler leader")
        victim = next(p for p in cluster.procs if p.pid == leader)
        victim.kill()  # no chance to release the lock: the others wait for it to expire
        victim.wait()
        killed_at = time.time()
        wait_for(lambda: any(r["t"] > killed_at + 2.5 for r in cluster.runs()), 15, "ticks after the takeover")
        new_leader = wait_for(cluster.leader_pid, 5, "a new leader")
        assert new_leader != leader
    finally:
        cluster.stop()
    runs = cluster.runs()
    ids = [r["id"] for r in runs] + cluster.leftover()
    assert len(ids) == len(set(ids)), f"a tick ran twice: {Counter(ids).most_common(3)}"
    ticks = sorted(r["tick"] for r in runs)
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    # ticks missed while no one led are skipped, and the latest of them ran once on catch-up
    assert all(g >= 1000 for g in gaps) and max(gaps) <= 3000, gaps
