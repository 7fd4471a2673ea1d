"""Typed signals and the bus that carries them to sinks.

A :class:`Signal` has a name, a description and typed keys. Emitting one builds
an :class:`Event` and hands it to every sink subscribed to that signal or to
all signals. A sink that raises is logged and isolated: the emitter and the
other sinks carry on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import threading
import time
import traceback as tb
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar, Generic, TypeVar

log = logging.getLogger("conveyor.signals")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """An error as data: exception type, message and formatted traceback."""

    type: str
    message: str
    traceback: str = ""

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorInfo:
        text = "".join(tb.format_exception(exc))
        return cls(type(exc).__qualname__, str(exc), text)

    def to_dict(self) -> dict[str, str]:
        return {"type": self.type, "message": self.message, "traceback": self.traceback}


class Key(ABC, Generic[T]):
    """A typed attribute of a signal. Subclasses fix the value type."""

    kind: ClassVar[str] = ""
    exact: ClassVar[type | None] = None
    """Values of exactly this type are accepted as they are (the fast path)."""
    __slots__ = ("description", "name")

    def __init__(self, name: str, description: str = "") -> None:
        if not name or not name.replace("_", "").replace(".", "").isalnum():
            raise ValueError(f"invalid key name {name!r}: use letters, digits, '_' and '.'")
        self.name = name
        self.description = description

    @abstractmethod
    def coerce(self, value: Any) -> T:
        """Return ``value`` as this key's type, or raise ``TypeError``."""

    def _reject(self, value: Any) -> TypeError:
        return TypeError(f"key {self.name!r} takes {self.kind} values, got {type(value).__name__}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class StringKey(Key[str]):
    kind = "string"
    exact = str

    def coerce(self, value: Any) -> str:
        if isinstance(value, str):
            return value
        raise self._reject(value)


class IntKey(Key[int]):
    kind = "int"
    exact = int

    def coerce(self, value: Any) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise self._reject(value)


class FloatKey(Key[float]):
    kind = "float"
    exact = float

    def coerce(self, value: Any) -> float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise self._reject(value)


class BoolKey(Key[bool]):
    kind = "bool"
    exact = bool

    def coerce(self, value: Any) -> bool:
        if isinstance(value, bool):
            return value
        raise self._reject(value)


class DurationKey(Key[float]):
    """A duration in seconds; accepts numbers and ``timedelta``."""

    kind = "duration"
    exact = float

    def coerce(self, value: Any) -> float:
        if isinstance(value, timedelta):
            return value.total_seconds()
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise self._reject(value)


class ErrorKey(Key[ErrorInfo]):
    """An error; accepts :class:`ErrorInfo` and exceptions."""

    kind = "error"
    exact = ErrorInfo

    def coerce(self, value: Any) -> ErrorInfo:
        if isinstance(value, ErrorInfo):
            return value
        if isinstance(value, BaseException):
            return ErrorInfo.from_exception(value)
        raise self._reject(value)


class Signal:
    """A named, documented kind of event with typed keys."""

    __slots__ = ("_exact", "description", "keys", "name")

    def __init__(self, name: str, description: str, keys: Iterable[Key[Any]] = ()) -> None:
        if not name:
            raise ValueError("a signal needs a name")
        self.name = name
        self.description = description
        self.keys: Mapping[str, Key[Any]] = {k.name: k for k in keys}
        self._exact: dict[str, type | None] = {k.name: k.exact for k in self.keys.values()}

    def _coerce(self, name: str, value: Any) -> Any:
        """``value`` as key ``name``'s type; ``TypeError`` for an unknown key or a bad value."""
        key = self.keys.get(name)
        if key is None:
            raise TypeError(f"signal {self.name!r} has no key {name!r}")
        return key.coerce(value)

    def event(self, attrs: Mapping[str, Any]) -> Event:
        """Build an event, checking every attribute against the declared keys."""
        exact = self._exact
        values = {
            name: value if exact.get(name) is type(value) else self._coerce(name, value)
            for name, value in attrs.items()
        }
        return Event(self, values, time.time())

    def __repr__(self) -> str:
        return f"Signal({self.name!r})"


@dataclass(frozen=True, slots=True)
class Event:
    """One emission of a signal: its attributes and when it happened."""

    signal: Signal
    attrs: Mapping[str, Any]
    timestamp: float

    @property
    def name(self) -> str:
        return self.signal.name

    def get(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)


Sink = Callable[[Event], Awaitable[None] | None]


class Subscription:
    """Returned by :meth:`Bus.subscribe`; call :meth:`cancel` to unsubscribe."""

    def __init__(self, bus: Bus, sink: Sink, names: frozenset[str] | None) -> None:
        self._bus, self.sink, self.names = bus, sink, names

    def cancel(self) -> None:
        self._bus._remove(self)


class Bus:
    """Delivers events to sinks. Thread-safe; emitting with no subscriber costs a lookup."""

    def __init__(self) -> None:
        self._subs: list[Subscription] = []
        self._routes: dict[str, tuple[Sink, ...]] = {}
        self._all: tuple[Sink, ...] = ()
        self._lock = threading.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._threaded: set[concurrent.futures.Future[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Run async sinks emitted from other threads on ``loop``."""
        self._loop = loop

    def subscribe(self, sink: Sink, signals: Iterable[Signal | str] | None = None) -> Subscription:
        """Send events to ``sink``: all of them, or only those of ``signals``."""
        names = None if signals is None else frozenset(s.name if isinstance(s, Signal) else s for s in signals)
        sub = Subscription(self, sink, names)
        with self._lock:
            self._subs.append(sub)
            self._rebuild()
        return sub

    def _remove(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)
                self._rebuild()

    def _rebuild(self) -> None:
        self._all = tuple(s.sink for s in self._subs if s.names is None)
        routes: dict[str, list[Sink]] = {}
        for sub in self._subs:
            for name in sub.names or ():
                routes.setdefault(name, []).append(sub.sink)
        self._routes = {name: tuple(sinks) for name, sinks in routes.items()}

    def wants(self, signal: Signal) -> bool:
        """True when some sink would receive ``signal``."""
        return bool(self._all) or signal.name in self._routes

    def emit(self, signal: Signal, /, **attrs: Any) -> None:
        """Emit ``signal``. Bad attributes raise ``TypeError``, whether or not anything
        subscribes; a failing sink never raises."""
        sinks = self._routes.get(signal.name, ()) + self._all
        if not sinks:  # validate anyway, inline (the hot case): one dict lookup per attribute
            exact = signal._exact
            for name, value in attrs.items():
                if exact.get(name) is not type(value):
                    signal._coerce(name, value)
            return
        event = signal.event(attrs)
        for sink in sinks:
            try:
                result = sink(event)
            except Exception:
                log.exception("sink %r failed on %s", sink, signal.name)
                continue
            if result is not None and inspect.isawaitable(result):
                self._schedule(sink, result, signal.name)

    def _schedule(self, sink: Sink, awaitable: Awaitable[None], name: str) -> None:
        async def guarded() -> None:
            try:
                await awaitable
            except Exception:
                log.exception("async sink %r failed on %s", sink, name)

        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not None:
            task = running.create_task(guarded())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif self._loop is not None and self._loop.is_running():
            cfut = asyncio.run_coroutine_threadsafe(guarded(), self._loop)
            self._threaded.add(cfut)
            cfut.add_done_callback(self._threaded.discard)
        else:
            asyncio.run(guarded())

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait for pending async sinks (at shutdown)."""
        pending: list[asyncio.Future[None]] = [t for t in self._tasks if not t.done()]
        pending += [asyncio.wrap_future(f) for f in list(self._threaded) if not f.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)


# -- built-in signals -----------------------------------------------------------
JOB_ID = StringKey("job_id", "the job's UUIDv7")
JOB_TYPE = StringKey("job_type", "the registered job name")
QUEUE = StringKey("queue", "queue name")
ATTEMPT = IntKey("attempt", "1 on the first delivery")
WORKER_ID = StringKey("worker_id", "the worker process's id")
ERROR = ErrorKey("error", "the exception raised")

_JOB = (JOB_ID, JOB_TYPE, QUEUE)
_RUN = (*_JOB, ATTEMPT, WORKER_ID)

JOB_ENQUEUED = Signal(
    "job.enqueued",
    "A job was stored in its queue.",
    (*_JOB, IntKey("priority"), DurationKey("delay", "how long until it is due")),
)
JOB_STARTED = Signal(
    "job.started",
    "A worker began an attempt.",
    (
        *_RUN,
        DurationKey("latency", "from due to start"),
        StringKey("redelivery", "why it was delivered again, if it was"),
    ),
)
JOB_COMPLETED = Signal(
    "job.completed",
    "An attempt finished without error.",
    (*_RUN, DurationKey("duration")),
)
JOB_FAILED = Signal(
    "job.failed",
    "An attempt raised (or timed out).",
    (*_RUN, DurationKey("duration"), ERROR, BoolKey("will_retry")),
)
JOB_RETRYING = Signal(
    "job.retrying",
    "A failed job was scheduled to run again.",
    (*_RUN, DurationKey("delay"), ERROR),
)
JOB_DEAD = Signal(
    "job.dead",
    "A job moved to the dead-letter queue.",
    (*_RUN, StringKey("reason"), ERROR),
)
QUEUE_DEPTH = Signal(
    "queue.depth",
    "Periodic per-queue counts.",
    (
        QUEUE,
        IntKey("ready"),
        IntKey("delayed"),
        IntKey("in_flight"),
        IntKey("dead"),
        DurationKey("oldest_age", "age of the oldest ready job"),
    ),
)
WORKER_STARTED = Signal(
    "worker.started",
    "A worker began consuming.",
    (WORKER_ID, StringKey("queues", "comma-separated"), IntKey("concurrency"), StringKey("host"), IntKey("pid")),
)
WORKER_STOPPED = Signal(
    "worker.stopped",
    "A worker stopped.",
    (WORKER_ID, StringKey("reason")),
)
WORKER_IDLE = Signal("worker.idle", "A worker has no job running.", (WORKER_ID,))
WORKER_BUSY = Signal(
    "worker.busy",
    "A worker went from idle to running jobs.",
    (WORKER_ID, IntKey("in_flight")),
)

# -- worker errors: conveyor's own code failing around a job ------------------------
STAGE = StringKey(
    "stage",
    "what failed: decode, retry_policy, backoff, nack, dead, signal or execute",
)
WORKER_ERROR = Signal(
    "worker.error",
    "Conveyor's own code failed around a job (not the handler); the worker carried on.",
    (*_RUN, STAGE, ERROR),
)


# -- stuck worker threads (a sync handler still running after its timeout) ---------
THREAD = StringKey("thread", "the worker thread's name")
STUCK = IntKey("stuck", "worker threads stuck now")
WORKER_THREAD_STUCK = Signal(
    "worker.thread_stuck",
    "A sync handler ran past its timeout and its thread is still running it; the job was settled.",
    (
        *_RUN,
        THREAD,
        DurationKey("running", "how long the call has been running"),
        STUCK,
        BoolKey("replaced", "a new thread took its place"),
    ),
)
WORKER_THREAD_RETURNED = Signal(
    "worker.thread_returned",
    "A stuck thread's call finally returned; its result was discarded.",
    (*_RUN, THREAD, DurationKey("running", "how long the call ran in all"), STUCK),
)
WORKER_CAPACITY_REDUCED = Signal(
    "worker.capacity_reduced",
    "A stuck thread was not replaced (the cap of replacement threads is reached): fewer jobs run at once.",
    (WORKER_ID, IntKey("concurrency"), IntKey("threads", "threads serving jobs now"), STUCK),
)


# -- dead letters: operations through the App's DLQ API, and retention ----------
REQUESTED_BY = StringKey("requested_by", "who asked: cli, dashboard or api")
JOB_IDS = StringKey("job_ids", "the ids touched, comma-separated")
DLQ_RETRIED = Signal(
    "dlq.retried",
    "Dead letters were sent back to their queues with fresh attempts.",
    (IntKey("count"), JOB_IDS, StringKey("queue", "the queue of an --all retry, else ''"), REQUESTED_BY),
)
DLQ_PURGED = Signal(
    "dlq.purged",
    "Dead letters were deleted for good.",
    (IntKey("count"), JOB_IDS, StringKey("queue", "the queue of an --all purge, else ''"), REQUESTED_BY),
)
DLQ_PRUNED = Signal(
    "dlq.pruned",
    "Retention deleted dead letters older than max_age or beyond max_per_queue.",
    (IntKey("count"), DurationKey("max_age", "0 when unlimited"), IntKey("max_per_queue", "0 when unlimited")),
)


# -- lease safety: a worker's lease lost to another worker, and the ack it cost ---------
JOB_LEASE_LOST = Signal(
    "job.lease_lost",
    "A worker's lease on a job it held was lost (it expired and was rescued, or the job is"
    " gone); another worker may run the job. A job not yet started is dropped; a running"
    " one finishes, and its ack is refused.",
    (
        *_RUN,
        StringKey(
            "detected_by",
            "'extend' (the lease heartbeat), 'ack' (a refused ack), 'nack' (a refused retry)"
            " or 'dead' (a refused dead-letter)",
        ),
        BoolKey("started", "whether the job had started running in this worker"),
    ),
)
JOB_ACK_REFUSED = Signal(
    "job.ack_refused",
    "A job finished but the broker refused its ack (the lease-token check): its lease had"
    " been lost, so this run is not counted as completed.",
    (*_RUN, DurationKey("duration")),
)

BUILTIN: tuple[Signal, ...] = (
    JOB_ENQUEUED,
    JOB_STARTED,
    JOB_COMPLETED,
    JOB_FAILED,
    JOB_RETRYING,
    JOB_DEAD,
    QUEUE_DEPTH,
    WORKER_STARTED,
    WORKER_STOPPED,
    WORKER_IDLE,
    WORKER_BUSY,
    WORKER_ERROR,
    WORKER_THREAD_STUCK,
    WORKER_THREAD_RETURNED,
    WORKER_CAPACITY_REDUCED,
    DLQ_RETRIED,
    DLQ_PURGED,
    DLQ_PRUNED,
    JOB_LEASE_LOST,
    JOB_ACK_REFUSED,
)
