"""How a batch of recorded changes updates the history tables (shared by SQLite and PostgreSQL).

A batch is folded in Python first: one job-row update per job, one attempt row
per attempt started in the batch (already finished if it ended in the batch),
one event row per transition that is not an attempt's start or end (those are
read back from the attempt rows); then each kind of statement runs once with
``executemany``.

Events of one job may come from several processes (the producer that enqueued
it, the worker that lost it, the worker that ran it again), so a job's state
only moves forward in time: an update older than the row's ``updated_at`` does
not change it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from ..brokers import LEASE_EXPIRED, MANUAL_RETRY, WORKER_SHUTDOWN
from .schema import Cursor, Dialect
from .store import COMPLETED, DEAD, ENQUEUED, FAILED, LEASE_LOST, RETRYING, RUNNING, SCHEDULED, STARTED, Change

_UPSERT_STATE = """
INSERT INTO {jobs} AS j (id, type, queue, state, attempts, started_at, worker_id, finished_at, updated_at,
                         scheduled_at, error_type, error_message, traceback, fingerprint, dead_reason)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET
    state = excluded.state,
    attempts = CASE WHEN excluded.attempts > 0 THEN excluded.attempts ELSE j.attempts END,
    started_at = COALESCE(excluded.started_at, j.started_at),
    worker_id = CASE WHEN excluded.worker_id <> '' THEN excluded.worker_id ELSE j.worker_id END,
    finished_at = excluded.finished_at,
    updated_at = excluded.updated_at,
    scheduled_at = COALESCE(excluded.scheduled_at, j.scheduled_at),
    error_type = COALESCE(excluded.error_type, j.error_type),
    error_message = COALESCE(excluded.error_message, j.error_message),
    traceback = COALESCE(excluded.traceback, j.traceback),
    fingerprint = COALESCE(excluded.fingerprint, j.fingerprint),
    dead_reason = excluded.dead_reason
