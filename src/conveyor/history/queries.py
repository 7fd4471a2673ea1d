"""Window queries over the history tables: failure counts, throughput, clusters, retry loops."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .fingerprint import normalize_message
from .store import (
    ErrorRecord,
    FailureCluster,
    FailureCount,
    RetryLoopJob,
    RetryLoops,
    RetryLoopType,
    Throughput,
)

Rows = Callable[[str, Sequence[Any]], list[Any]]
"""Runs a query (``{table}`` names, ``?`` placeholders) and returns its rows."""

_EXAMPLES = 5
# Failures in a window (4 parameters: start, end, start, end): failed attempts, and
# jobs dead-lettered without a failed attempt (unknown type, lost too many times...).
_FAILURES = """(
    SELECT job_id, type, fingerprint, error_type, error_message, finished_at AS at FROM {attempts}
    WHERE fingerprint IS NOT NULL AND outcome = 'failed' AND finished_at >= ? AND finished_at < ?
    UNION ALL
    SELECT job_id, type, fingerprint, error_type, error_message, at FROM {events}
    WHERE fingerprint IS NOT NULL AND at >= ? AND at < ?
) failures"""
_MAX_LOOPS = 1000


def chunks(items: Sequence[str], size: int = 500) -> Iterator[Sequence[str]]:
    """``items`` in slices of at most ``size`` (for ``IN (...)`` lists)."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _marks(n: int) -> str:
    return ", ".join("?" * n)


