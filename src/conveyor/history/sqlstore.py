"""The SQL implementation of :class:`HistoryStore`, shared by SQLite and PostgreSQL.

Subclasses only open connections: :meth:`SQLHistoryStore._transaction` yields a
cursor inside a write transaction, :meth:`SQLHistoryStore._reading` a cursor
for reads.
"""

from __future__ import annotations

import json
import time
from abc import abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import Any

from ..errors import ConveyorError, ServiceUnavailable
from .queries import Queries
from .schema import Cursor, Dialect
from .store import (
    LOST,
    AttemptRecord,
    Change,
    ErrorRecord,
    EventRecord,
    FailureCluster,
    FailureCount,
    HistoryStore,
    JobRecord,
    JobTimeline,
    RetryLoops,
    RunningJobRecord,
    Throughput,
    When,
    WorkerRecord,
    epoch,
)
from .writes import Writer

_JOB_COLS = (
    "id, type, queue, state, attempts, enqueued_at, scheduled_at, started_at, finished_at, updated_at,"
    " worker_id, error_type, error_message, traceback, fingerprint, dead_reason, priority"
)
_ATTEMPT_COLS = (
    "job_id, attempt, worker_id, started_at, finished_at, duration, outcome, redelivery,"
    " error_type, error_message, traceback, fingerprint"
)
_WORKER_COLS = (
    "id, host, pid, queues, concurrency, started_at, last_heartbeat, heartbeat_interval, stopped_at,"
    " stop_reason, rss_bytes, cpu_percent, jobs"
)
_PRUNE_CHUNK = 500


class AmbiguousId(ConveyorError, ValueError):
    """A prefix matched more than one job or fingerprint."""


class HistoryUnavailable(ServiceUnavailable):
    """The history database could not be read (the CLI exits with code 69)."""


def _error(type_: Any, message: Any, traceback: Any, fingerprint: Any) -> ErrorRecord | None:
    if type_ is None:
        return None
    return ErrorRecord(str(type_), str(message or ""), str(traceback or ""), str(fingerprint or ""))


def _job(r: Sequence[Any]) -> JobRecord:
    return JobRecord(
        id=r[0], type=r[1], queue=r[2], state=r[3], attempts=r[4], enqueued_at=r[5], scheduled_at=r[6],
        started_at=r[7], finished_at=r[8], updated_at=r[9], worker_id=r[10],
        error=_error(r[11], r[12], r[13], r[14]), dead_reason=r[15], priority=r[16],
    )  # fmt: skip


def _attempt(r: Sequence[Any]) -> AttemptRecord:
    return AttemptRecord(
        job_id=r[0], attempt=r[1], worker_id=r[2], started_at=r[3], finished_at=r[4], duration=r[5],
        outcome=r[6], redelivery=r[7], error=_error(r[8], r[9], r[10], r[11]),
    )  # fmt: skip


def _running(items: Any) -> list[RunningJobRecord]:
    return [
        RunningJobRecord(
            j["id"], j["type"], j["queue"], int(j["attempt"]), float(j["since"]),
            bool(j.get("stuck", False)), bool(j.get("replaced", False)),
        )
        for j in items
    ]  # fmt: skip


def _worker(r: Sequence[Any]) -> WorkerRecord:
    return WorkerRecord(
        id=r[0], host=r[1], pid=r[2], queues=[q for q in r[3].split(",") if q], concurrency=r[4],
        started_at=r[5], last_heartbeat=r[6], heartbeat_interval=r[7], stopped_at=r[8], stop_reason=r[9],
        rss_bytes=r[10], cpu_percent=r[11], jobs=_running(json.loads(r[12])),
    )  # fmt: skip


_ORDER = {"enqueued": 0, "scheduled": 0, "manual_retry": 1, "started": 2, "completed": 3, "failed": 3}


def _attempt_events(attempts: Sequence[AttemptRecord]) -> list[EventRecord]:
    """The ``started``, ``completed`` and ``failed`` events of a timeline, read back from its attempts."""
    out = []
    for a in attempts:
        start = {"redelivery": a.redelivery} if a.redelivery else {}
        out.append(EventRecord(a.job_id, a.started_at, "started", a.attempt, a.worker_id, start))
        if a.outcome in ("completed", "failed") and a.finished_at is not None:
            detail: dict[str, Any] = {"duration": a.duration}
            if a.error is not None:
                detail["error"] = {"type": a.error.type, "message": a.error.message}
            out.append(EventRecord(a.job_id, a.finished_at, a.outcome, a.attempt, a.worker_id, detail))
    return out


def jobs_json(jobs: Sequence[RunningJobRecord]) -> str:
    """Running jobs as the JSON stored in a worker's row."""
    items: list[dict[str, Any]] = []
    for j in jobs:
        item: dict[str, Any] = {"id": j.id, "type": j.type, "queue": j.queue, "attempt": j.attempt, "since": j.since}
        if j.stuck:
            item.update(stuck=True, replaced=j.replaced)
        items.append(item)
    return json.dumps(items, separators=(",", ":"))


