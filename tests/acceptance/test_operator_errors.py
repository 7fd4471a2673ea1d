"""What operators see when something around the jobs is wrong, through the real ``conveyor`` script.

* a broker that cannot be reached: one line on stderr, exit code 69, for every command;
* a queue no live worker consumes: ``stats`` marks it, ``health`` warns;
* where a worker and ``stats`` really read and write: the absolute SQLite path;
* History on a broker that cannot hold it: an error naming the option, never a file in the cwd.
"""

from __future__ import annotations

import json
import socket
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from .conftest import APP, CONVEYOR, Core

pytestmark = pytest.mark.acceptance

OP_APP = "operator_jobs:app"
EXIT_UNAVAILABLE = 69


def free_port() -> int:
    """A local TCP port nothing listens on (bound, read and released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def one_error_line(r: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a failed command; fails on a traceback or any other output."""
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{r.stderr}"
    assert r.stdout == "", f"nothing belongs on stdout, got {r.stdout!r}"
    assert lines[0].startswith("Error: "), lines[0]
    return lines[0]


PORT = free_port()
UNREACHABLE: dict[str, tuple[str, list[str]]] = {
    "redis-closed-port": (f"redis://127.0.0.1:{PORT}/0", ["Redis", f"127.0.0.1:{PORT}", "refused"]),
    "postgres-closed-port": (f"postgresql://127.0.0.1:{PORT}/test", ["PostgreSQL", f"port {PORT}", "refused"]),
    "postgres-unknown-database": (
        "postgresql://127.0.0.1:5432/conveyor_no_such_db",
        ["PostgreSQL", 'database "conveyor_no_such_db" does not exist'],
    ),
    "postgres-unknown-role": (
        "postgresql://conveyor_no_such_role@127.0.0.1:5432/test",
        ["PostgreSQL", 'role "conveyor_no_such_role" does not exist'],
    ),
}
COMMANDS: dict[str, list[str]] = {
    "stats": ["stats", OP_APP],
    "stats-json": ["stats", OP_APP, "--json"],
    "dlq-list": ["dlq", "list", OP_APP],
    "worker": ["worker", OP_APP, "--burst"],
    "worker-processes": ["worker", OP_APP, "--processes", "2"],
    "enqueue": ["enqueue", OP_APP, "op.record", "--args", '["x"]'],
    "health": ["health", OP_APP],
    "migrate": ["migrate", OP_APP],
    "jobs": ["jobs", OP_APP],
}
# ``jobs`` reads only the history store; on Redis that is a SQLite file here, which works.
CASES = [(c, b) for c in COMMANDS for b in UNREACHABLE if not (c == "jobs" and b.startswith("redis"))]


@pytest.mark.integration
@pytest.mark.parametrize(("command", "broker"), CASES)
def test_an_unreachable_broker_gives_one_line_and_exit_code_69(core: Core, command: str, broker: str) -> None:
    url, fragments = UNREACHABLE[broker]
    core.env["CONVEYOR_BROKER_URL"] = url
    if url.startswith("redis"):
        core.env["OPERATOR_HISTORY_URL"] = f"sqlite:///{core.dir / 'history.db'}"
    r = core.cli(*COMMANDS[command], timeout=60)
    line = one_error_line(r)
    for fragment in fragments:
        assert fragment.lower() in line.lower(), f"{fragment!r} not in {line!r}"
    assert r.returncode == EXIT_UNAVAILABLE, f"exit code {r.returncode}: {line}"


@pytest.mark.integration
def test_an_unreachable_broker_error_never_shows_the_password(core: Core) -> None:
    core.env["CONVEYOR_BROKER_URL"] = f"redis://user:s3cr3t-pw@127.0.0.1:{free_port()}/0"
    r = core.cli("stats", APP)
    line = one_error_line(r)
    assert "s3cr3t-pw" not in line and "user:***@127.0.0.1" in line
    assert r.returncode == EXIT_UNAVAILABLE


def test_a_sqlite_file_that_cannot_be_opened_gives_one_line_and_exit_code_69(core: Core) -> None:
    (core.dir / "a-directory.db").mkdir()
    core.env["CONVEYOR_BROKER_URL"] = "sqlite:///a-directory.db"
    r = core.cli("stats", APP)
    line = one_error_line(r)
    assert f"SQLite broker at sqlite:///{(core.dir / 'a-directory.db').resolve()}" in line, line
    assert "unable to open database file" in line
    assert r.returncode == EXIT_UNAVAILABLE


