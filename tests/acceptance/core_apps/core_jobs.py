"""Jobs for the core acceptance tests (tests/acceptance/test_core_*.py).

The CLI imports this module as ``core_jobs:app`` (its folder is put on
PYTHONPATH); the tests import it as a package module and call
:func:`make_app` with their own database URL. Job names are explicit so both
see the same job types.

Every job records what it does as one JSON line appended to
``$CORE_OUT/events.log`` (one ``os.write`` on an O_APPEND file, so lines from
threads and processes never interleave). The tests count completions from that
file, never from worker logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from conveyor import App, Backoff, current_job

OUT_ENV = "CORE_OUT"


def record(event: str, **fields: Any) -> None:
    """Append one event line, tagged with the running job's id, attempt and process."""
    ctx = current_job()
    line = {
        "ev": event,
        "id": ctx.job.id if ctx else None,
        "attempt": ctx.attempt if ctx else None,
        "redelivery": ctx.redelivery if ctx else None,
        "pid": os.getpid(),
        "t": time.time(),
        **fields,
    }
    data = (json.dumps(line) + "\n").encode()
    fd = os.open(Path(os.environ[OUT_ENV]) / "events.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def make_app(url: str | None = None) -> SimpleNamespace:
    """A fresh App (``url`` or ``$CONVEYOR_BROKER_URL``) with every core job registered."""
    app = App(url)

    @app.job(name="core.flaky", max_attempts=3, backoff=Backoff(base=0.01, maximum=0.1))
    def flaky(n: int) -> None:
        """Fails (retryably) 30% of the time."""
        ctx = current_job()
        assert ctx is not None
        record("run", n=n)
        if random.random() < 0.3:
            raise ValueError(f"flaky failure of job {ctx.job.id} on attempt {ctx.attempt}")
        record("ok", n=n)

    @app.job(name="core.sleepy")
    def sleepy(seconds: float, label: str = "") -> None:
        """Sleeps (in a worker thread), recording when it starts and when it is done."""
        record("start", label=label)
        time.sleep(seconds)
        record("done", label=label)

    @app.job(name="core.record")
    def record_job(label: str) -> None:
        record("done", label=label)

    @app.job(name="core.urgent", priority=7)
    def urgent(label: str) -> None:
        record("done", label=label)

    @app.job(
        name="core.slow_async",
        timeout=0.3,
        max_attempts=2,
        backoff=Backoff(base=0.01, maximum=0.05),
    )
    async def slow_async(seconds: float) -> None:
        record("start")
        await asyncio.sleep(seconds)
        record("done")

    @app.job(name="core.gated", max_attempts=1)
    def gated(label: str) -> None:
        """Fails until the file ``$CORE_OUT/gate`` exists."""
        record("run", label=label)
        if not (Path(os.environ[OUT_ENV]) / "gate").exists():
            raise RuntimeError(f"gate closed for {label}")
        record("done", label=label)

    @app.job(name="core.stubborn")
    async def stubborn(label: str) -> None:
        """Ignores every cancellation (as a misbehaving library can) and never returns."""
        record("start", label=label)
        while True:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.05)

    return SimpleNamespace(
        app=app,
        flaky=flaky,
        sleepy=sleepy,
        record=record_job,
        urgent=urgent,
        slow_async=slow_async,
        gated=gated,
        stubborn=stubborn,
    )


_default = make_app()
app = _default.app
"""What the CLI loads: ``conveyor worker core_jobs:app``."""

not_an_app = {"this": "is a dict"}
"""For the CLI error tests: an attribute that is not a conveyor.App."""
