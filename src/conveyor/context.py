"""The job being run, visible to handlers, logs and middleware via a context variable."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

from .job import Job


@dataclass(frozen=True, slots=True)
class JobContext:
    """Where a handler runs: its job, this attempt and the worker."""

    job: Job
    worker_id: str
    redelivery: str = ""

    @property
    def attempt(self) -> int:
        return self.job.attempts


_current: ContextVar[JobContext | None] = ContextVar("conveyor_job", default=None)


def current_job() -> JobContext | None:
    """The context of the job running in this task or thread, or None outside a job."""
    return _current.get()