WHERE j.updated_at <= excluded.updated_at
"""

_ENQUEUE = """
INSERT INTO {jobs} AS j (id, type, queue, state, priority, enqueued_at, scheduled_at, updated_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET
    priority = excluded.priority, enqueued_at = excluded.enqueued_at,
    scheduled_at = COALESCE(j.scheduled_at, excluded.scheduled_at)
"""

_EVENT = """
INSERT INTO {events} (job_id, type, queue, at, kind, attempt, worker_id, detail, error_type, error_message,
                      fingerprint)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

# Attempts of a redelivered job that never finished: their worker was lost.
_LOSE_OPEN = """
UPDATE {attempts} SET outcome = 'lost', finished_at = ?
WHERE job_id = ? AND finished_at IS NULL AND started_at <= ?
"""

_ATTEMPT = """
INSERT INTO {attempts} (job_id, type, queue, attempt, worker_id, started_at, finished_at, duration, outcome,
                        redelivery, error_type, error_message, traceback, fingerprint)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

_FINISH = """
UPDATE {attempts} SET finished_at = ?, duration = ?, outcome = ?, error_type = ?, error_message = ?,
    traceback = ?, fingerprint = ?
WHERE job_id = ? AND attempt = ? AND worker_id = ? AND (finished_at IS NULL OR outcome = 'lost')
"""

# A manual retry seen by the worker that runs the job again, unless one was already
# recorded (from ``dlq.retried``) since the job last went dead before this start: the
# same batch may hold a later death of this very run.
_MANUAL_RETRY_SEEN = """
INSERT INTO {events} (job_id, type, queue, at, kind, attempt, worker_id, detail)
SELECT ?, ?, ?, ?, 'manual_retry', 0, '', '{{}}'
WHERE NOT EXISTS (
    SELECT 1 FROM {events} e WHERE e.job_id = ? AND e.kind = 'manual_retry'
    AND e.at >= COALESCE((SELECT MAX(d.at) FROM {events} d WHERE d.job_id = ? AND d.kind = 'dead' AND d.at <= ?), 0)
)
"""

_MANUAL_RETRY_JOB = """
UPDATE {jobs} SET state = 'enqueued', finished_at = NULL, dead_reason = '', updated_at = ?
WHERE id = ? AND state = 'dead' AND updated_at <= ?
"""

_MANUAL_RETRY_EVENT = """
INSERT INTO {events} (job_id, type, queue, at, kind, attempt, worker_id, detail)
SELECT id, type, queue, ?, 'manual_retry', 0, '', '{{}}' FROM {jobs}
WHERE id = ? AND state = 'enqueued' AND updated_at = ?
"""

_encode = msgspec.json.Encoder().encode
_STATE_OF = {STARTED: RUNNING, COMPLETED: COMPLETED, FAILED: FAILED, RETRYING: RETRYING, DEAD: DEAD}
_LOST_WORKER = (LEASE_EXPIRED, WORKER_SHUTDOWN)


@dataclass(slots=True)
class _JobPatch:
    """The job-row update of a batch: the latest state, with older fields kept where the latest has none."""

    id: str
    type: str
    queue: str
    state: str
    updated_at: float
    attempts: int = 0
    started_at: float | None = None
    worker_id: str = ""
    finished_at: float | None = None
    scheduled_at: float | None = None
    error: list[str | None] = field(default_factory=lambda: [None, None, None, None])
    dead_reason: str = ""

    def merge(self, newer: _JobPatch) -> _JobPatch:
        if newer.updated_at < self.updated_at:
            return self
        newer.attempts = newer.attempts or self.attempts
        newer.started_at = newer.started_at if newer.started_at is not None else self.started_at
        newer.worker_id = newer.worker_id or self.worker_id
        newer.scheduled_at = newer.scheduled_at if newer.scheduled_at is not None else self.scheduled_at
        if newer.error[0] is None:
            newer.error = self.error
        return newer

    def row(self) -> tuple[Any, ...]:
        return (
            self.id, self.type, self.queue, self.state, self.attempts, self.started_at, self.worker_id,
            self.finished_at, self.updated_at, self.scheduled_at, *self.error, self.dead_reason,
        )  # fmt: skip


def _error_fields(c: Change) -> list[str | None]:
    e = c.error
    return [None, None, None, None] if e is None else [e.type, e.message, e.traceback, e.fingerprint]


class _Batch:
    """One batch folded into rows, statement by statement."""

    def __init__(self) -> None:
        self.enqueues: list[tuple[Any, ...]] = []
        self.jobs: dict[str, _JobPatch] = {}
        self.lose: list[tuple[Any, ...]] = []
        self.attempts: dict[tuple[str, int, str], list[Any]] = {}
        self.finishes: list[tuple[Any, ...]] = []
        self.events: list[tuple[Any, ...]] = []
        self.manual: list[tuple[Any, ...]] = []

    def add(self, c: Change) -> None:
        if c.kind in (ENQUEUED, SCHEDULED):
            self.enqueues.append((c.job_id, c.job_type, c.queue, c.kind, c.priority, c.at, c.at + c.delay, c.at))
            self.event(c, {"priority": c.priority, "delay": round(c.delay, 6)} if c.delay else {})
            return
        if c.kind == LEASE_LOST:  # the job's state is another worker's now: only the attempt ends
            self.lost(c)
            self.event(c, {"detected_by": c.reason})
            return
        state = _STATE_OF[c.kind]
        patch = _JobPatch(c.job_id, c.job_type, c.queue, state, c.at, c.attempt, worker_id=c.worker_id)
        patch.error = _error_fields(c)
        if c.kind == STARTED:
            patch.started_at = c.at
            self.started(c)
        elif c.kind in (COMPLETED, FAILED):
            patch.finished_at = c.at if c.kind == COMPLETED else None
            self.finished(c)
        elif c.kind == RETRYING:
            patch.scheduled_at = c.at + c.delay
            self.event(c, {"delay": round(c.delay, 6)})
        else:
            patch.finished_at, patch.dead_reason = c.at, c.reason
            self.event(c, {"reason": c.reason}, failure=c.counts_as_failure)
        known = self.jobs.get(c.job_id)
        self.jobs[c.job_id] = patch if known is None else known.merge(patch)

    def started(self, c: Change) -> None:
        if c.redelivery in _LOST_WORKER:
            self.lose.append((c.at, c.job_id, c.at))
            for (job_id, _, _), row in self.attempts.items():
                if job_id == c.job_id and row[6] is None:
                    row[6], row[8] = c.at, "lost"
        self.attempts[(c.job_id, c.attempt, c.worker_id)] = [
            c.job_id, c.job_type, c.queue, c.attempt, c.worker_id, c.at, None, None, "running", c.redelivery,
            None, None, None, None,
        ]  # fmt: skip
        if c.redelivery == MANUAL_RETRY:
            self.manual.append((c.job_id, c.job_type, c.queue, c.at, c.job_id, c.job_id, c.at))

    def finished(self, c: Change) -> None:
        error = _error_fields(c)
        row = self.attempts.get((c.job_id, c.attempt, c.worker_id))
        if row is None:
            self.finishes.append((c.at, c.duration, c.kind, *error, c.job_id, c.attempt, c.worker_id))
        else:
            row[6:9] = [c.at, c.duration, c.kind]
            row[10:14] = error

    def lost(self, c: Change) -> None:
        row = self.attempts.get((c.job_id, c.attempt, c.worker_id))
        if row is None:
            self.finishes.append((c.at, None, "lost", None, None, None, None, c.job_id, c.attempt, c.worker_id))
        elif row[6] is None:
            row[6], row[8] = c.at, "lost"

    def event(self, c: Change, detail: dict[str, Any], failure: bool = False) -> None:
        e = c.error
        if e is not None:
            detail = {**detail, "error": {"type": e.type, "message": e.message}}
        fail = failure and e is not None
        self.events.append(
            (
                c.job_id, c.job_type, c.queue, c.at, c.kind, c.attempt, c.worker_id,
                _encode(detail).decode() if detail else "{}",
                e.type if fail and e else None, e.message if fail and e else None,
                e.fingerprint if fail and e else None,
            )
        )  # fmt: skip


class Writer:
    """Applies batches of :class:`Change` rows with a cursor, in the given dialect."""

    def __init__(self, dialect: Dialect) -> None:
        q = dialect.sql
        self.upsert_state, self.enqueue, self.event = q(_UPSERT_STATE), q(_ENQUEUE), q(_EVENT)
        self.lose_open, self.attempt, self.finish = q(_LOSE_OPEN), q(_ATTEMPT), q(_FINISH)
        self.manual_seen, self.manual_job = q(_MANUAL_RETRY_SEEN), q(_MANUAL_RETRY_JOB)
        self.manual_event = q(_MANUAL_RETRY_EVENT)

    def apply(self, cur: Cursor, changes: Sequence[Change]) -> None:
        """Apply ``changes`` (in the order they happened) in the caller's transaction."""
        batch = _Batch()
        for change in changes:
            batch.add(change)
        steps: list[tuple[str, Sequence[Sequence[Any]]]] = [
            (self.enqueue, batch.enqueues),
            (self.upsert_state, [p.row() for p in batch.jobs.values()]),
            (self.lose_open, batch.lose),
            (self.attempt, list(batch.attempts.values())),
            (self.finish, batch.finishes),
            (self.event, batch.events),
            (self.manual_seen, batch.manual),
        ]
        for sql, rows in steps:
            if rows:
                cur.executemany(sql, rows)

    def manual_retry(self, cur: Cursor, job_ids: Sequence[str], at: float) -> None:
        """Mark dead jobs as sent back to their queues by hand."""
        cur.executemany(self.manual_job, [(at, job_id, at) for job_id in job_ids])
        cur.executemany(self.manual_event, [(at, job_id, at) for job_id in job_ids])
