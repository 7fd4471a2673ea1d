"""Periodic jobs: ``@app.periodic(every=...)`` or ``@app.periodic(cron=...)``.

Every worker runs one :class:`Scheduler` service; the one holding the broker
lock :data:`LOCK_NAME` enqueues due ticks, the others wait to take over.
Each tick is enqueued once however many workers run:

* a leader lock, renewed every ``lock_ttl / 3`` seconds, so one process schedules;
* a claim per tick (the named lock ``conveyor:periodic:<job>:<tick-ms>``, taken
  before enqueueing), so a new leader never repeats a tick the old one took;
* a deterministic job id per (job name, tick) (:func:`tick_id`, a UUIDv5), so
  even a lost claim cannot double-enqueue while the first copy is stored.

Missed ticks (no worker ran, or leadership moved) follow ``catch_up``:
``"latest"`` (default) enqueues the most recent missed tick once; ``"none"``
skips ticks more than ``grace`` seconds late. A job seen for the first time
starts with its next tick. See docs/periodic.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, ParamSpec, TypeVar
from zoneinfo import ZoneInfo

import msgspec

from . import signals as sig
from .errors import ConfigError
from .registry import JobDef, JobFunction, SendOptions
from .retry import BackoffLike

if TYPE_CHECKING:
    from .app import App
    from .brokers import Broker
    from .worker import Worker

P = ParamSpec("P")
R = TypeVar("R")

log = logging.getLogger("conveyor.scheduler")

LOCK_NAME = "conveyor:scheduler"
LOCK_TTL = 15.0
"""Seconds a leader holds the scheduler lock without renewing it."""
TICK_HEADER = "conveyor-periodic-tick"
"""Header holding the tick (epoch milliseconds) an enqueued periodic job belongs to."""
NAMESPACE = uuid.UUID("6f0c1f52-5a0e-4d55-9a43-2b7c3c0e9f11")
"""UUIDv5 namespace of periodic job ids."""
CATCH_UP = ("latest", "none")

PERIODIC_TICK = sig.Signal(
    "periodic.tick",
    "The scheduler enqueued one tick of a periodic job.",
    (
        sig.JOB_ID,
        sig.JOB_TYPE,
        sig.QUEUE,
        sig.FloatKey("tick", "the tick's time, epoch seconds"),
        sig.DurationKey("late", "from the tick's time to its enqueue"),
        sig.BoolKey("catch_up", "true when the tick was missed and is run on catch-up"),
    ),
)


def tick_id(job_name: str, tick_ms: int) -> str:
    """The job id of one tick: a UUIDv5 of the job name and the tick time in milliseconds."""
    return str(uuid.uuid5(NAMESPACE, f"{job_name}@{tick_ms}"))


class Every:
    """Ticks every ``period`` seconds, aligned to the Unix epoch (so all hosts agree)."""

    def __init__(self, period: timedelta | float) -> None:
        seconds = period.total_seconds() if isinstance(period, timedelta) else float(period)
        if not seconds >= 1.0:
            raise ConfigError(f"every= must be at least one second, got {seconds!r}")
        self.period_ms = round(seconds * 1000)

    def latest(self, now_ms: int) -> int:
        """The latest tick at or before ``now_ms``."""
        return now_ms // self.period_ms * self.period_ms

    def following(self, tick_ms: int) -> int:
        """The first tick after ``tick_ms``."""
        return self.latest(tick_ms) + self.period_ms

    def __repr__(self) -> str:
        return f"every {self.period_ms / 1000:g}s"


class Cron:
    """Ticks on a cron expression (5 fields, or 6 with seconds) in time zone ``tz``."""

    def __init__(self, expr: str, tz: tzinfo | str = UTC) -> None:
        from croniter import croniter

        if not isinstance(expr, str) or not croniter.is_valid(expr):
            raise ConfigError(f"invalid cron expression {expr!r}")
        self.expr = expr
        self.tz = ZoneInfo(tz) if isinstance(tz, str) else tz

    def _at(self, ms: int) -> datetime:
        return datetime.fromtimestamp(ms / 1000, self.tz)

    def latest(self, now_ms: int) -> int:
        from croniter import croniter

        now = self._at(now_ms)
        prev = croniter(self.expr, now).get_prev(datetime)
        nxt = croniter(self.expr, prev).get_next(datetime)
        return round((nxt if nxt <= now else prev).timestamp() * 1000)

    def following(self, tick_ms: int) -> int:
        from croniter import croniter

        return round(croniter(self.expr, self._at(tick_ms)).get_next(datetime).timestamp() * 1000)

    def __repr__(self) -> str:
        return f"cron {self.expr!r}"


Trigger = Every | Cron


@dataclass
class Schedule:
    """One periodic job: its definition, trigger and policy, and what this process last saw."""

    definition: JobDef
    trigger: Trigger
    catch_up: str
    grace: float
    last_ms: int | None = None
    """The latest tick this process enqueued or decided to skip."""
    claims: list[int] = field(default_factory=list)
    """Ticks this process claimed, newest last (the two newest are kept)."""

    def marker(self, suffix: str | int) -> str:
        return f"conveyor:periodic:{self.definition.name}:{suffix}"


class Scheduler:
    """The worker service that enqueues periodic jobs (one per app; see :func:`periodic`)."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.schedules: dict[str, Schedule] = {}
        self.lock_ttl = LOCK_TTL
        self.clock: Callable[[], float] = time.time
        self._retry_soon = False

    def add(self, schedule: Schedule) -> None:
        self.schedules[schedule.definition.name] = schedule

    async def run(self, worker: Worker) -> None:
        """Take or renew the leader lock, enqueue due ticks, sleep until the next tick."""
        broker = await self.app.broker()
        leader = False
        try:
            while True:
                try:
                    leader = await broker.acquire_lock(LOCK_NAME, worker.id, self.lock_ttl)
                    if leader:
                        for schedule in list(self.schedules.values()):
                            await self._due(broker, schedule, worker.id)
                except Exception:
                    log.exception("scheduler cycle failed; retrying")
                    self._retry_soon = True
                await asyncio.sleep(self._pause(leader))
        finally:
            if leader:
                with contextlib.suppress(Exception):
                    await asyncio.shield(broker.release_lock(LOCK_NAME, worker.id))

    def _pause(self, leader: bool) -> float:
        renew = self.lock_ttl / 3
        if self._retry_soon:
            self._retry_soon = False
            renew = min(renew, 1.0)
        if not leader or not self.schedules:
            return renew
        now_ms = round(self.clock() * 1000)
        soonest = min(s.trigger.following(s.trigger.latest(now_ms)) for s in self.schedules.values())
        return max(0.001, min(renew, (soonest - now_ms) / 1000))

    async def _due(self, broker: Broker, s: Schedule, owner: str) -> None:
        now = self.clock()
        due = s.trigger.latest(round(now * 1000))
        if s.last_ms is not None and due <= s.last_ms:
            return
        late = now - due / 1000
        missed = late > s.grace
        if s.last_ms is None:
            # First look in this process: is the job new (start with its next tick)?
            first_ever = await broker.acquire_lock(s.marker("known"), owner, 10 * 365 * 86400.0)
            if first_ever:
                log.info("periodic job %s (%r) is new; its first tick is the next one", s.definition.name, s.trigger)
                s.last_ms = due
                return
        if missed and s.catch_up == "none":
            s.last_ms = due
            return
        if not await broker.acquire_lock(s.marker(due), owner, self._claim_ttl(s, due)):
            s.last_ms = due  # another leader enqueued this tick
            return
        try:
            job_id = await self._enqueue(s, due)
        except Exception:
            log.exception("could not enqueue tick %d of %s; will retry", due, s.definition.name)
            with contextlib.suppress(Exception):
                await broker.release_lock(s.marker(due), owner)
            self._retry_soon = True
            return
        s.last_ms = due
        s.claims.append(due)
        while len(s.claims) > 2:
            with contextlib.suppress(Exception):
                await broker.release_lock(s.marker(s.claims.pop(0)), owner)
        if self.app.bus.wants(PERIODIC_TICK):
            d = s.definition
            self.app.bus.emit(
                PERIODIC_TICK,
                job_id=job_id,
                job_type=d.name,
                queue=d.queue,
                tick=due / 1000,
                late=late,
                catch_up=missed,
            )

    def _claim_ttl(self, s: Schedule, due: int) -> float:
        return 2 * (s.trigger.following(due) - due) / 1000 + 60.0

    async def _enqueue(self, s: Schedule, due: int) -> str:
        job = self.app.build(s.definition, (), {}, SendOptions())
        headers = {**job.headers, TICK_HEADER: str(due)}
        job = msgspec.structs.replace(job, id=tick_id(s.definition.name, due), headers=headers)
        [job_id] = await self.app.send_jobs_async([job])
        return job_id