class Queries:
    """Aggregations shared by every SQL store; ``rows`` runs the SQL on the store's connection."""

    def failure_counts(self, rows: Rows, start: float, end: float) -> list[FailureCount]:
        per: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
        finished = rows(
            "SELECT type, queue, outcome, COUNT(*) FROM {attempts} WHERE finished_at >= ? AND finished_at < ?"
            " AND outcome IN ('completed', 'failed', 'lost') GROUP BY type, queue, outcome",
            (start, end),
        )
        for job_type, queue, outcome, n in finished:
            per[(job_type, queue)][outcome] += n
        dead = rows(
            "SELECT type, queue, COUNT(*) FROM {events} WHERE kind = 'dead' AND at >= ? AND at < ?"
            " GROUP BY type, queue",
            (start, end),
        )
        for job_type, queue, n in dead:
            per[(job_type, queue)]["dead"] += n
        return [
            FailureCount(
                job_type=t,
                queue=q,
                attempts=c["completed"] + c["failed"] + c["lost"],
                failures=c["failed"] + c["lost"],
                completed=c["completed"],
                lost=c["lost"],
                dead=c["dead"],
            )
            for (t, q), c in sorted(per.items())
        ]

    def throughput(self, rows: Rows, start: float, end: float) -> list[Throughput]:
        found = rows(
            "SELECT type, COUNT(*), AVG(duration) FROM {attempts} WHERE outcome = 'completed'"
            " AND finished_at >= ? AND finished_at < ? GROUP BY type ORDER BY type",
            (start, end),
        )
        window = max(0.0, end - start)
        return [Throughput(t, n, window, float(avg or 0.0)) for t, n, avg in found]

    def failure_clusters(self, rows: Rows, start: float, end: float, limit: int) -> list[FailureCluster]:
        window = (start, end, start, end)
        found = rows(
            "SELECT fingerprint, type, error_type, error_message, COUNT(*), MIN(at), MAX(at) FROM"
            f" {_FAILURES} GROUP BY fingerprint, type, error_type, error_message",
            window,
        )
        groups: dict[tuple[str, str], list[Any]] = defaultdict(list)
        for row in found:
            groups[(row[0], row[1])].append(row)
        ranked = sorted(groups.items(), key=lambda kv: (-sum(r[4] for r in kv[1]), -max(r[6] for r in kv[1])))
        ranked = ranked[:limit]
        fps = [fp for (fp, _), _ in ranked]
        jobs: dict[str, int] = {}
        dead: dict[str, int] = {}
        for part in chunks(fps):
            for fp, n in rows(
                f"SELECT fingerprint, COUNT(DISTINCT job_id) FROM {_FAILURES}"
                f" WHERE fingerprint IN ({_marks(len(part))}) GROUP BY fingerprint",
                (*window, *part),
            ):
                jobs[fp] = n
            for fp, n in rows(
                f"SELECT fingerprint, COUNT(*) FROM {{jobs}} WHERE state = 'dead' AND fingerprint IN"
                f" ({_marks(len(part))}) GROUP BY fingerprint",
                part,
            ):
                dead[fp] = n
        clusters = []
        for (fp, job_type), members in ranked:
            common = max(members, key=lambda r: (r[4], r[6]))
            examples = rows(
                f"SELECT job_id, MAX(at) FROM {_FAILURES} WHERE fingerprint = ?"
                " GROUP BY job_id ORDER BY MAX(at) DESC LIMIT ?",
                (*window, fp, _EXAMPLES),
            )
            clusters.append(
                FailureCluster(
                    fingerprint=fp,
                    job_type=job_type,
                    count=sum(r[4] for r in members),
                    jobs=jobs.get(fp, 0),
                    first_seen=min(r[5] for r in members),
                    last_seen=max(r[6] for r in members),
                    example_ids=[r[0] for r in examples],
                    error_type=common[2] or "",
                    error_message=common[3] or "",
                    pattern=normalize_message(common[3] or ""),
                    dead=dead.get(fp, 0),
                )
            )
        return clusters

    def retry_loops(self, rows: Rows, min_attempts: int, start: float) -> RetryLoops:
        looping = rows(
            "SELECT job_id, MAX(type), MAX(queue), COUNT(*), MIN(started_at), MAX(started_at) FROM {attempts}"
            " WHERE started_at >= ? GROUP BY job_id HAVING COUNT(*) >= ? ORDER BY COUNT(*) DESC, MAX(started_at) DESC"
            " LIMIT ?",
            (start, min_attempts, _MAX_LOOPS),
        )
        ids = [r[0] for r in looping]
        errors: dict[str, list[Any]] = defaultdict(list)
        states: dict[str, str] = {}
        for part in chunks(ids):
            marks = _marks(len(part))
            for r in rows(
                "SELECT job_id, fingerprint, MAX(error_type), MAX(error_message), COUNT(*), MAX(finished_at)"
                f" FROM {{attempts}} WHERE job_id IN ({marks}) AND started_at >= ? AND fingerprint IS NOT NULL"
                " GROUP BY job_id, fingerprint",
                (*part, start),
            ):
                errors[r[0]].append(r)
            states.update(rows(f"SELECT id, state FROM {{jobs}} WHERE id IN ({marks})", part))
        jobs: list[RetryLoopJob] = []
        for job_id, job_type, queue, n, first, last in looping:
            top = max(errors[job_id], key=lambda r: (r[4], r[5] or 0.0), default=None)
            error = ErrorRecord(top[2] or "", top[3] or "", "", top[1]) if top else None
            jobs.append(
                RetryLoopJob(
                    job_id, job_type, queue, n, states.get(job_id, ""), first, last, error, top[4] if top else 0
                )
            )
        return RetryLoops(min_attempts, start, jobs, _by_type(jobs))


def _by_type(jobs: Sequence[RetryLoopJob]) -> list[RetryLoopType]:
    grouped: dict[str, list[RetryLoopJob]] = defaultdict(list)
    for job in jobs:
        grouped[job.job_type].append(job)
    result = []
    for job_type, members in grouped.items():
        repeats: Counter[str] = Counter()
        sample: dict[str, ErrorRecord] = {}
        for m in members:
            if m.error is not None:
                repeats[m.error.fingerprint] += m.repeats
                sample.setdefault(m.error.fingerprint, m.error)
        top = repeats.most_common(1)
        result.append(
            RetryLoopType(
                job_type=job_type,
                jobs=len(members),
                attempts=sum(m.attempts for m in members),
                max_attempts=max(m.attempts for m in members),
                error=sample[top[0][0]] if top else None,
            )
        )
    return sorted(result, key=lambda t: (-t.attempts, t.job_type))
