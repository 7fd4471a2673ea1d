"""Where the dashboard's data comes from: the broker, job history and the monitor.

Every read returns JSON-ready dicts (see :mod:`.model`). History and the
monitor are optional extensions of the app; without them the pages that need
them say so and how to enable them (:class:`Disabled`).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Any

from ..app import App
from ..brokers import QueueStats, Selector
from ..deadletters import DeadLetterNotFound
from ..history import History, HistoryStore
from ..history import render as history_render
from . import model
from .extensions import Monitoring, find_history, find_monitoring
from .sampler import BUCKET, WINDOW, Samples

HISTORY_HELP = (
    "Job history is not enabled for this app. Enable it with App(url, extensions=[History()]) "
    "(from conveyor.history import History): workers then record every job, attempt and heartbeat. "
    "See docs/history.md."
)
MONITOR_HELP = (
    "Health monitoring is not enabled for this app. Enable it with "
    "App(url, extensions=[History(), Monitor()]) (from conveyor.monitor import Monitor). "
    "See docs/monitoring.md."
)


class Disabled(Exception):
    """The page needs an extension the app does not have; ``str()`` says how to enable it."""


class Sources:
    """Reads and DLQ actions for one conveyor app."""

    def __init__(self, app: App, trace_url: str | None = None) -> None:
        self.app = app
        self.trace_url = model.check_trace_url(trace_url)
        self.redactor = model.redactor_for(app)
        self.history_ext: History | None = find_history(app)
        self.monitoring: Monitoring | None = find_monitoring(app)
        self.samples = Samples()
        self._buckets: dict[float, dict[str, int]] = {}
        self._buckets_lock = threading.Lock()

    def features(self) -> dict[str, Any]:
        return {
            "history": self.history_ext is not None,
            "monitor": self.monitoring is not None,
            "trace_url": self.trace_url is not None,
            "history_help": "" if self.history_ext else HISTORY_HELP,
            "monitor_help": "" if self.monitoring else MONITOR_HELP,
        }

    @property
    def history(self) -> HistoryStore | None:
        """The history store, or None when the app has no History extension."""
        return None if self.history_ext is None else self.history_ext.store

    def _store(self) -> HistoryStore:
        if self.history is None:
            raise Disabled(HISTORY_HELP)
        return self.history

    # -- broker -----------------------------------------------------------
    async def queue_stats(self) -> dict[str, QueueStats]:
        """Per-queue counts; the app's registered queues are always listed."""
        return await self.app.stats_async()

    async def sample(self) -> None:
        """Record one sample of queue depths and worker resources; evaluate health when due."""
        now = time.time()
        self.samples.add_stats(await self.queue_stats(), now)
        if self.monitoring is not None:
            await self.monitoring.refresh(now)
        if self.history is not None:
            workers = await asyncio.to_thread(self.history.workers, False)
            for w in workers:
                self.samples.add_worker(w.id, w.last_heartbeat, w.rss_bytes, w.cpu_percent)
            self.samples.forget_workers({w.id for w in workers})

    async def dead_letters(
        self, queue: str | None = None, limit: int = 500, after: str | None = None
    ) -> dict[str, Any]:
        """A page of dead letters, oldest first, and the cursor of the next page (or None)."""
        page = await self.app.dead_letters.page(queue, limit, after)
        letters = [model.dead_letter_dict(self.app, d, self.redactor, self.trace_url) for d in page.letters]
        return {"letters": letters, "next": page.next}

    async def dead_letter(self, job_id: str) -> dict[str, Any] | None:
        """One dead letter by id or unique id prefix (None when there is none)."""
        try:
            letter = await self.app.dead_letters.get(job_id)
        except DeadLetterNotFound:
            return None
        return model.dead_letter_dict(self.app, letter, self.redactor, self.trace_url)

    async def retry(self, ids: Sequence[str]) -> int:
        """Send dead letters back to their queues (ids already gone are skipped)."""
        if not ids:
            return 0
        return len(await self.app.dead_letters.retry(Selector(ids=ids), requested_by="dashboard", missing_ok=True))

    async def delete(self, ids: Sequence[str]) -> int:
        """Delete dead letters for good (ids already gone are skipped)."""
        if not ids:
            return 0
        return len(await self.app.dead_letters.purge(Selector(ids=ids), requested_by="dashboard", missing_ok=True))

    async def retry_cluster(self, fingerprint: str) -> tuple[int, int]:
        """Retry the dead jobs of a failure cluster; returns (retried, dead jobs found)."""
        ids = await asyncio.to_thread(self._store().dead_jobs_in_cluster, fingerprint)
        return await self.retry(ids), len(ids)

    # -- history ----------------------------------------------------------
    async def jobs(
        self,
        *,
        job_id: str | None = None,
        job_type: str | None = None,
        state: str | None = None,
        queue: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        store = self._store()
        found = await asyncio.to_thread(
            lambda: store.list_jobs(
                state=state,
                job_type=job_type,
                queue=queue,
                since=since,
                until=until,
                id_prefix=job_id,
                limit=limit,
            )
        )
        return [history_render.job_dict(j) for j in found]

    async def job(self, job_id: str) -> dict[str, Any] | None:
        """A job's timeline, and its payload and trace when it is in the DLQ."""
        timeline = await asyncio.to_thread(self._store().get_job, job_id)
        if timeline is None:
            return None
        data = history_render.timeline_dict(timeline)
        data["dead_letter"] = (
            await self.dead_letter(timeline.job.id) if timeline.job.state == "dead" else None
        )
        return data

    async def workers(self) -> list[dict[str, Any]]:
        now = time.time()
        found = await asyncio.to_thread(self._store().workers, True)
        timeout = None if self.monitoring is None else self.monitoring.heartbeat_timeout
        out = []
        for w in found:
            data = model.worker_dict(w, timeout, now)
            series = self.samples.workers.get(w.id)
            data["charts"] = {
                "rss": series.chart(["rss_mb"]) if series else {"x": [], "series": []},
                "cpu": series.chart(["cpu_percent"]) if series else {"x": [], "series": []},
            }
            out.append(data)
        return out

    async def clusters(self, window: float = WINDOW, limit: int = 50) -> list[dict[str, Any]]:
        store = self._store()
        found = await asyncio.to_thread(store.failure_clusters, time.time() - window, None, limit)
        return [history_render.cluster_dict(c) for c in found]

    def loop_attempts(self) -> int:
        """Attempts that make a retry loop: the monitor's setting, else 3."""
        return 3 if self.monitoring is None else self.monitoring.config.retry_loop_attempts

    async def retry_loops(self, min_attempts: int | None = None, window: float = WINDOW) -> dict[str, Any]:
        """Jobs with ``min_attempts`` (default :meth:`loop_attempts`) attempts started in the window."""
        store = self._store()
        min_attempts = self.loop_attempts() if min_attempts is None else min_attempts
        found = await asyncio.to_thread(store.retry_loops, min_attempts, time.time() - window)
        return history_render.loops_dict(found)

    # -- overview ---------------------------------------------------------
    async def rates(self) -> dict[str, Any]:
        """Success and failure rates over the last 5 minutes and the last hour."""
        if self.history is None:
            out: dict[str, Any] = {"source": "process"}
            for name, window in (("last_5m", 300.0), ("last_1h", WINDOW)):
                t = self.samples.outcomes.totals(window)
                out[name] = model.rate(t["completed"], t["failed"])
            return out
        store = self.history
        now = time.time()
        out = {"source": "history"}
        for name, window in (("last_5m", 300.0), ("last_1h", WINDOW)):
            counts = await asyncio.to_thread(store.failure_counts, now - window, None)
            out[name] = model.rate(sum(c.completed for c in counts), sum(c.failures for c in counts))
        return out

    async def throughput(self) -> dict[str, Any]:
        """Completed, failed and dead per minute for the last hour."""
        if self.history is None:
            seen = self.samples.outcomes.seen
            chart = self.samples.outcomes.per_minute() if seen else {"x": [], "series": []}
            return {**chart, "source": "process", "seen": seen}
        store = self.history
        now = time.time()
        current = now - now % BUCKET
        starts = [current - WINDOW + BUCKET * (i + 1) for i in range(int(WINDOW / BUCKET))]

        def bucket(start: float) -> dict[str, int]:
            counts = store.failure_counts(start, start + BUCKET)
            return {
                "completed": sum(c.completed for c in counts),
                "failed": sum(c.failures for c in counts),
                "dead": sum(c.dead for c in counts),
            }

        def fill() -> list[dict[str, int]]:
            with self._buckets_lock:
                for old in [k for k in self._buckets if k < starts[0]]:
                    del self._buckets[old]
                return [cached(start) for start in starts]

        def cached(start: float) -> dict[str, int]:
            found = self._buckets.get(start)
            if found is None:
                found = bucket(start)
                if start + BUCKET < now:  # a finished minute no longer changes
                    self._buckets[start] = found
            return found

        rows = await asyncio.to_thread(fill)
        return {
            "x": starts,
            "series": [{"label": k, "values": [r[k] for r in rows]} for k in ("completed", "failed", "dead")],
            "source": "history",
        }

    def _monitoring(self) -> Monitoring:
        if self.monitoring is None:
            raise Disabled(MONITOR_HELP)
        return self.monitoring

    async def alerts(self) -> dict[str, Any]:
        """Active alerts and those resolved in the last hour."""
        monitoring = self._monitoring()
        return {"active": monitoring.active_alerts(), "resolved": monitoring.resolved_alerts()}

    async def health(self) -> dict[str, Any]:
        """The latest health evaluation (checks, forecasts, lost workers)."""
        report = self._monitoring().report()
        return {"status": "pending", "results": []} if report is None else report.to_dict()

    async def overview(self) -> dict[str, Any]:
        stats = await self.queue_stats()
        queues = [model.queue_dict(name, s) for name, s in stats.items()]
        alerts = None if self.monitoring is None else await self.alerts()
        return {
            "queues": queues,
            "totals": {k: sum(q[k] for q in queues) for k in ("ready", "in_flight", "delayed", "dead")},
            "rates": await self.rates(),
            "throughput": await self.throughput(),
            "depth": self.samples.depth.chart(["ready", "in_flight", "delayed", "dead"]),
            "alerts": alerts,
            "features": self.features(),
        }
