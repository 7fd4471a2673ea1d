"""Dead-letter ids through the real ``conveyor`` console script: whole ids in ``dlq list``,
unique prefixes wherever a job id is taken, and ``dlq retry --all`` in the history."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.acceptance

CONVEYOR = str(Path(sys.executable).parent / "conveyor")
APP = "dlq_jobs:app"
APP_SOURCE = """
from conveyor import App
from conveyor.history import History

app = App(extensions=[History(flush_interval=0.05)])


@app.job(name="dlq.fail", max_attempts=1)
def fail(n):
    raise RuntimeError(f"job {n} always fails")
"""


class Harness:
    """A directory with the app module and its SQLite databases; runs ``conveyor``."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        (tmp_path / "dlq_jobs.py").write_text(textwrap.dedent(APP_SOURCE))
        self.env = {
            **os.environ,
            "CONVEYOR_BROKER_URL": f"sqlite:///{tmp_path / 'q.db'}",
            "PYTHONPATH": os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH", "")) if p),
            "COLUMNS": "80",
        }

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CONVEYOR, *args], cwd=self.dir, env=self.env, capture_output=True, text=True, timeout=60
        )

    def ok(self, *args: str) -> str:
        r = self.cli(*args)
        assert r.returncode == 0, f"conveyor {' '.join(args)} exited {r.returncode}:\n{r.stderr}"
        return r.stdout

    def error(self, *args: str) -> str:
        """Run a command that must fail with a one-line error (no traceback); return the line."""
        r = self.cli(*args)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1, r.stderr
        return lines[0]

    def dead_letters(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = json.loads(self.ok("dlq", "list", APP, "--json"))
        return found

    def bury(self, n: int) -> list[str]:
        """Enqueue ``n`` jobs that always fail and run a burst worker: ``n`` dead letters."""
        ids = [self.ok("enqueue", APP, "dlq.fail", "--args", json.dumps([i])).strip() for i in range(n)]
        r = subprocess.run(
            [CONVEYOR, "worker", APP, "--burst", "--poll-interval", "0.05"],
            cwd=self.dir, env=self.env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert sorted(d["id"] for d in self.dead_letters()) == sorted(ids)
        return ids


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    yield Harness(tmp_path)


def unique_prefix(job_id: str, others: list[str]) -> str:
    """The shortest prefix of ``job_id`` that no other id starts with."""
    for n in range(1, len(job_id)):
        if not any(o != job_id and o.startswith(job_id[:n]) for o in others):
            return job_id[:n]
    return job_id


def common_prefix(ids: list[str]) -> str:
    """The longest prefix every id shares (character by character, not path components)."""
    n = 0
    while all(len(i) > n and i[n] == ids[0][n] for i in ids):
        n += 1
    return ids[0][:n]


def test_dlq_list_prints_whole_ids_in_an_80_column_terminal(h: Harness) -> None:
    ids = h.bury(2)
    table = h.ok("dlq", "list", APP)
    for job_id in ids:
        assert job_id in table, f"{job_id} is cut in:\n{table}"


def test_dlq_retry_and_purge_take_a_unique_id_prefix(h: Harness) -> None:
    ids = h.bury(3)
    assert h.ok("dlq", "retry", APP, unique_prefix(ids[0], ids)).strip() == "retried 1 dead letter"
    assert h.ok("dlq", "purge", APP, unique_prefix(ids[1], ids), ids[1]).strip() == "purged 1 dead letter"
    assert [d["id"] for d in h.dead_letters()] == [ids[2]]
    assert h.ok("dlq", "retry", APP, ids[2]).strip() == "retried 1 dead letter"  # a whole id still works
    assert h.dead_letters() == []


def test_an_ambiguous_or_unknown_dead_letter_id_is_a_clear_error_and_nothing_changes(h: Harness) -> None:
    ids = h.bury(3)
    shared = common_prefix(ids)
    assert len(shared) >= 4, ids  # UUIDv7 ids made within the same minute share their time prefix
    for command in ("retry", "purge"):
        line = h.error("dlq", command, APP, shared)
        assert f"{shared!r} matches several dead letters" in line
        assert all(job_id in line for job_id in ids), line
        line = h.error("dlq", command, APP, ids[0], "zzzz")
        assert "no dead letter has the id (or id prefix) 'zzzz'" in line
    assert sorted(d["id"] for d in h.dead_letters()) == sorted(ids)


def test_conveyor_job_with_an_ambiguous_prefix_lists_the_candidates(h: Harness) -> None:
    ids = h.bury(2)
    line = h.error("job", APP, common_prefix(ids))
    assert "matches several jobs" in line and all(job_id in line for job_id in ids), line
    assert json.loads(h.ok("job", APP, unique_prefix(ids[1], ids), "--json"))["job"]["id"] == ids[1]


def test_dlq_retry_all_is_recorded_in_history_like_a_retry_by_id(h: Harness) -> None:
    ids = h.bury(3)
    assert h.ok("dlq", "retry", APP, ids[0]).strip() == "retried 1 dead letter"
    assert h.ok("dlq", "retry", APP, "--all").strip() == "retried 2 dead letters"
    timelines = {job_id: json.loads(h.ok("job", APP, job_id, "--json")) for job_id in ids}
    for job_id, timeline in timelines.items():  # no worker has run them again yet
        assert timeline["job"]["state"] == "enqueued", (job_id, timeline["job"])
        assert [e["kind"] for e in timeline["events"]][-1] == "manual_retry", timeline["events"]
    shape = {tuple(e["kind"] for e in t["events"]) for t in timelines.values()}
    assert len(shape) == 1, shape  # --all records exactly what a retry by id records
