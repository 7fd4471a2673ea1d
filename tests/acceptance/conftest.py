"""Shared harness for the acceptance tests.

``core`` (used by tests/acceptance/test_core_*.py) gives each test its own
directory, SQLite database and event log, an in-process App on that database,
and helpers to run the real ``conveyor`` console script as subprocesses.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from .core_apps import core_jobs

T = TypeVar("T")

CORE_APPS = Path(__file__).parent / "core_apps"
# The console script installed next to the interpreter, as users run it.
# (``python -m conveyor.cli`` would do nothing: cli.py has no __main__ guard.)
CONVEYOR = str(Path(sys.executable).parent / "conveyor")
APP = "core_jobs:app"
ZERO = {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 0}
"""An empty queue, as :meth:`Core.depth` reports it."""


class Core:
    """One isolated conveyor installation: a database, an event log and processes."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.db = tmp_path / "q.db"
        self.url = f"sqlite:///{self.db}"  # tmp_path is absolute: sqlite:////tmp/...
        assert self.url.startswith("sqlite:////")
        self.out = tmp_path / "out"
        self.out.mkdir()
        self.log = self.out / "events.log"
        self.env = {
            **os.environ,
            "CONVEYOR_BROKER_URL": self.url,
            "CORE_OUT": str(self.out),
            "PYTHONPATH": os.pathsep.join(p for p in (str(CORE_APPS), os.environ.get("PYTHONPATH", "")) if p),
            "PYTHONUNBUFFERED": "1",
        }
        self.jobs = core_jobs.make_app(self.url)
        self.app = self.jobs.app
        self._procs: list[subprocess.Popen[str]] = []
        self._n = 0

    # -- subprocesses ---------------------------------------------------------
    def cli(self, *args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
        """Run ``conveyor ARGS`` in the test directory and return the finished process."""
        return subprocess.run(
            [CONVEYOR, *args],
            cwd=self.dir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def ok(self, *args: str, timeout: float = 20.0) -> str:
        """Run ``conveyor ARGS``, require exit code 0 and return stdout."""
        r = self.cli(*args, timeout=timeout)
        assert r.returncode == 0, f"conveyor {' '.join(args)} exited {r.returncode}:\n{r.stderr}"
        return r.stdout

    def start_worker(self, *args: str) -> subprocess.Popen[str]:
        """Start ``conveyor worker core_jobs:app ARGS`` in the background (stderr to a file)."""
        self._n += 1
        err = open(self.dir / f"worker{self._n}.log", "w+")  # noqa: SIM115 - closed by the Popen
        proc = subprocess.Popen(
            [CONVEYOR, "worker", APP, "--poll-interval", "0.05", *args],
            cwd=self.dir,
            env=self.env,
            stdout=err,
            stderr=subprocess.STDOUT,
            text=True,
        )
        proc.log_path = err.name  # type: ignore[attr-defined]
        err.close()
        self._procs.append(proc)
        return proc

    @staticmethod
    def output(proc: subprocess.Popen[str]) -> str:
        return Path(proc.log_path).read_text()  # type: ignore[attr-defined]

    def burst(self, *args: str, timeout: float = 30.0) -> subprocess.Popen[str]:
        """Run a ``--burst`` worker to the end; require exit code 0."""
        proc = self.start_worker("--burst", *args)
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"burst worker still running after {timeout}s:\n{self.output(proc)}")
        assert rc == 0, f"burst worker exited {rc}:\n{self.output(proc)}"
        return proc

    def stop(self, proc: subprocess.Popen[str], timeout: float = 10.0) -> int:
        """SIGTERM a worker and wait for it to exit; return its exit code."""
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"worker ignored SIGTERM for {timeout}s:\n{self.output(proc)}")

    def enqueue(self, job: str, *args: str) -> str:
        """``conveyor enqueue core_jobs:app JOB ARGS``; return the printed id."""
        out = self.ok("enqueue", APP, job, *args).strip()
        assert out and "\n" not in out, f"enqueue printed {out!r}, expected one id"
        return out

    def stats(self) -> dict[str, dict[str, Any]]:
        result: dict[str, dict[str, Any]] = json.loads(self.ok("stats", APP, "--json"))
        return result

    def depth(self, queue: str = "default", *, cli: bool = True) -> dict[str, int]:
        """ready/delayed/in_flight/dead of ``queue``: from ``conveyor stats --json``, or
        (``cli=False``, for reads that must be quick) from the in-process app."""
        if cli:
            found = self.stats()[queue]
            return {k: found[k] for k in ZERO}
        s = self.app.stats()[queue]
        return {k: getattr(s, k) for k in ZERO}

    def dlq(self, *args: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = json.loads(self.ok("dlq", "list", APP, "--json", *args))
        return result

    # -- side effects ---------------------------------------------------------
    def events(self, ev: str | None = None) -> list[dict[str, Any]]:
        """Events the jobs recorded, in order; only those named ``ev`` if given."""
        if not self.log.exists():
            return []
        lines = [json.loads(line) for line in self.log.read_text().splitlines() if line]
        return [e for e in lines if ev is None or e["ev"] == ev]

    def count(self, ev: str) -> Counter[str]:
        """How many ``ev`` events each job id recorded."""
        return Counter(e["id"] for e in self.events(ev))

    @staticmethod
    def wait_for(check: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
        """Poll ``check`` until it returns something truthy; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout}s waiting for {what}")
            time.sleep(interval)

    def close(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.app.close()


@pytest.fixture
def core(tmp_path: Path) -> Iterator[Core]:
    harness = Core(tmp_path)
    try:
        yield harness
    finally:
        harness.close()
