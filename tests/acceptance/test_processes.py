"""`conveyor worker --processes N`: supervision, restart after a crash, graceful stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.acceptance

HERE = Path(__file__).parent


def _env(tmp_path: Path) -> dict[str, str]:
    marks = tmp_path / "marks"
    marks.mkdir(exist_ok=True)
    return {
        **os.environ,
        "CONVEYOR_BROKER_URL": f"sqlite:///{tmp_path}/q.db",
        "MARKS_DIR": str(marks),
        "PYTHONPATH": str(HERE / "apps"),
    }


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conveyor", *args], env=env, capture_output=True,
                          text=True, timeout=60, check=False)


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(p) for p in out.stdout.split()]


def _wait(predicate: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_supervisor_restarts_a_killed_process_and_stops_gracefully(tmp_path: Path) -> None:
    env = _env(tmp_path)
    sup = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "worker", "marks:app", "--processes", "2", "-c", "2",
         "--poll-interval", "0.05", "--visibility-timeout", "2", "--shutdown-timeout", "10"],
        env=env, stderr=subprocess.PIPE, text=True,
    )
    try:
        _wait(lambda: len(_children(sup.pid)) == 2)
        first = _children(sup.pid)
        os.kill(first[0], signal.SIGKILL)
        _wait(lambda: len(_children(sup.pid)) == 2 and first[0] not in _children(sup.pid))
        for i in range(6):
            assert _cli("enqueue", "marks:app", "mark", "--args", f'["j{i}", 0.5]', env=env).returncode == 0
        marks = Path(env["MARKS_DIR"])
        _wait(lambda: len(list(marks.glob("*.started.*"))) >= 2)
        sup.send_signal(signal.SIGTERM)
        _, err = sup.communicate(timeout=30)
    finally:
        if sup.poll() is None:
            sup.kill()
    assert sup.returncode == 0
    assert "killed by SIGKILL; restarting" in err
    started = {p.name.split(".")[0] for p in marks.glob("*.started.*")}
    done = {p.name.split(".")[0] for p in marks.glob("*.done.*")}
    assert started == done  # every job that started finished before the processes exited
    stats = _cli("stats", "marks:app", "--json", env=env)
    import json

    s = json.loads(stats.stdout)["default"]
    assert s["in_flight"] == 0 and s["ready"] + len(done) == 6


def test_processes_with_burst_exit_when_done(tmp_path: Path) -> None:
    env = _env(tmp_path)
    for i in range(10):
        assert _cli("enqueue", "marks:app", "mark", "--args", f'["b{i}"]', env=env).returncode == 0
    done = _cli("worker", "marks:app", "--processes", "2", "--burst", env=env)
    assert done.returncode == 0, done.stderr
    assert len(list(Path(env["MARKS_DIR"]).glob("*.done.*"))) == 10