def scheduler_for(app: App) -> Scheduler:
    """The app's scheduler service, added to ``app.worker_services`` on first use."""
    for service in app.worker_services:
        if isinstance(service, Scheduler):
            return service
    scheduler = Scheduler(app)
    app.worker_services.append(scheduler)
    return scheduler


def periodic(
    app: App,
    *,
    every: timedelta | float | None = None,
    cron: str | None = None,
    tz: tzinfo | str = UTC,
    catch_up: str = "latest",
    grace: float | None = None,
    name: str | None = None,
    queue: str = "default",
    max_attempts: int = 3,
    timeout: float | timedelta | None = None,
    backoff: BackoffLike | None = None,
    retry_on: tuple[type[BaseException], ...] | type[BaseException] = (Exception,),
    priority: int = 0,
) -> Callable[[Callable[P, R]], JobFunction[P, R]]:
    """Register a job (like ``@app.job``) that the scheduler enqueues on a schedule.

    Pass ``every`` (a ``timedelta`` or seconds, at least 1s, aligned to the epoch)
    or ``cron`` (croniter syntax, evaluated in ``tz``). The function takes no
    arguments. ``catch_up="latest"`` runs the most recent missed tick once when
    a scheduler comes back; ``"none"`` skips ticks more than ``grace`` seconds
    late (default: 1s, or a tenth of the period if longer).
    """
    if (every is None) == (cron is None):
        raise ConfigError("@app.periodic needs every= or cron= (exactly one)")
    if catch_up not in CATCH_UP:
        raise ConfigError(f"catch_up must be one of {', '.join(CATCH_UP)}, not {catch_up!r}")
    trigger: Trigger = Every(every) if every is not None else Cron(cron or "", tz)
    if grace is None:
        sample = trigger.latest(round(time.time() * 1000))
        grace = max(1.0, (trigger.following(sample) - sample) / 10000)
    if grace < 0:
        raise ConfigError("grace must be >= 0 seconds")
    job = app.job(
        name=name,
        queue=queue,
        max_attempts=max_attempts,
        timeout=timeout,
        backoff=backoff,
        retry_on=retry_on,
        priority=priority,
    )

    def register(fn: Callable[P, R]) -> JobFunction[P, R]:
        try:
            inspect.signature(fn).bind()
        except TypeError:
            raise ConfigError(f"periodic job {getattr(fn, '__qualname__', fn)!r} must take no arguments") from None
        except ValueError:
            pass  # no signature to inspect (some builtins)
        registered: JobFunction[P, R] = job(fn)
        scheduler_for(app).add(Schedule(registered.definition, trigger, catch_up, float(grace)))
        return registered

    return register


def schedules(app: App) -> list[tuple[str, str, int]]:
    """``(job name, trigger, next tick in epoch ms)`` of each periodic job of ``app``."""
    now_ms = round(time.time() * 1000)
    found: list[tuple[str, str, int]] = []
    for service in app.worker_services:
        if isinstance(service, Scheduler):
            for name, s in service.schedules.items():
                found.append((name, repr(s.trigger), s.trigger.following(s.trigger.latest(now_ms))))
    return found


__all__ = ["LOCK_NAME", "PERIODIC_TICK", "Cron", "Every", "Scheduler", "periodic", "scheduler_for", "tick_id"]
