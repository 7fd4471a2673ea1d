"""Helpers for testing your jobs without a broker server.

app = conveyor.testing.memory_app()
...register jobs on app...
with capture_signals(app) as events:
    my_job.send(1)
    run_until_idle(app)
assert [e.name for e in events if e.name == "job.completed"]
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from .app import App
from .signals import Event, Signal
from .worker import Worker, WorkerConfig, WorkerResult


def memory_app() -> App:
    """An :class:`App` on a fresh in-memory broker."""
    return App("memory://")


def run_until_idle(app: App, queues: Iterable[str] = (), concurrency: int = 4, **options: float) -> WorkerResult:
    """Run a burst worker until no ready job and no pending retry remains.

    Retries use each job's backoff, so give test jobs a short one. Extra
    keyword options go to :class:`~conveyor.WorkerConfig`.
    """
    return asyncio.run(run_until_idle_async(app, queues, concurrency, **options))


async def run_until_idle_async(
    app: App, queues: Iterable[str] = (), concurrency: int = 4, **options: float
) -> WorkerResult:
    """Async form of :func:`run_until_idle`."""
    config = WorkerConfig(
        queues=tuple(queues),
        concurrency=concurrency,
        burst=True,
        **options,  # type: ignore[arg-type]
    )
    return await Worker(app, config).run()


class CapturedSignals(list[Event]):
    """The events captured so far, in order; filter with :meth:`named`."""

    def named(self, name: str) -> list[Event]:
        return [e for e in self if e.name == name]


@contextmanager
def capture_signals(app: App, signals: Iterable[Signal | str] | None = None) -> Iterator[CapturedSignals]:
    """Collect events emitted on ``app``'s bus (all, or only ``signals``) while inside."""
    captured = CapturedSignals()
    lock = threading.Lock()

    def sink(event: Event) -> None:
        with lock:
            captured.append(event)

    sub = app.bus.subscribe(sink, signals)
    try:
        yield captured
    finally:
        sub.cancel()
