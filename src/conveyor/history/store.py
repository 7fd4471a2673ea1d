"""The job-history store API: typed records and the abstract :class:`HistoryStore`.

The CLI, the health monitor and the dashboard read history only through this
module. Times are Unix epoch seconds (``float``), as everywhere in conveyor.
Window arguments (:data:`When`) also take a ``datetime`` or a ``timedelta``
meaning "that long before now".

Every method is synchronous and thread-safe; from async code call them with
``await asyncio.to_thread(store.method, ...)``.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

When = float | datetime | timedelta
"""A point in time: epoch seconds, a ``datetime``, or a ``timedelta`` before now."""

#: Job states as recorded in history.
ENQUEUED, SCHEDULED, RUNNING, FAILED, RETRYING, COMPLETED, DEAD = (
    "enqueued",
    "scheduled",
    "running",
    "failed",
    "retrying",
    "completed",
    "dead",
)
STATES = (ENQUEUED, SCHEDULED, RUNNING, FAILED, RETRYING, COMPLETED, DEAD)

#: Event kinds of a job's timeline (a job state, or one of these). ``lease_lost``: the
#: worker running an attempt lost its lease (another worker may run the job).
STARTED, MANUAL_RETRY, LEASE_LOST = "started", "manual_retry", "lease_lost"
EVENT_KINDS = (ENQUEUED, SCHEDULED, STARTED, COMPLETED, FAILED, RETRYING, DEAD, MANUAL_RETRY, LEASE_LOST)

#: ``stop_reason`` of a worker the monitor marked lost: it stopped heartbeating without
#: stopping and every job it was running has been rescued. A heartbeat revives it.
LOST = "lost"

_SAME_START = 1.0
"""Seconds between a worker's own start time of a job and history's that still mean the same attempt."""

#: Attempt outcomes. ``lost``: the worker disappeared (its lease expired or it shut down),
#: or it reported that it lost the attempt's lease.
OUTCOMES = ("running", "completed", "failed", "lost")


def epoch(when: When | None, now: float | None = None) -> float | None:
    """``when`` as epoch seconds (``None`` stays ``None``)."""
    if when is None:
        return None
    if isinstance(when, timedelta):
        return (time.time() if now is None else now) - when.total_seconds()
    if isinstance(when, datetime):
        return when.timestamp()
    return float(when)


@dataclass(frozen=True, slots=True)
class ErrorRecord:
    """A recorded failure: exception type, message, traceback and its cluster fingerprint."""

    type: str
    message: str
    traceback: str = ""
    fingerprint: str = ""


@dataclass(frozen=True, slots=True)
class Change:
    """One job transition to record (built by the History extension from a signal)."""

    kind: str
    """One of :data:`EVENT_KINDS`."""
    job_id: str
    job_type: str
    queue: str
    at: float
    attempt: int = 0
    worker_id: str = ""
    priority: int = 0
    delay: float = 0.0
    redelivery: str = ""
    duration: float | None = None
    error: ErrorRecord | None = None
    reason: str = ""
    """Why a job went dead; for ``lease_lost``, what detected it (``extend`` or ``ack``)."""
    counts_as_failure: bool = False
    """For ``dead``: the job died without a failed attempt (unknown type, lost too often...)."""


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A job's current state and its latest attempt, as history knows them."""

    id: str
    type: str
    queue: str
    state: str
    attempts: int
    """Attempt number of the latest delivery (it restarts at 1 after a manual retry)."""
    enqueued_at: float | None
    scheduled_at: float | None
    started_at: float | None
    """Start of the latest attempt."""
    finished_at: float | None
    """When the job completed or went dead."""
    updated_at: float
    worker_id: str
    """Worker of the latest attempt."""
    error: ErrorRecord | None
    """The latest failure, if any."""
    dead_reason: str = ""
    priority: int = 0


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One delivery of a job to a worker."""

    job_id: str
    attempt: int
    worker_id: str
    started_at: float
    finished_at: float | None
    duration: float | None
    outcome: str
    """One of :data:`OUTCOMES`."""
    redelivery: str
    """Why this was a redelivery: ``""``, ``lease_expired``, ``worker_shutdown`` or ``manual_retry``."""
    error: ErrorRecord | None


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One state transition of a job."""

    job_id: str
    at: float
    kind: str
    """One of :data:`EVENT_KINDS`."""
    attempt: int
    worker_id: str
    detail: dict[str, Any]
    """Kind-specific data: ``delay``, ``redelivery``, ``reason``, ``duration``, ``error``..."""


