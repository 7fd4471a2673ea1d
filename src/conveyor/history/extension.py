"""The :class:`History` extension: records every job's life and every worker's heartbeats."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING

from .. import signals as sig
from ..errors import ConfigError, ConveyorError
from .recorder import JOB_SIGNALS, Recorder
from .store import HistoryStore
from .workers import WorkerHeartbeat

if TYPE_CHECKING:
    from ..app import App

_SQL_SCHEMES = ("sqlite://", "postgresql://", "postgres://")


class HistoryNotInstalled(ConveyorError):
    """The app has no :class:`History` extension."""


def history_url(broker_url: str, url: str | None = None) -> str:
    """Where history goes: ``url`` if given, else the broker's SQLite file or PostgreSQL
    database (and schema). Any other broker needs ``url``: a :class:`ConfigError` says so,
    rather than a file appearing in the working directory."""
    if url is not None:
        if not url.startswith(_SQL_SCHEMES):
            raise ConfigError(f"unsupported history URL {url!r}; use sqlite:///file.db or postgresql://...")
        return url
    if broker_url.startswith(_SQL_SCHEMES):
        return broker_url
    scheme = broker_url.partition("://")[0] or broker_url
    raise ConfigError(
        f"History on a {scheme}:// broker needs a store: pass History(url='sqlite:////abs/path/history.db')"
        " or History(url='postgresql://...')"
    )


def open_store(url: str) -> HistoryStore:
    """Open (lazily connecting) the history store at ``url``."""
    if url.startswith("sqlite://"):
        from .sqlite import SQLiteHistoryStore

        return SQLiteHistoryStore(url)
    if url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresHistoryStore

        return PostgresHistoryStore(url)
    raise ConfigError(f"unsupported history URL {url!r}; use sqlite:///file.db or postgresql://...")


class History:
    """Job history for an app: ``App(url, extensions=[History()])``.

    Records each job's transitions, attempts (worker, start, end, duration,
    error and fingerprint, redelivery reason) and each worker's heartbeat.
    Writes are batched on a background thread; the job hot path only appends
    to a buffer. History older than ``retention`` and beyond the newest
    ``max_rows`` jobs is pruned every ``prune_interval`` seconds.
    """

    def __init__(
        self,
        url: str | None = None,
        retention: timedelta | None = timedelta(days=7),
        max_rows: int | None = None,
        *,
        heartbeat_interval: float = 5.0,
        flush_interval: float = 0.5,
        batch_size: int = 500,
        max_buffer: int = 100_000,
        prune_interval: float = 600.0,
    ) -> None:
        if max_rows is not None and max_rows < 1:
            raise ConfigError("max_rows must be at least 1")
        if heartbeat_interval <= 0 or flush_interval <= 0 or prune_interval <= 0:
            raise ConfigError("history intervals must be > 0")
        if url is not None:
            history_url("", url)  # fail fast on a bad URL
        self._url = url
        self.url = url or ""
        self.retention = retention
        self.max_rows = max_rows
        self.heartbeat_interval = heartbeat_interval
        self._store: HistoryStore | None = None
        self._lock = threading.Lock()
        self.recorder = Recorder(
            lambda: self.store,
            flush_interval=flush_interval,
            batch_size=batch_size,
            max_buffer=max_buffer,
            retention=retention,
            max_rows=max_rows,
            prune_interval=prune_interval,
        )

    def __repr__(self) -> str:
        return f"History({self.url!r})"

    def install(self, app: App) -> None:
        """Subscribe to job and worker signals and add the heartbeat service."""
        self.url = history_url(app.url, self._url)
        app.bus.subscribe(self.recorder.sink, JOB_SIGNALS)
        app.bus.subscribe(self._worker_stopped, (sig.WORKER_STOPPED,))
        app.bus.subscribe(self._dlq_retried, (sig.DLQ_RETRIED,))
        app.worker_services.append(WorkerHeartbeat(self))

    @property
    def store(self) -> HistoryStore:
        """The store (opened on first use)."""
        if self._store is None:
            with self._lock:
                if self._store is None:
                    if not self.url:
                        raise ConfigError("History is not installed on an app yet: pass it in App(extensions=[...])")
                    self._store = open_store(self.url)
        return self._store

    def flush(self) -> None:
        """Write buffered events now."""
        self.recorder.flush()

    def prune(self) -> int:
        """Apply the retention rules now; returns how many jobs were deleted."""
        return self.recorder.prune()

    def record_manual_retry(self, job_ids: Sequence[str], at: float | None = None) -> None:
        """Record that dead jobs were sent back to their queues (done for every ``dlq.retried``)."""
        self.flush()
        self.store.manual_retry(job_ids, time.time() if at is None else at)

    def _dlq_retried(self, event: sig.Event) -> None:
        # Synchronous on purpose: the App emits dlq.retried from a worker thread and
        # returns once sinks are done, so the CLI never exits before this is written.
        self.record_manual_retry([i for i in event.get("job_ids", "").split(",") if i], event.timestamp)

    async def _worker_stopped(self, event: sig.Event) -> None:
        def stopped() -> None:
            self.recorder.flush()
            self.store.worker_stopped(event.get("worker_id", ""), event.timestamp, event.get("reason", ""))

        await asyncio.to_thread(stopped)

    def close(self) -> None:
        """Flush, stop the writer thread and close the store."""
        self.recorder.close()
        with self._lock:
            store, self._store = self._store, None
        if store is not None:
            store.close()


def history_of(app: App) -> History:
    """The :class:`History` installed on ``app``; raises :class:`HistoryNotInstalled`."""
    for extension in app.extensions:
        if isinstance(extension, History):
            return extension
    raise HistoryNotInstalled(
        "job history is not enabled for this app: add it with"
        " App(..., extensions=[conveyor.history.History()])"
    )
