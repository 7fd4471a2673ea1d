"""Job history: every job's transitions and attempts, failure clusters, retry loops, workers.

Enable it with ``App(url, extensions=[History()])``; read it with
``history_of(app).store`` (a :class:`HistoryStore`). See docs/history.md.
"""

from .extension import History, HistoryNotInstalled, history_of, history_url, open_store
from .sqlstore import AmbiguousId, HistoryUnavailable
from .store import (
    EVENT_KINDS,
    OUTCOMES,
    STATES,
    AttemptRecord,
    Change,
    ErrorRecord,
    EventRecord,
    FailureCluster,
    FailureCount,
    HistoryStore,
    JobRecord,
    JobTimeline,
    RetryLoopJob,
    RetryLoops,
    RetryLoopType,
    RunningJobRecord,
    Throughput,
    When,
    WorkerRecord,
    epoch,
)
from .workers import live_consumers, queue_consumers

__all__ = [
    "EVENT_KINDS",
    "OUTCOMES",
    "STATES",
    "AmbiguousId",
    "AttemptRecord",
    "Change",
    "ErrorRecord",
    "EventRecord",
    "FailureCluster",
    "FailureCount",
    "History",
    "HistoryNotInstalled",
    "HistoryStore",
    "HistoryUnavailable",
    "JobRecord",
    "JobTimeline",
    "RetryLoopJob",
    "RetryLoopType",
    "RetryLoops",
    "RunningJobRecord",
    "Throughput",
    "When",
    "WorkerRecord",
    "epoch",
    "history_of",
    "history_url",
    "live_consumers",
    "open_store",
    "queue_consumers",
]