@dataclass(frozen=True, slots=True)
class JobTimeline:
    """One job with every attempt and event, oldest first."""

    job: JobRecord
    attempts: list[AttemptRecord]
    events: list[EventRecord]


@dataclass(frozen=True, slots=True)
class FailureCount:
    """Finished attempts of one job type on one queue in a window (for failure-rate checks)."""

    job_type: str
    queue: str
    attempts: int
    """Attempts that finished in the window: completed + failed + lost."""
    failures: int
    """Failed + lost attempts."""
    completed: int
    lost: int
    dead: int
    """Jobs that went to the dead-letter queue in the window."""

    @property
    def failure_rate(self) -> float:
        return self.failures / self.attempts if self.attempts else 0.0


@dataclass(frozen=True, slots=True)
class Throughput:
    """Completed jobs of one type in a window."""

    job_type: str
    completed: int
    window: float
    """Window length in seconds."""
    avg_duration: float

    @property
    def per_minute(self) -> float:
        return self.completed * 60.0 / self.window if self.window > 0 else 0.0


@dataclass(frozen=True, slots=True)
class FailureCluster:
    """Failures sharing a fingerprint (same error shape, same code location, same job type)."""

    fingerprint: str
    job_type: str
    count: int
    """Failures in the window (failed attempts, plus jobs dead-lettered without running)."""
    jobs: int
    """Distinct jobs among them."""
    first_seen: float
    last_seen: float
    example_ids: list[str]
    """Up to five recent job ids."""
    error_type: str
    error_message: str
    """The most common message of the cluster."""
    pattern: str
    """The normalized message the fingerprint was built from."""
    dead: int = 0
    """Jobs of this cluster that are dead now (``dlq retry --cluster`` candidates)."""


@dataclass(frozen=True, slots=True)
class RetryLoopJob:
    """A job that started at least K attempts in a window."""

    job_id: str
    job_type: str
    queue: str
    attempts: int
    """Attempts started in the window."""
    state: str
    first_seen: float
    last_seen: float
    error: ErrorRecord | None
    """The error that repeats most among those attempts."""
    repeats: int
    """How many of the attempts failed with that error's fingerprint."""


@dataclass(frozen=True, slots=True)
class RetryLoopType:
    """The retry loops of one job type."""

    job_type: str
    jobs: int
    attempts: int
    max_attempts: int
    error: ErrorRecord | None
    """The error that repeats most across the type's looping jobs."""


@dataclass(frozen=True, slots=True)
class RetryLoops:
    """Result of :meth:`HistoryStore.retry_loops`."""

    min_attempts: int
    since: float
    jobs: list[RetryLoopJob]
    types: list[RetryLoopType]


@dataclass(frozen=True, slots=True)
class RunningJobRecord:
    """A job a worker was running at its last heartbeat (or has an unfinished attempt of)."""

    id: str
    type: str
    queue: str
    attempt: int
    since: float
    stuck: bool = False
    """A thread still runs this attempt past its timeout; the job was already settled."""
    replaced: bool = False
    """For a stuck attempt: a replacement thread serves in its place (else the worker is a thread short)."""


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    """A worker process as its heartbeats describe it."""

    id: str
    host: str
    pid: int
    queues: list[str]
    concurrency: int
    started_at: float
    last_heartbeat: float
    heartbeat_interval: float
    stopped_at: float | None = None
    stop_reason: str = ""
    rss_bytes: int | None = None
    cpu_percent: float | None = None
    jobs: list[RunningJobRecord] = field(default_factory=list)

    def stuck(self) -> list[RunningJobRecord]:
        """Attempts still running in threads past their timeout."""
        return [j for j in self.jobs if j.stuck]

    def threads_short(self) -> int:
        """Threads missing from ``concurrency``: stuck and not replaced (the capacity is reduced)."""
        return sum(1 for j in self.jobs if j.stuck and not j.replaced)

    def heartbeat_age(self, now: float | None = None) -> float:
        return max(0.0, (time.time() if now is None else now) - self.last_heartbeat)

    def status(self, now: float | None = None) -> str:
        """``running``, ``stopped``, or ``lost`` (marked lost, or no heartbeat for three intervals)."""
        if self.stopped_at is not None:
            return LOST if self.stop_reason == LOST else "stopped"
        return "lost" if self.heartbeat_age(now) > 3 * self.heartbeat_interval else "running"