# -- queues no live worker consumes ------------------------------------------------------------


def start_worker(core: Core, app: str) -> subprocess.Popen[str]:
    """``conveyor worker APP`` in the background, killed by the harness at the end."""
    core._n += 1
    log = core.dir / f"worker{core._n}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [CONVEYOR, "worker", app, "--poll-interval", "0.05"],
            cwd=core.dir, env=core.env, stdout=out, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    proc.log_path = str(log)  # type: ignore[attr-defined]
    core._procs.append(proc)
    return proc


def stats_json(core: Core, app: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = json.loads(core.ok("stats", app, "--json"))
    return found


def test_stats_marks_a_queue_no_live_worker_consumes(core: Core) -> None:
    core.ok("enqueue", OP_APP, "op.record", "--args", '["a"]', "--queue", "bulk")
    worker = start_worker(core, OP_APP)
    found = core.wait_for(
        lambda: (s := stats_json(core, OP_APP)) and s["default"]["consumers"] == 1 and s,
        30,
        "the worker's heartbeat in stats",
    )
    assert found["bulk"]["consumers"] == 0 and found["bulk"]["ready"] == 1
    table = core.ok("stats", OP_APP)
    [bulk_row] = [line for line in table.splitlines() if line.lstrip("│ ").startswith("bulk ")]
    assert "none" in bulk_row
    assert "no live worker consumes bulk" in table
    core.stop(worker)
    # A stopped worker consumes nothing any more.
    after = stats_json(core, OP_APP)
    assert after["default"]["consumers"] == 0


def test_stats_without_the_worker_registry_says_consumers_are_unknown(core: Core) -> None:
    core.enqueue("core.record", "--args", '["a"]', "--queue", "bulk")
    found = stats_json(core, APP)
    assert found["bulk"]["consumers"] is None
    table = core.ok("stats", APP)
    [bulk_row] = [line for line in table.splitlines() if line.lstrip("│ ").startswith("bulk ")]
    assert "unknown" in bulk_row
    assert "live consumers are unknown" in table and "History" in table


def test_health_warns_about_ready_jobs_no_live_worker_consumes(core: Core) -> None:
    core.ok("enqueue", OP_APP, "op.record", "--args", '["a"]', "--queue", "bulk")
    worker = start_worker(core, OP_APP)
    core.wait_for(lambda: stats_json(core, OP_APP)["default"]["consumers"] == 1, 30, "the worker's heartbeat")
    r = core.cli("health", OP_APP, "--json", "--fail-on", "warning")
    report = json.loads(r.stdout)
    results = [x for x in report["results"] if x["check"] == "unconsumed_queue"]
    [bulk] = [x for x in results if x["status"] == "warning"]
    assert bulk["labels"] == {"queue": "bulk"}
    assert "1 ready job" in bulk["message"] and "no live worker consumes" in bulk["message"]
    assert r.returncode == 1
    core.stop(worker)


# -- where the SQLite database really is -------------------------------------------------------


def test_worker_start_up_line_names_queues_and_the_absolute_sqlite_path(core: Core) -> None:
    core.env["CONVEYOR_BROKER_URL"] = "sqlite:///relative.db"
    proc = core.burst("-q", "default", "-q", "bulk")
    log = core.output(proc)
    absolute = f"sqlite:///{(core.dir / 'relative.db').resolve()}"
    [line] = [x for x in log.splitlines() if "started: consuming queues" in x]
    assert "consuming queues default, bulk" in line and f"from {absolute}" in line, line


def test_stats_prints_the_absolute_sqlite_path(core: Core) -> None:
    core.env["CONVEYOR_BROKER_URL"] = "sqlite:///relative.db"
    table = core.ok("stats", APP)
    assert f"broker: sqlite:///{(core.dir / 'relative.db').resolve()}" in table


# -- where History writes ----------------------------------------------------------------------


@pytest.mark.integration
def test_history_on_redis_without_a_store_url_is_an_error_naming_the_option(core: Core) -> None:
    core.env["CONVEYOR_BROKER_URL"] = f"redis://127.0.0.1:6379/0?prefix=op-{uuid.uuid4().hex[:8]}"
    core.env.pop("OPERATOR_HISTORY_URL", None)
    r = core.cli("stats", OP_APP)
    line = one_error_line(r)
    assert "History(url=" in line and "redis://" in line, line
    assert r.returncode not in (0, EXIT_UNAVAILABLE)
    assert not list(Path(core.dir).glob("*history*.db")), "History wrote a file in the working directory"
