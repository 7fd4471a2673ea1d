"""``conveyor worker --metrics-port/--log-format json``: run as a real process and scrape it."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conveyor import App
from conveyor import signals as sig
from conveyor.telemetry import JsonFormatter, Telemetry
from conveyor.telemetry.cli import (
    ensure_telemetry,
    mark_worker_process_dead,
    prepare_multiprocess_metrics,
    setup_worker_telemetry,
)

APP_SOURCE = textwrap.dedent('''
    import logging, os
    from conveyor import App
    from conveyor.telemetry import Telemetry

    telemetry = Telemetry() if os.environ.get("WITH_TELEMETRY") else None
    app = App(os.environ["CONVEYOR_BROKER_URL"], telemetry=telemetry)

    @app.job(name="work")
    def work(n: int) -> None:
        logging.getLogger("obsapp").info("working on %d", n)
''')
JOB = {"job_type": "work", "queue": "default"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def conveyor_cli() -> list[str]:
    exe = Path(sys.executable).with_name("conveyor")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "conveyor"]


def samples(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
        text = resp.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def wait_for(port: int, name: str, labels: dict[str, str], value: float,
             proc: subprocess.Popen[bytes], timeout: float = 30) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    deadline = time.monotonic() + timeout
    last: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    while time.monotonic() < deadline:
        assert proc.poll() is None, "worker exited early"
        try:
            last = samples(port)
        except OSError:
            time.sleep(0.1)
            continue
        if last.get((name, frozenset(labels.items()))) == value:
            return last
        time.sleep(0.1)
    raise AssertionError(f"{name}{labels} never reached {value}; last scrape: {last}")


@pytest.fixture
def project(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    (tmp_path / "obsapp.py").write_text(APP_SOURCE)
    url = f"sqlite:///{tmp_path}/jobs.db"
    env = {**os.environ, "CONVEYOR_BROKER_URL": url}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    sender = App(url)

    @sender.job(name="work")
    def work(n: int) -> None:
        pass

    sender.send_batch([work.message(n) for n in range(20)])
    sender.close()
    yield tmp_path, env


def start(project: tuple[Path, dict[str, str]], *args: str, **env: str) -> subprocess.Popen[bytes]:
    """Start a worker; its stderr goes to ``worker.log`` (a pipe could fill up and block it)."""
    cwd, base = project
    with open(cwd / "worker.log", "wb") as log:
        return subprocess.Popen([*conveyor_cli(), "worker", "obsapp:app", *args], cwd=cwd,
                                env={**base, **env}, stdout=subprocess.DEVNULL, stderr=log)


def stop(proc: subprocess.Popen[bytes], cwd: Path) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    return proc.returncode, (cwd / "worker.log").read_text()


def test_metrics_port_serves_the_standard_set_until_sigterm(project: tuple[Path, dict[str, str]]) -> None:
    port = free_port()
    proc = start(project, "--metrics-port", str(port))
    try:
        found = wait_for(port, "conveyor_jobs_completed_total", JOB, 20.0, proc)
    finally:
        code, err = stop(proc, project[0])
    assert code == 0, err
    assert found[("conveyor_job_duration_seconds_count", frozenset(JOB.items()))] == 20.0
    assert found[("conveyor_workers", frozenset())] == 1.0
    assert found[("conveyor_jobs_in_progress", frozenset(JOB.items()))] == 0.0
    assert f"serving Prometheus metrics on http://127.0.0.1:{port}/metrics" in err


def test_json_log_format_in_burst_mode(project: tuple[Path, dict[str, str]]) -> None:
    proc = start(project, "--burst", "--log-format", "json", "--metrics-port", str(free_port()))
    proc.wait(timeout=60)
    err = (project[0] / "worker.log").read_text()
    assert proc.returncode == 0, err
    lines = [json.loads(x) for x in err.splitlines() if x.startswith("{")]
    mine = [x for x in lines if x["logger"] == "obsapp"]
    assert len(mine) == 20
    assert all(x["job_type"] == "work" and x["job_id"] and x["attempt"] == 1 for x in mine)
    completed = [x for x in lines if x.get("signal") == "job.completed"]
    assert {x["job_id"] for x in completed} == {x["job_id"] for x in mine}


def test_processes_serve_the_sum_of_all_workers(project: tuple[Path, dict[str, str]]) -> None:
    port = free_port()
    proc = start(project, "--processes", "2", "--metrics-port", str(port), WITH_TELEMETRY="1")
    try:
        found = wait_for(port, "conveyor_jobs_completed_total", JOB, 20.0, proc)
        found = wait_for(port, "conveyor_workers", {}, 2.0, proc)
    finally:
        code, err = stop(proc, project[0])
    assert code == 0, err
    assert found[("conveyor_jobs_completed_total", frozenset(JOB.items()))] == 20.0


@pytest.fixture
def clean_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in root.handlers[:]:
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)


def test_setup_installs_the_default_set_exactly_once(clean_logging: None) -> None:
    app = App("memory://")
    server = setup_worker_telemetry(app, log_format="json", metrics_port=0)
    assert server is not None
    try:
        telemetry = app.telemetry
        assert isinstance(telemetry, Telemetry)
        assert ensure_telemetry(app) is telemetry
        assert len(app.middleware) == 1
        app.emit(sig.JOB_ENQUEUED, job_id="1", job_type="t", queue="q", priority=0, delay=0.0)
        found = samples(server.port)
        assert found[("conveyor_jobs_enqueued_total", frozenset({"job_type": "t", "queue": "q"}.items()))] == 1.0
    finally:
        server.close()


def test_setup_keeps_the_apps_own_telemetry(clean_logging: None) -> None:
    own = Telemetry(metrics=[])
    app = App("memory://", telemetry=own)
    assert setup_worker_telemetry(app, log_format="json") is None
    assert app.telemetry is own
    assert len(app.middleware) == 1
    assert isinstance(logging.getLogger().handlers[-1].formatter, JsonFormatter)


def test_a_dead_worker_process_live_gauges_are_dropped(tmp_path: Path) -> None:
    env: dict[str, str] = {}
    server = prepare_multiprocess_metrics(env, "127.0.0.1", 0)
    try:
        directory = Path(env["PROMETHEUS_MULTIPROC_DIR"])
        child = subprocess.run(
            [sys.executable, "-c",
             "import os; from conveyor import App; from conveyor.telemetry import Telemetry;"
             "app = App('memory://', telemetry=Telemetry(tracing=False, logs=None));"
             "from conveyor import signals as s; app.emit(s.WORKER_STARTED, worker_id='w',"
             " queues='q', concurrency=1, host='h', pid=os.getpid()); print(os.getpid())"],
            env={**os.environ, **env}, capture_output=True, text=True, check=True,
        )
        pid = int(child.stdout)
        assert samples(server.port)[("conveyor_workers", frozenset())] == 1.0
        assert list(directory.glob(f"gauge_livesum_{pid}.db"))
        mark_worker_process_dead(pid, env)
        assert not list(directory.glob(f"gauge_livesum_{pid}.db"))
        assert samples(server.port).get(("conveyor_workers", frozenset())) in (None, 0.0)
    finally:
        server.close()