class HistoryStore(ABC):
    """Where job history lives. Readers: CLI, monitor, dashboard; writer: the :class:`History` extension."""

    url: str

    # -- reading --------------------------------------------------------------
    @abstractmethod
    def list_jobs(
        self,
        *,
        state: str | None = None,
        job_type: str | None = None,
        queue: str | None = None,
        since: When | None = None,
        until: When | None = None,
        id_prefix: str | None = None,
        limit: int = 100,
    ) -> list[JobRecord]:
        """Jobs, most recently updated first; ``since``/``until`` bound the last update."""

    @abstractmethod
    def get_job(self, job_id: str) -> JobTimeline | None:
        """One job (full id, or an unambiguous prefix) with its attempts and events."""

    @abstractmethod
    def failure_counts(self, since: When, until: When | None = None) -> list[FailureCount]:
        """Attempts and failures per job type and queue, for attempts that finished in the window."""

    @abstractmethod
    def throughput(self, since: When, until: When | None = None) -> list[Throughput]:
        """Completed jobs per type in the window (``per_minute`` for drain ETAs)."""

    @abstractmethod
    def failure_clusters(self, since: When, until: When | None = None, limit: int = 50) -> list[FailureCluster]:
        """Failures grouped by fingerprint, biggest first."""

    @abstractmethod
    def dead_jobs_in_cluster(self, fingerprint: str) -> list[str]:
        """Ids of dead jobs whose last failure has ``fingerprint`` (or a unique prefix of it)."""

    @abstractmethod
    def retry_loops(self, min_attempts: int = 3, since: When = timedelta(hours=1)) -> RetryLoops:
        """Jobs (and their types) with at least ``min_attempts`` attempts started in the window."""

    @abstractmethod
    def workers(self, include_stopped: bool = True) -> list[WorkerRecord]:
        """Known workers, most recent heartbeat first."""

    @abstractmethod
    def worker_jobs(self, worker_id: str) -> list[RunningJobRecord]:
        """The jobs ``worker_id`` was last known to run: those of its last heartbeat plus
        its attempts that never finished (the answer to "what was it doing when it died?")."""

    def attempt_over(self, job: RunningJobRecord, worker_id: str) -> bool:
        """Whether history shows that ``worker_id``'s attempt of ``job`` is over: the attempt
        finished (or was marked lost when the job was delivered again), a later attempt
        started, or the job completed or went dead since. False when history does not know."""
        timeline = self.get_job(job.id)
        if timeline is None or timeline.job.id != job.id:  # unknown (get_job also takes prefixes)
            return False
        latest = timeline.job
        if latest.state in (COMPLETED, DEAD) and (latest.finished_at or 0.0) >= job.since:
            return True
        if latest.started_at is not None and latest.started_at > job.since + _SAME_START:
            return True
        return any(
            a.attempt == job.attempt and a.worker_id == worker_id and a.finished_at is not None
            for a in timeline.attempts
        )

    # -- writing (used by the History extension) -------------------------------
    @abstractmethod
    def record(self, changes: Sequence[Change]) -> None:
        """Apply a batch of changes, in order, in one transaction."""

    @abstractmethod
    def heartbeat(self, worker: WorkerRecord) -> None:
        """Insert or refresh a worker's row."""

    @abstractmethod
    def worker_stopped(self, worker_id: str, at: float, reason: str) -> None:
        """Mark a worker stopped."""

    @abstractmethod
    def worker_lost(self, worker_id: str, last_heartbeat: float, at: float) -> bool:
        """Mark a silent worker lost (stop reason :data:`LOST`) unless it was heard from after
        ``last_heartbeat`` or has stopped; True when marked. Its next heartbeat revives it."""

    @abstractmethod
    def manual_retry(self, job_ids: Sequence[str], at: float | None = None) -> None:
        """Record that dead jobs were sent back to their queues by hand."""

    @abstractmethod
    def prune(self, older_than: When | None = None, max_rows: int | None = None) -> int:
        """Delete jobs (with their attempts and events) last updated before ``older_than``,
        and all but the newest ``max_rows`` jobs; stopped or silent workers too. Returns jobs deleted."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""