class SQLHistoryStore(HistoryStore):
    """History in SQL tables; see :mod:`conveyor.history.schema`."""

    driver_errors: tuple[type[Exception], ...] = ()
    """The database driver's errors, reported as :class:`HistoryUnavailable` by readers."""

    def __init__(self, url: str, dialect: Dialect) -> None:
        self.url = url
        self.dialect = dialect
        self.writer = Writer(dialect)
        self.queries = Queries()

    @abstractmethod
    def _transaction(self, batch: bool = False) -> AbstractContextManager[Cursor]:
        """A cursor inside a write transaction that commits on exit; ``batch``: many
        statements whose results are not read (PostgreSQL pipelines them)."""

    @abstractmethod
    def _reading(self) -> AbstractContextManager[Cursor]:
        """A cursor for reads."""

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            with self._reading() as cur:
                cur.execute(self.dialect.sql(sql), tuple(params))
                return cur.fetchall()
        except self.driver_errors as exc:
            detail = " ".join(str(exc).split())
            raise HistoryUnavailable(f"cannot read job history ({self.dialect.name}): {detail}") from exc

    # -- writing --------------------------------------------------------------
    def record(self, changes: Sequence[Change]) -> None:
        if not changes:
            return
        with self._transaction(batch=True) as cur:
            self.writer.apply(cur, changes)

    def heartbeat(self, worker: WorkerRecord) -> None:
        sql = self.dialect.sql(
            f"INSERT INTO {{workers}} AS w ({_WORKER_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, '', ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET last_heartbeat = excluded.last_heartbeat,"
            " heartbeat_interval = excluded.heartbeat_interval, rss_bytes = excluded.rss_bytes,"
            " cpu_percent = excluded.cpu_percent, jobs = excluded.jobs, queues = excluded.queues,"
            " stopped_at = NULL, stop_reason = ''"
            # a late heartbeat never revives a stopped worker; one marked lost was only silent
            f" WHERE w.stopped_at IS NULL OR w.stop_reason = '{LOST}'"
        )
        w = worker
        params = (
            w.id, w.host, w.pid, ",".join(w.queues), w.concurrency, w.started_at, w.last_heartbeat,
            w.heartbeat_interval, w.rss_bytes, w.cpu_percent, jobs_json(w.jobs),
        )  # fmt: skip
        with self._transaction() as cur:
            cur.execute(sql, params)

    def worker_stopped(self, worker_id: str, at: float, reason: str) -> None:
        sql = "UPDATE {workers} SET stopped_at = ?, stop_reason = ?, last_heartbeat = ?, jobs = '[]' WHERE id = ?"
        with self._transaction() as cur:
            cur.execute(self.dialect.sql(sql), (at, reason, at, worker_id))

    def worker_lost(self, worker_id: str, last_heartbeat: float, at: float) -> bool:
        sql = (
            "UPDATE {workers} SET stopped_at = ?, stop_reason = ?"
            " WHERE id = ? AND stopped_at IS NULL AND last_heartbeat <= ?"
        )
        with self._transaction() as cur:
            cur.execute(self.dialect.sql(sql), (at, LOST, worker_id, last_heartbeat))
            return cur.rowcount > 0

    def manual_retry(self, job_ids: Sequence[str], at: float | None = None) -> None:
        when = time.time() if at is None else at
        with self._transaction(batch=True) as cur:
            self.writer.manual_retry(cur, job_ids, when)

    def prune(self, older_than: When | None = None, max_rows: int | None = None) -> int:
        deleted = 0
        cutoff = epoch(older_than)
        if cutoff is not None:
            deleted += self._prune_before(cutoff, inclusive=False)
            with self._transaction() as cur:
                cur.execute(self.dialect.sql("DELETE FROM {workers} WHERE last_heartbeat < ?"), (cutoff,))
        if max_rows is not None:
            rows = self._rows("SELECT updated_at FROM {jobs} ORDER BY updated_at DESC LIMIT 1 OFFSET ?", (max_rows,))
            if rows:
                deleted += self._prune_before(rows[0][0], inclusive=True)
        return deleted

    def _prune_before(self, cutoff: float, inclusive: bool) -> int:
        """Delete jobs updated before ``cutoff``, a chunk per transaction so writers never wait long."""
        op = "<=" if inclusive else "<"
        pick = self.dialect.sql(f"SELECT id FROM {{jobs}} WHERE updated_at {op} ? ORDER BY updated_at LIMIT ?")
        total = 0
        while True:
            with self._transaction() as cur:
                cur.execute(pick, (cutoff, _PRUNE_CHUNK))
                ids = [r[0] for r in cur.fetchall()]
                if ids:
                    marks = ", ".join("?" * len(ids))
                    for table, col in (("events", "job_id"), ("attempts", "job_id"), ("jobs", "id")):
                        cur.execute(self.dialect.sql(f"DELETE FROM {{{table}}} WHERE {col} IN ({marks})"), ids)
            total += len(ids)
            if len(ids) < _PRUNE_CHUNK:
                return total

    # -- reading --------------------------------------------------------------
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
        where: list[str] = ["1 = 1"]
        params: list[Any] = []
        for column, value in (("state", state), ("type", job_type), ("queue", queue)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            where.append("updated_at >= ?")
            params.append(epoch(since))
        if until is not None:
            where.append("updated_at < ?")
            params.append(epoch(until))
        if id_prefix:
            where.append("substr(id, 1, ?) = ?")
            params += [len(id_prefix), id_prefix]
        sql = f"SELECT {_JOB_COLS} FROM {{jobs}} WHERE {' AND '.join(where)} ORDER BY updated_at DESC LIMIT ?"
        return [_job(r) for r in self._rows(sql, [*params, limit])]

    def get_job(self, job_id: str) -> JobTimeline | None:
        rows = self._rows(f"SELECT {_JOB_COLS} FROM {{jobs}} WHERE id = ?", (job_id,))
        if not rows and job_id:
            rows = self._rows(
                f"SELECT {_JOB_COLS} FROM {{jobs}} WHERE substr(id, 1, ?) = ? LIMIT 2", (len(job_id), job_id)
            )
            if len(rows) > 1:
                raise AmbiguousId(f"job id prefix {job_id!r} matches several jobs; give more characters")
        if not rows:
            return None
        job = _job(rows[0])
        attempts = self._rows(
            f"SELECT {_ATTEMPT_COLS} FROM {{attempts}} WHERE job_id = ? ORDER BY started_at, id", (job.id,)
        )
        events = self._rows(
            "SELECT job_id, at, kind, attempt, worker_id, detail FROM {events} WHERE job_id = ? ORDER BY at, id",
            (job.id,),
        )
        tries = [_attempt(r) for r in attempts]
        stored = [EventRecord(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in events]
        merged = sorted([*stored, *_attempt_events(tries)], key=lambda e: (e.at, _ORDER.get(e.kind, 9)))
        return JobTimeline(job, tries, merged)

    def failure_counts(self, since: When, until: When | None = None) -> list[FailureCount]:
        return self.queries.failure_counts(self._rows, *self._window(since, until))

    def throughput(self, since: When, until: When | None = None) -> list[Throughput]:
        return self.queries.throughput(self._rows, *self._window(since, until))

    def failure_clusters(self, since: When, until: When | None = None, limit: int = 50) -> list[FailureCluster]:
        return self.queries.failure_clusters(self._rows, *self._window(since, until), limit)

    def dead_jobs_in_cluster(self, fingerprint: str) -> list[str]:
        found = self._rows(
            "SELECT DISTINCT fingerprint FROM {jobs} WHERE state = 'dead' AND substr(fingerprint, 1, ?) = ?",
            (len(fingerprint), fingerprint),
        )
        if len(found) > 1:
            raise AmbiguousId(f"fingerprint prefix {fingerprint!r} matches several clusters; give more characters")
        if not found:
            return []
        rows = self._rows(
            "SELECT id FROM {jobs} WHERE state = 'dead' AND fingerprint = ? ORDER BY updated_at", (found[0][0],)
        )
        return [r[0] for r in rows]

    def retry_loops(self, min_attempts: int = 3, since: When = timedelta(hours=1)) -> RetryLoops:
        start = epoch(since)
        assert start is not None
        return self.queries.retry_loops(self._rows, max(1, min_attempts), start)

    def workers(self, include_stopped: bool = True) -> list[WorkerRecord]:
        where = "" if include_stopped else " WHERE stopped_at IS NULL"
        rows = self._rows(f"SELECT {_WORKER_COLS} FROM {{workers}}{where} ORDER BY last_heartbeat DESC")
        return [_worker(r) for r in rows]

    def worker_jobs(self, worker_id: str) -> list[RunningJobRecord]:
        found: dict[str, RunningJobRecord] = {}
        for r in self._rows("SELECT jobs FROM {workers} WHERE id = ?", (worker_id,)):
            found.update((j.id, j) for j in _running(json.loads(r[0])))
        open_attempts = self._rows(
            "SELECT job_id, type, queue, attempt, started_at FROM {attempts}"
            " WHERE worker_id = ? AND (finished_at IS NULL OR outcome = 'lost') ORDER BY started_at",
            (worker_id,),
        )
        for r in open_attempts:
            found.setdefault(r[0], RunningJobRecord(r[0], r[1], r[2], r[3], r[4]))
        return sorted(found.values(), key=lambda j: j.since)

    @staticmethod
    def _window(since: When, until: When | None) -> tuple[float, float]:
        now = time.time()
        start, end = epoch(since, now), epoch(until, now)
        assert start is not None
        return start, now if end is None else end

