"""The ``unconsumed_queue`` check: ready jobs wait in a queue that no live worker consumes.

A job sent with ``options(queue="bulk")`` while every worker runs without
``-q bulk`` is otherwise silent: it is neither failed nor late by any other
measure until ``queue_latency`` trips. Live consumers come from the worker
registry (History's heartbeats carry each worker's queues).
"""

from __future__ import annotations

from ..history.workers import queue_consumers
from .alerts import WARNING
from .checks import OK, CheckResult, Inputs

NAME = "unconsumed_queue"


def unconsumed_queue(i: Inputs) -> list[CheckResult]:
    """A warning per queue holding ready jobs that no live worker consumes."""
    consumers = queue_consumers(i.workers, i.now)
    out = []
    for q, s in i.stats.items():
        if s.ready == 0 or consumers.get(q):
            continue
        served = ", ".join(sorted(consumers)) or "nothing"
        message = (
            f"queue {q}: {s.ready} ready job{'s' if s.ready != 1 else ''} (oldest {s.oldest_age_s:.0f}s)"
            f" and no live worker consumes it; live workers consume {served}"
        )
        out.append(CheckResult(NAME, WARNING, message, {"queue": q}, float(s.ready)))
    if out:
        return out
    return [CheckResult(NAME, OK, f"every queue with ready jobs has a live worker ({len(i.workers)} workers)")]
