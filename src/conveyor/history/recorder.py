"""Buffers job signals and writes them to the history store in batches, off the hot path.

The sink only appends the event to a deque. A daemon thread turns events into
:class:`Change` rows (computing failure fingerprints there) and writes them in
one transaction every ``flush_interval`` seconds, or sooner when a batch fills
up; it prunes old history every ``prune_interval`` seconds.
"""

from __future__ import annotations

import atexit
import collections
import logging
import random
import threading
import time
from collections.abc import Callable
from datetime import timedelta

from .. import signals as sig
from .fingerprint import fingerprint
from .store import DEAD, ENQUEUED, SCHEDULED, Change, ErrorRecord, HistoryStore

log = logging.getLogger("conveyor.history")

#: The signals the recorder listens to.
JOB_SIGNALS = (
    sig.JOB_ENQUEUED, sig.JOB_STARTED, sig.JOB_COMPLETED, sig.JOB_FAILED, sig.JOB_RETRYING, sig.JOB_DEAD,
    sig.JOB_LEASE_LOST,
)  # fmt: skip
_KINDS = {s.name: s.name.removeprefix("job.") for s in JOB_SIGNALS}
_MAX_FAILED_WRITES = 3
_MAX_DOOMED = 10_000


def _error(event: sig.Event) -> ErrorRecord | None:
    info: sig.ErrorInfo | None = event.get("error")
    if info is None:
        return None
    fp = fingerprint(info.type, info.message, info.traceback, str(event.get("job_type", "")))
    return ErrorRecord(info.type, info.message, info.traceback, fp)


class Recorder:
    """The buffer and writer thread of one process."""

    def __init__(
        self,
        store: Callable[[], HistoryStore],
        *,
        flush_interval: float,
        batch_size: int,
        max_buffer: int,
        retention: timedelta | None,
        max_rows: int | None,
        prune_interval: float,
    ) -> None:
        self._store = store
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self.retention = retention
        self.max_rows = max_rows
        self.prune_interval = prune_interval
        self._buffer: collections.deque[sig.Event] = collections.deque(maxlen=max_buffer)
        self._dropped = 0
        self._wake = threading.Event()
        self._write_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._pending: list[Change] = []
        self._failed_writes = 0
        self._doomed: dict[str, ErrorRecord | None] = {}
        self._next_prune = time.monotonic() + prune_interval * random.uniform(0.05, 0.5)

    # -- the sink (runs on the job hot path) ------------------------------------
    def sink(self, event: sig.Event) -> None:
        """Queue ``event`` for the writer thread."""
        buffer = self._buffer
        if len(buffer) == buffer.maxlen:
            self._dropped += 1
        buffer.append(event)
        if self._thread is None:
            self._start()
        if len(buffer) >= self.batch_size:
            self._wake.set()

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is not None or self._closed:
                return
            self._thread = threading.Thread(target=self._loop, name="conveyor-history", daemon=True)
            self._thread.start()
            atexit.register(self.close)

    def _loop(self) -> None:
        while not self._closed:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            if self._closed:
                return
            self.flush()
            if time.monotonic() >= self._next_prune:
                self._next_prune = time.monotonic() + self.prune_interval
                self.prune()

    # -- writing ----------------------------------------------------------------
    def flush(self) -> None:
        """Write every buffered event now (the worker calls this when it stops)."""
        with self._write_lock:
            while True:
                changes = self._pending
                while self._buffer and len(changes) < self.batch_size * 4:
                    change = self._change(self._buffer.popleft())
                    if change is not None:
                        changes.append(change)
                if not changes:
                    return
                try:
                    self._store().record(changes)
                except Exception:
                    self._failed_writes += 1
                    if self._failed_writes >= _MAX_FAILED_WRITES:
                        log.exception("history: dropping %d events after repeated write failures", len(changes))
                        self._pending, self._failed_writes = [], 0
                    else:
                        log.warning("history: writing %d events failed; will retry", len(changes), exc_info=True)
                        self._pending = changes
                    return
                self._pending, self._failed_writes = [], 0
                if self._dropped:
                    log.warning("history: buffer full, %d events were dropped", self._dropped)
                    self._dropped = 0

    def _change(self, event: sig.Event) -> Change | None:
        kind = _KINDS.get(event.name)
        if kind is None:
            return None
        a = event.attrs
        job_id = a.get("job_id", "")
        error: ErrorRecord | None = None
        counts = False
        if kind == "failed":
            error = _error(event)
            if not a.get("will_retry", False):
                if len(self._doomed) >= _MAX_DOOMED:
                    self._doomed.clear()
                self._doomed[job_id] = error
        elif kind == DEAD:
            if job_id in self._doomed:
                error = self._doomed.pop(job_id) or _error(event)
            else:
                error, counts = _error(event), True
        elif kind == "enqueued":
            kind = SCHEDULED if a.get("delay", 0.0) > 0 else ENQUEUED
        return Change(
            kind=kind,
            job_id=job_id,
            job_type=a.get("job_type", ""),
            queue=a.get("queue", ""),
            at=event.timestamp,
            attempt=a.get("attempt", 0),
            worker_id=a.get("worker_id", ""),
            priority=a.get("priority", 0),
            delay=a.get("delay", 0.0),
            redelivery=a.get("redelivery", ""),
            duration=a.get("duration"),
            error=error,
            reason=a.get("reason", a.get("detected_by", "")),
            counts_as_failure=counts,
        )

    def prune(self) -> int:
        """Apply the retention rules now; returns the number of jobs deleted."""
        if self.retention is None and self.max_rows is None:
            return 0
        try:
            return self._store().prune(self.retention, self.max_rows)
        except Exception:
            log.warning("history: pruning failed", exc_info=True)
            return 0

    def close(self) -> None:
        """Flush and stop the writer thread."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        self.flush()
