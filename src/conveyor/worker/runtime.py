"""The worker loop: lease, run with bounded concurrency, heartbeat, shut down gracefully."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import uuid_utils

from .. import signals as sig
from ..brokers import WORKER_SHUTDOWN, Broker, Delivery
from ..brokers.display import display_url
from ..errors import ConfigError
from ..registry import check_name
from .acker import Acker
from .cancel import cancel_all
from .executor import Counters, Executor, JobRef, cancelled_by_worker, job_context
from .stuck import StuckReporter
from .threads import StuckThread, ThreadRunner

if TYPE_CHECKING:
    from ..app import App

log = logging.getLogger("conveyor.worker")

T = TypeVar("T")

#: Lost leases a worker remembers (so each is reported once); they are rare.
_LOST_MEMORY = 10_000


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """Worker settings; see ``conveyor worker --help``."""

    queues: tuple[str, ...] = ()
    concurrency: int = 8
    prefetch: int | None = None
    burst: bool = False
    shutdown_timeout: float = 30.0
    visibility_timeout: float = 60.0
    poll_interval: float = 1.0
    rescue_interval: float = 5.0
    stats_interval: float = 5.0
    spare_threads: int | None = None
    """Most threads started to replace threads stuck past a sync job's timeout (None: ``concurrency``)."""

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ConfigError("concurrency must be at least 1")
        if self.spare_threads is not None and self.spare_threads < 0:
            raise ConfigError("spare threads must be >= 0")
        if self.prefetch is not None and self.prefetch < 0:
            raise ConfigError("prefetch must be >= 0")
        if self.shutdown_timeout < 0:
            raise ConfigError("shutdown timeout must be >= 0")
        if self.visibility_timeout <= 0 or self.poll_interval <= 0:
            raise ConfigError("visibility timeout and poll interval must be > 0")
        for q in self.queues:
            check_name("queue", q)


@dataclass(frozen=True, slots=True)
class RunningJob:
    """A job a worker is running now."""

    id: str
    type: str
    queue: str
    attempts: int
    started_at: float


class WorkerService(Protocol):
    """A long-running task that lives as long as a worker (heartbeats, schedulers, monitors).

    Register with ``app.worker_services.append(service)``. ``run`` is started
    after the worker starts and cancelled when it stops; if it raises, the
    error is logged and the worker carries on without it.
    """

    async def run(self, worker: Worker) -> None: ...


@dataclass(frozen=True, slots=True)
class WorkerResult:
    """How a worker run ended."""

    worker_id: str
    reason: str
    counters: Counters
    abandoned: int = 0
    """Jobs still running in threads when the worker gave up on them."""


