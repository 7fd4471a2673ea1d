"""`conveyor demo`: what it tells the user about a busy port and about inspecting its database."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.demo.jobs import make_app
from conveyor.demo.runner import inspect_hint

ROOT = Path(__file__).resolve().parents[2]


def run_hint_command(line: str, cwd: Path) -> str:
    """Run one command line of the hint (``[VAR=value ...] conveyor ARGS``) as a user would."""
    words = shlex.split(line)
    env = dict(os.environ)
    while "=" in words[0]:
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    assert words[0] == "conveyor", line
    done = subprocess.run(
        [sys.executable, "-m", "conveyor", *words[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_closing_stats_hint_reads_the_database_given_with_db(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'my demo.db'}"
    app = make_app(url)
    send_email = app.demo_jobs[0]  # type: ignore[attr-defined]
    for i in range(3):
        send_email.send(f"user{i}@example.com", "Hi")
    app.close()
    hint = inspect_hint(url)
    stats_line = next(line for line in hint.splitlines() if " stats " in line)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.delenv("CONVEYOR_DEMO_URL", raising=False)
    shown = json.loads(run_hint_command(stats_line.strip() + " --json", elsewhere))
    assert shown["emails"]["ready"] == 3


def test_the_default_database_needs_no_variable() -> None:
    assert inspect_hint("sqlite:///conveyor-demo.db").splitlines()[1:] == [
        "  conveyor stats conveyor.demo.app:app",
        "  conveyor dlq list conveyor.demo.app:app",
    ]


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_a_demo_on_a_busy_port_says_how_to_choose_another_and_where_its_database_is(
    tmp_path: Path, busy_port: int
) -> None:
    db = tmp_path / "other.db"
    env = {k: v for k, v in os.environ.items() if k != "CONVEYOR_DEMO_URL"}
    done = subprocess.run(
        [sys.executable, "-m", "conveyor", "demo", "--duration", "1", "--db", str(db),
         "--dashboard-port", str(busy_port)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"dashboard: cannot listen on port {busy_port}" in out
    assert "choose another port with `conveyor demo --dashboard-port 8000` (`make demo PORT=8000`)" in out
    assert f"  CONVEYOR_DEMO_URL=sqlite:///{db} conveyor stats conveyor.demo.app:app\n" in out
    assert f"  CONVEYOR_DEMO_URL=sqlite:///{db} conveyor dlq list conveyor.demo.app:app\n" in out


def test_make_demo_passes_port_to_the_dashboard() -> None:
    make = shutil.which("make")
    assert make is not None, "make is needed to check the Makefile"
    # -n prints the recipe without running anything; the venv stamp is taken as up to date.
    # Under `make test` the parent make's MAKEFLAGS/MAKELEVEL would add "Entering directory" lines.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    done = subprocess.run(
        [make, "-n", "--no-print-directory", "-o", ".venv/.core", "demo", "PORT=8001", "DURATION=5"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == ".venv/bin/conveyor demo --duration 5 --dashboard-port 8001"
