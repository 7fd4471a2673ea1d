"""The worker registry heartbeat: a worker service that describes its worker every few seconds."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .store import RunningJobRecord, WorkerRecord

if TYPE_CHECKING:
    from ..app import App
    from ..worker import Worker
    from .extension import History

log = logging.getLogger("conveyor.history")


class ProcessSampler:
    """RSS and CPU% of this process (``None`` when psutil is not installed)."""

    def __init__(self) -> None:
        try:
            import psutil
        except ModuleNotFoundError:
            log.warning("history: psutil is not installed; workers are listed without RSS and CPU%%")
            self._proc = None
            return
        self._proc = psutil.Process(os.getpid())
        self._proc.cpu_percent(None)  # the first reading only sets the baseline

    def sample(self) -> tuple[int | None, float | None]:
        if self._proc is None:
            return None, None
        with self._proc.oneshot():
            return int(self._proc.memory_info().rss), float(self._proc.cpu_percent(None))


class WorkerHeartbeat:
    """Writes the worker's row (queues, concurrency, running jobs and stuck threads, RSS, CPU%) every
    ``heartbeat_interval`` seconds; the History extension marks it stopped at stop."""

    def __init__(self, history: History) -> None:
        self.history = history

    def __repr__(self) -> str:
        return f"WorkerHeartbeat(every {self.history.heartbeat_interval}s)"

    def record(self, worker: Worker, sampler: ProcessSampler) -> WorkerRecord:
        """A snapshot of ``worker`` now."""
        rss, cpu = sampler.sample()
        # Stuck threads first: a job of the same id running again describes its row in worker_jobs().
        jobs = [
            RunningJobRecord(t.tag.id, t.tag.type, t.tag.queue, t.tag.attempt, t.started_at, True, t.replaced)
            for t in worker.stuck_threads()
        ]
        jobs += [RunningJobRecord(j.id, j.type, j.queue, j.attempts, j.started_at) for j in worker.current_jobs()]
        return WorkerRecord(
            id=worker.id,
            host=socket.gethostname(),
            pid=os.getpid(),
            queues=list(worker.queues),
            concurrency=worker.config.concurrency,
            started_at=worker.started_at,
            last_heartbeat=time.time(),
            heartbeat_interval=self.history.heartbeat_interval,
            rss_bytes=rss,
            cpu_percent=cpu,
            jobs=jobs,
        )

    async def run(self, worker: Worker) -> None:
        sampler = await asyncio.to_thread(ProcessSampler)
        while True:
            try:
                record = self.record(worker, sampler)
                await asyncio.to_thread(self.history.store.heartbeat, record)
            except Exception:
                log.warning("history: worker heartbeat failed", exc_info=True)
            await asyncio.sleep(self.history.heartbeat_interval)


def queue_consumers(workers: Iterable[WorkerRecord], now: float | None = None) -> dict[str, list[str]]:
    """The ids of the live workers consuming each queue.

    Live: not stopped, and heard from within three heartbeat intervals (the
    ``running`` status of ``conveyor workers``). A queue no live worker consumes
    is absent from the result.
    """
    at = time.time() if now is None else now
    found: dict[str, list[str]] = {}
    for w in workers:
        if w.status(at) == "running":
            for q in w.queues:
                found.setdefault(q, []).append(w.id)
    return found


def live_consumers(app: App, queues: Iterable[str]) -> dict[str, int]:
    """How many live workers consume each of ``queues``, from the worker registry.

    Raises :class:`~conveyor.history.HistoryNotInstalled` without the History
    extension and :class:`~conveyor.history.HistoryUnavailable` when its
    database cannot be read: then nobody knows, and callers must say so.
    """
    from .extension import history_of

    consumers = queue_consumers(history_of(app).store.workers(include_stopped=False))
    return {q: len(consumers.get(q, ())) for q in queues}