class Worker:
    """Consumes jobs of ``app`` until stopped (or, in burst mode, until no work is left)."""

    def __init__(self, app: App, config: WorkerConfig | None = None) -> None:
        self.app = app
        self.config = config or WorkerConfig()
        self.queues: tuple[str, ...] = self.config.queues or tuple(
            sorted({d.queue for d in app.registry.values()} or {"default"})
        )
        self.id = f"{socket.gethostname()}:{os.getpid()}:{str(uuid_utils.uuid4())[:8]}"
        c = self.config
        self.capacity = c.concurrency + (c.concurrency if c.prefetch is None else c.prefetch)
        self._stop_requests = 0
        self._stopping = asyncio.Event()
        self._forced = asyncio.Event()
        self._running: dict[str, Delivery] = {}
        self._started_at: dict[str, float] = {}
        self.started_at = time.time()
        self._buffered: dict[str, Delivery] = {}
        self._lost: dict[tuple[str, str], None] = {}
        self._claim: tuple[str, float] | None = None
        """The claim of a lease call that raised (and when it was first sent), until one succeeds."""
        self._vt = self.config.visibility_timeout
        self._renewed: dict[str, float] = {}
        """Job id -> monotonic time before the call that last set its lease deadline."""
        self._retry_horizon = 0.0
        self._reason = "stopped"
        self._threads: ThreadRunner[JobRef] | None = None
        self._left_behind: set[asyncio.Task[Any]] = set()
        """Tasks that ignored :func:`~conveyor.worker.cancel.cancel_all` (logged); not awaited again."""

    # -- control --------------------------------------------------------------
    def request_stop(self, reason: str = "signal") -> None:
        """First call: stop leasing and drain. Second call: requeue running jobs and exit."""
        self._stop_requests += 1
        if self._stop_requests == 1:
            self._reason = reason
            log.info("worker %s stopping (%s); waiting for running jobs", self.id, reason)
            self._stopping.set()
        else:
            log.warning("worker %s: second stop request; requeueing running jobs", self.id)
            self._forced.set()

    def current_jobs(self) -> list[RunningJob]:
        """The jobs running in this worker now."""
        return [
            RunningJob(d.id, d.type, d.queue, d.attempts, self._started_at.get(d.id, 0.0))
            for d in list(self._running.values())
        ]

    def stuck_threads(self) -> list[StuckThread[JobRef]]:
        """Threads still running a sync job past its timeout (the job was already settled)."""
        return [] if self._threads is None else self._threads.stuck()

    def _note_retry(self, retry_at: float) -> None:
        self._retry_horizon = max(self._retry_horizon, retry_at)

    # -- main -----------------------------------------------------------------
    async def run(self) -> WorkerResult:
        """Run until stopped; returns a summary."""
        c = self.config
        broker = await self.app.broker()
        self.app.bus.bind_loop(asyncio.get_running_loop())
        acker = Acker(broker)
        report = StuckReporter(self.app.bus, self.id, c.concurrency)
        threads = self._threads = ThreadRunner[JobRef](
            asyncio.get_running_loop(), c.concurrency, spare=c.spare_threads,
            on_stuck=report.stuck, on_returned=report.returned, on_short=report.short,
        )  # fmt: skip
        executor = Executor(
            self.app, broker, acker, threads, self.id, self._note_retry, self._lease_lost, self._lease_live
        )
        buffer: asyncio.Queue[Delivery | None] = asyncio.Queue()
        slot_freed = asyncio.Event()
        emit = self.app.bus.emit
        emit(
            sig.WORKER_STARTED,
            worker_id=self.id,
            queues=",".join(self.queues),
            concurrency=c.concurrency,
            host=socket.gethostname(),
            pid=os.getpid(),
        )
        # Which queues, on which broker (password masked, SQLite by absolute path): the line an
        # operator reads first when jobs wait in a queue no worker consumes.
        log.info(
            "worker %s started: consuming queues %s from %s (concurrency %d)",
            self.id,
            ", ".join(self.queues),
            display_url(self.app.url),
            c.concurrency,
        )

        async def consume() -> None:
            # Survives anything a job (or conveyor around it) raises; ends on None or the
            # worker's own cancellation of this task.
            while True:
                d = await buffer.get()
                if d is None:
                    return
                if self._buffered.get(d.id) is d:
                    del self._buffered[d.id]
                if self._lost and (d.id, d.lease_token) in self._lost:
                    slot_freed.set()
                    continue  # lost before it started: whoever holds the lease runs it
                if not self._running:
                    executor.emit_worker(d, sig.WORKER_BUSY, in_flight=1)
                self._running[d.id] = d
                self._started_at[d.id] = time.time()
                try:
                    await executor.execute(d)
                except BaseException as exc:
                    if cancelled_by_worker(exc):
                        raise
                    executor.report(d, d.type, "execute", exc, "its lease will expire and it will run again")
                finally:
                    # Only this delivery's entries: a newer delivery of the same job may hold them.
                    if self._running.get(d.id) is d:
                        del self._running[d.id]
                        self._started_at.pop(d.id, None)
                        self._renewed.pop(d.id, None)
                    slot_freed.set()
                    if not self._running and not self._buffered:
                        executor.emit_worker(d, sig.WORKER_IDLE)

        background = [
            asyncio.create_task(acker.run(), name="conveyor-acker"),
            asyncio.create_task(self._heartbeat(broker), name="conveyor-heartbeat"),
            asyncio.create_task(self._housekeeping(broker), name="conveyor-housekeeping"),
        ]
        consumers = [asyncio.create_task(consume()) for _ in range(c.concurrency)]
        background += [
            asyncio.create_task(self._service(service), name=f"conveyor-service-{type(service).__name__}")
            for service in self.app.worker_services
        ]
        abandoned = 0
        try:
            await self._fetch(broker, buffer, slot_freed)
            abandoned = await self._shutdown(broker, buffer, consumers, acker, threads)
        finally:
            await cancel_all([t for t in (*consumers, *background) if t not in self._left_behind])
            threads.stop()
            emit(sig.WORKER_STOPPED, worker_id=self.id, reason=self._reason)
            await self.app.bus.drain()
        return WorkerResult(self.id, self._reason, executor.counters, abandoned)

    async def _fetch(self, broker: Broker, buffer: asyncio.Queue[Delivery | None], slot_freed: asyncio.Event) -> None:
        c = self.config
        idle_wait = 0.01
        swept = False  # burst: expired leases of crashed workers are work too
        while not self._stopping.is_set():
            held = len(self._running) + len(self._buffered)
            free = self.capacity - held
            if free <= 0 or (self._buffered and free < self.capacity // 2):
                slot_freed.clear()
                await self._until(slot_freed.wait(), None)
                continue
            # A claim per call; a call that raised is repeated with its claim, so a
            # lease the broker committed before the reply was lost is not leased again.
            claim, sent = self._claim or (str(uuid_utils.uuid4()), time.monotonic())
            try:
                batch = await broker.lease(self.queues, free, c.visibility_timeout, claim=claim)
            except Exception:
                self._claim = claim, sent
                log.exception("lease failed; retrying in %.1fs with the same claim", c.poll_interval)
                await self._until(asyncio.sleep(c.poll_interval), None)
                continue
            self._claim = None
            if batch:
                idle_wait = 0.01
                swept = False
                for d in batch:
                    self._renewed[d.id] = sent
                    self._buffered[d.id] = d
                    buffer.put_nowait(d)
                if len(batch) == free:
                    continue  # there may be more: lease again at once
                # A short batch drained the queue: wait for news instead of leasing empty-handed.
            elif c.burst and held == 0 and time.time() >= self._retry_horizon:
                if not swept:  # requeue expired leases, then lease once more before leaving
                    swept = True
                    await _quietly(broker.rescue(), "rescue expired leases")
                    continue
                self._reason = "burst_done"
                return
            timeout = idle_wait
            if c.burst and not held:
                timeout = min(timeout, max(0.001, self._retry_horizon - time.time()))
            # In burst mode a finished job may be the last one: wake up to check.
            await self._until(broker.wait(self.queues, timeout), slot_freed if c.burst else None)
            if not batch:
                idle_wait = min(idle_wait * 2, c.poll_interval)

    async def _until(self, coro: Coroutine[Any, Any, Any], also: asyncio.Event | None) -> None:
        """Await ``coro`` unless a stop (or ``also``) comes first."""
        waits = [asyncio.ensure_future(coro), asyncio.ensure_future(self._stopping.wait())]
        if also is not None:
            also.clear()
            waits.append(asyncio.ensure_future(also.wait()))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _shutdown(
        self,
        broker: Broker,
        buffer: asyncio.Queue[Delivery | None],
        consumers: Sequence[asyncio.Task[None]],
        acker: Acker,
        threads: ThreadRunner[JobRef],
    ) -> int:
        """Give back unstarted jobs, let running ones finish, then requeue stragglers."""
        unstarted = []
        if self._claim is not None:  # a lease reply was lost: give back what that claim holds
            claimed = await _quietly(broker.reclaim(self._claim[0]), "recover the jobs of a lost lease reply")
            self._claim = None
            unstarted += claimed or []
        while not buffer.empty():
            d = buffer.get_nowait()
            if d is not None:
                unstarted.append(d)
                self._buffered.pop(d.id, None)
        if unstarted:
            await _quietly(broker.release(unstarted, WORKER_SHUTDOWN), "release unstarted jobs")
        for _ in consumers:
            buffer.put_nowait(None)
        await self._wait_consumers(consumers)
        stragglers = list(self._running.values())
        if stragglers:
            self._reason = "forced" if self._forced.is_set() else "shutdown_timeout"
            log.warning("requeueing %d running jobs (%s)", len(stragglers), self._reason)
            # Settle them before they go back: a sync call still waiting for a thread never starts.
            waiting = {ref.id for ref in threads.give_up_waiting()}
            self._left_behind |= await cancel_all(consumers)
            await acker.flush()  # a job that finished meanwhile is acked, and its release below is a no-op
            never_began = [d for d in stragglers if d.id in waiting]
            started = [d for d in stragglers if d.id not in waiting]
            if never_began:
                await _quietly(broker.release(never_began, WORKER_SHUTDOWN), "release unstarted jobs")
            # Past MAX_REFUNDED_INTERRUPTIONS, the interrupted attempt of a started job counts.
            if started:
                await _quietly(broker.release(started, WORKER_SHUTDOWN, interrupted=True), "requeue running jobs")
            self._running.clear()
        await acker.flush()
        return len(stragglers)

    async def _wait_consumers(self, consumers: Sequence[asyncio.Task[None]]) -> None:
        """Wait for running jobs until they finish, the timeout passes or a second stop."""
        forced = asyncio.ensure_future(self._forced.wait())
        waits: list[asyncio.Future[Any]] = [asyncio.gather(*consumers, return_exceptions=True), forced]
        await asyncio.wait(
            waits,
            timeout=self.config.shutdown_timeout,
            return_when=asyncio.FIRST_COMPLETED,
        )
        forced.cancel()

    async def _service(self, service: WorkerService) -> None:
        try:
            await service.run(self)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("worker service %r failed; the worker carries on without it", service)

    async def _heartbeat(self, broker: Broker) -> None:
        vt = self.config.visibility_timeout
        while True:
            await asyncio.sleep(vt / 3)
            live = {d.id: d for d in [*self._buffered.values(), *self._running.values()]}
            if not live:
                continue
            sent = time.monotonic()
            lost = await _quietly(broker.extend(list(live.values()), vt), "extend leases")
            if lost is None:
                continue  # the broker did not answer: the deadlines stay as they were
            for job_id in lost:
                d = live[job_id]
                # A job that finished while extend was in flight is not lost: it is acked, or its
                # ack (refused if the lease really was lost) will say so.
                if self._running.get(job_id) is d or self._buffered.get(job_id) is d:
                    self._lease_lost(d, "extend")
            for job_id in live.keys() - set(lost):
                if job_id in self._renewed:
                    self._renewed[job_id] = sent

    def _lease_live(self, d: Delivery) -> bool:
        """Whether the lease of ``d`` is surely still held: not reported lost, and its
        deadline (counted from before the call that set it) not yet passed."""
        renewed = self._renewed.get(d.id)
        return (
            renewed is not None
            and time.monotonic() < renewed + self._vt
            and not (self._lost and (d.id, d.lease_token) in self._lost)
        )

    def _lease_lost(self, d: Delivery, detected_by: str) -> None:
        """Report (once) that the lease of ``d`` was lost; drop ``d`` if it has not started.

        A running job is left to finish: stopping it half-way could do more harm
        than finishing, and its ack is refused, so it is not counted twice.
        """
        key = (d.id, d.lease_token)
        if key in self._lost:
            return
        self._lost[key] = None
        if len(self._lost) > _LOST_MEMORY:
            del self._lost[next(iter(self._lost))]
        started = self._running.get(d.id) is d or detected_by == "ack"
        if self._buffered.get(d.id) is d:
            del self._buffered[d.id]
            self._renewed.pop(d.id, None)
        if detected_by == "extend":  # a refused ack, nack or dead has a log line of its own
            log.warning(
                "job %s (%s) attempt %d lost its lease: the heartbeat could not renew it; %s",
                d.id, d.type, d.attempts,
                "it runs on, its ack will be refused and another worker may run it" if started
                else "it will not run here",
                extra=job_context(d, d.type, self.id),
            )
        if self.app.bus.wants(sig.JOB_LEASE_LOST):
            self.app.bus.emit(
                sig.JOB_LEASE_LOST, **job_context(d, d.type, self.id), detected_by=detected_by, started=started
            )

    async def _housekeeping(self, broker: Broker) -> None:
        c = self.config
        last_rescue = last_stats = 0.0
        while True:
            now = time.monotonic()
            if now - last_rescue >= c.rescue_interval:
                last_rescue = now
                rescued = await _quietly(broker.rescue(), "rescue expired leases")
                if rescued:
                    log.warning("rescued %d jobs whose lease expired", len(rescued))
            if now - last_stats >= c.stats_interval and self.app.bus.wants(sig.QUEUE_DEPTH):
                last_stats = now
                stats = await _quietly(broker.stats(self.queues), "read queue stats")
                for queue, s in (stats or {}).items():
                    self.app.bus.emit(
                        sig.QUEUE_DEPTH,
                        queue=queue,
                        ready=s.ready,
                        delayed=s.delayed,
                        in_flight=s.in_flight,
                        dead=s.dead,
                        oldest_age=s.oldest_age_s,
                    )
            await asyncio.sleep(min(c.rescue_interval, c.stats_interval, 1.0))


async def _quietly(awaitable: Awaitable[T], what: str) -> T | None:
    try:
        return await awaitable
    except Exception:
        log.exception("could not %s", what)
        return None
