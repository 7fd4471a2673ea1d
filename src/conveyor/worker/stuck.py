"""Tells the user about worker threads stuck in a sync handler past its timeout: log lines and signals."""

from __future__ import annotations

import logging

from .. import signals as sig
from .executor import JobRef
from .threads import StuckThread

log = logging.getLogger("conveyor.worker")


class StuckReporter:
    """The ``on_stuck`` / ``on_returned`` / ``on_short`` callbacks of one worker's thread runner."""

    def __init__(self, bus: sig.Bus, worker_id: str, concurrency: int) -> None:
        self.bus, self.worker_id, self.concurrency = bus, worker_id, concurrency

    def _job(self, s: StuckThread[JobRef]) -> dict[str, object]:
        j = s.tag
        return {"job_id": j.id, "job_type": j.type, "queue": j.queue, "attempt": j.attempt, "worker_id": self.worker_id}

    def stuck(self, s: StuckThread[JobRef]) -> None:
        log.error(
            "thread %s is stuck in job %s (%s): still running %.1fs after it started, past its timeout;"
            " the job was settled and its result will be discarded%s",
            s.thread, s.tag.id, s.tag.type, s.running,
            "; a new thread took its place" if s.replaced else "",
        )  # fmt: skip
        self.bus.emit(
            sig.WORKER_THREAD_STUCK,
            **self._job(s), thread=s.thread, running=s.running, stuck=s.stuck, replaced=s.replaced,
        )  # fmt: skip

    def returned(self, s: StuckThread[JobRef]) -> None:
        log.warning(
            "stuck thread %s returned from job %s (%s) after %.1fs; its result was discarded",
            s.thread, s.tag.id, s.tag.type, s.running,
        )  # fmt: skip
        self.bus.emit(sig.WORKER_THREAD_RETURNED, **self._job(s), thread=s.thread, running=s.running, stuck=s.stuck)

    def short(self, s: StuckThread[JobRef]) -> None:
        threads = self.concurrency - s.short
        log.error(
            "worker %s capacity reduced: %d of %d threads serving jobs; stuck threads: %d, and the cap of"
            " replacement threads is reached",
            self.worker_id, threads, self.concurrency, s.stuck,
        )  # fmt: skip
        self.bus.emit(
            sig.WORKER_CAPACITY_REDUCED,
            worker_id=self.worker_id, concurrency=self.concurrency, threads=threads, stuck=s.stuck,
        )  # fmt: skip
