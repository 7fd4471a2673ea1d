"""1,000 flaky jobs through one burst worker: every job ends completed or dead, exactly once."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import Core

pytestmark = pytest.mark.acceptance

TOTAL = 1000
VIA_CLI = 20  # one process (~0.3 s of CPU) each: enough to mix producers, cheap enough
SINGLE = 50  # sent one by one through JobFunction.send
MAX_ATTEMPTS = 3


def test_core_flaky_thousand(core: Core) -> None:
    flaky = core.jobs.flaky
    # Producers: the CLI (one process per job, a few at a time), single sends and batches.
    with ThreadPoolExecutor(4) as pool:
        cli_ids = list(pool.map(lambda n: core.enqueue("core.flaky", "--args", f"[{n}]"), range(VIA_CLI)))
    single_ids = [flaky.send(n) for n in range(VIA_CLI, VIA_CLI + SINGLE)]
    batch_ids: list[str] = []
    for start in range(VIA_CLI + SINGLE, TOTAL, 300):
        batch = [flaky.message(n) for n in range(start, min(start + 300, TOTAL))]
        batch_ids += core.app.send_jobs(batch)
    sent = cli_ids + single_ids + batch_ids
    assert len(sent) == len(set(sent)) == TOTAL
    assert core.stats()["default"]["ready"] == TOTAL

    core.burst("-c", "8", timeout=60)

    runs = core.count("run")
    oks = core.count("ok")
    duplicates = {i: n for i, n in oks.items() if n > 1}
    assert not duplicates, f"jobs that ran to success more than once: {duplicates}"
    assert set(runs) == set(sent), "a job never ran, or something ran that was not sent"

    # Attempts seen by the handler run 1, 2, ... with no gap or repeat.
    attempts: dict[str, list[int]] = {}
    for e in core.events("run"):
        attempts.setdefault(e["id"], []).append(e["attempt"])
    bad = {i: a for i, a in attempts.items() if sorted(a) != list(range(1, len(a) + 1))}
    assert not bad, f"jobs whose attempt numbers are not 1..n: {dict(list(bad.items())[:5])}"
    assert max(len(a) for a in attempts.values()) > 1, "no job was retried"
    assert all(len(a) <= MAX_ATTEMPTS for a in attempts.values())

    completed = set(oks)
    dead_ids = set(sent) - completed
    assert all(len(attempts[i]) == MAX_ATTEMPTS for i in dead_ids), (
        "a job that never succeeded was given up before its last attempt"
    )

    stats = core.stats()
    dlq = core.dlq("--queue", "default")
    assert stats["default"]["dead"] == len(dlq)
    assert {k: stats["default"][k] for k in ("ready", "delayed", "in_flight")} == {
        "ready": 0,
        "delayed": 0,
        "in_flight": 0,
    }
    assert len(completed) + len(dlq) == TOTAL
    assert {d["id"] for d in dlq} == dead_ids

    # ~2.7% (0.3 ** 3) of the jobs fail three times: none at all would be a ~1e-12 fluke.
    assert dlq, "no job exhausted its attempts; the DLQ checks below would be vacuous"
    reasons = Counter(d["reason"] for d in dlq)
    assert reasons == Counter({"max_attempts_exceeded": len(dlq)}), reasons
    for d in dlq:
        assert d["attempts"] == MAX_ATTEMPTS, d
        assert d["error_type"] == "ValueError", d
        assert d["error_message"] == (f"flaky failure of job {d['id']} on attempt {MAX_ATTEMPTS}"), (
            "the DLQ entry must carry the last attempt's error"
        )
        assert d["type"] == "core.flaky"
