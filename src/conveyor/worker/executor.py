"""Runs one delivery: decode, look up, run with a timeout, then ack, retry or dead-letter."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from .. import signals as sig
from ..brokers import Broker, Delivery, Failure
from ..context import JobContext, _current
from ..errors import JobTimeout
from ..job import Job, decode
from ..middleware import chain
from ..registry import JobDef
from ..signals import ErrorInfo
from .acker import Acker, Finished
from .threads import ThreadRunner

if TYPE_CHECKING:
    from ..app import App

log = logging.getLogger("conveyor.worker")


@dataclass(slots=True)
class Counters:
    """What a worker did, for its summary line."""

    completed: int = 0
    failed: int = 0
    retried: int = 0
    dead: int = 0
    ack_refused: int = 0
    """Finished jobs whose ack was refused: their lease was lost, another worker may run them."""


def log_fields(d: Delivery, job_type: str, worker_id: str) -> dict[str, Any]:
    """The job context of a log line about ``d`` (lifted to the top level of JSON logs)."""
    return {"job_id": d.id, "job_type": job_type, "queue": d.queue, "attempt": d.attempts, "worker_id": worker_id}


def _failure(info: ErrorInfo) -> Failure:
    return Failure(info.type, info.message, info.traceback)


class Executor:
    """Executes deliveries for one worker."""

    def __init__(
        self,
        app: App,
        broker: Broker,
        acker: Acker,
        threads: ThreadRunner,
        worker_id: str,
        on_retry: Callable[[float], None],
        on_lease_lost: Callable[[Delivery, str], None],
        lease_live: Callable[[Delivery], bool],
    ) -> None:
        self.app, self.broker, self.acker, self.threads = app, broker, acker, threads
        self.worker_id = worker_id
        self.on_retry = on_retry
        self.on_lease_lost = on_lease_lost
        self.lease_live = lease_live
        acker.settle = self.settled
        self.counters = Counters()
        self.bus = app.bus

    async def execute(self, d: Delivery) -> None:
        """Process one delivery to the end; never raises (except on cancellation)."""
        try:
            job = decode(d.body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            info = ErrorInfo.from_exception(exc)
            await self._bury(d, None, "undecodable", info)
            return
        job.attempts = d.attempts
        definition = self.app.registry.get(job.type)
        if definition is None:
            info = ErrorInfo("UnknownJob", f"no job type {job.type!r} is registered with this app")
            await self._bury(d, job, "unknown_job_type", info)
            return
        if d.attempts > job.max_attempts:
            info = ErrorInfo(
                "LeaseExpired",
                f"delivered {d.attempts} times (max {job.max_attempts}); the worker running the"
                f" last attempt was lost ({d.redelivery or 'unknown'})",
            )
            await self._bury(d, job, "max_attempts_exceeded", info)
            return
        await self._run(d, job, definition)

    async def _run(self, d: Delivery, job: Job, definition: JobDef) -> None:
        ctx = JobContext(job, self.worker_id, d.redelivery)
        bus = self.bus
        start = time.time()
        if bus.wants(sig.JOB_STARTED):
            self._emit(
                sig.JOB_STARTED,
                d,
                job.type,
                latency=max(0.0, start - (job.scheduled_at or job.created_at)),
                redelivery=d.redelivery,
            )
        token = _current.set(ctx)
        try:
            await self._call(definition, job, ctx)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a handler's SystemExit must not kill the worker
            await self._failed(d, job, definition, exc, time.time() - start)
            return
        finally:
            _current.reset(token)
        duration = time.time() - start
        if self.lease_live(d):
            self.acker.add(d, job.type, duration)
            self._completed(d, job.type, duration)
        else:  # the lease may be lost: completion waits for the broker to take the ack
            self.acker.add(d, job.type, duration, counted=False)

    def _completed(self, d: Delivery, job_type: str, duration: float) -> None:
        self.counters.completed += 1
        if self.bus.wants(sig.JOB_COMPLETED):
            self._emit(sig.JOB_COMPLETED, d, job_type, duration=duration)

    def settled(self, acked: Sequence[Finished], refused: Sequence[Finished]) -> None:
        """The acker's report: complete the jobs that waited for their ack; announce refused acks.

        A refused ack means another worker holds the job; a run that waited for
        its ack is then not counted as completed, so the job is not counted twice.
        """
        for d, job_type, duration, counted in acked:
            if not counted:
                self._completed(d, job_type, duration)
        for d, job_type, duration, _ in refused:
            self.counters.ack_refused += 1
            log.warning(
                "job %s (%s) attempt %d finished after its lease was lost; the ack was refused"
                " (another worker may run the job)",
                d.id, job_type, d.attempts, extra=log_fields(d, job_type, self.worker_id),
            )
            self.on_lease_lost(d, "ack")
            if self.bus.wants(sig.JOB_ACK_REFUSED):
                self._emit(sig.JOB_ACK_REFUSED, d, job_type, duration=duration)

    async def _call(self, definition: JobDef, job: Job, ctx: JobContext) -> Any:
        async def handler() -> Any:
            if definition.is_async:
                return await definition.fn(*job.args, **job.kwargs)
            call = functools.partial(definition.fn, *job.args, **job.kwargs)
            return await self.threads.run(call)

        call_next = chain(self.app.middleware, ctx, handler) if self.app.middleware else handler
        if definition.timeout is None:
            return await call_next()
        try:
            async with asyncio.timeout(definition.timeout) as cm:
                return await call_next()
        except TimeoutError as exc:
            if cm.expired():
                raise JobTimeout(f"job exceeded its timeout of {definition.timeout}s") from exc
            raise

    async def _failed(self, d: Delivery, job: Job, definition: JobDef, exc: BaseException, duration: float) -> None:
        decision = definition.policy.decide(exc, d.attempts)
        info = ErrorInfo.from_exception(exc)
        self.counters.failed += 1
        if self.bus.wants(sig.JOB_FAILED):
            self._emit(sig.JOB_FAILED, d, job.type, duration=duration, error=info, will_retry=decision.retry)
        if not decision.retry:
            await self._bury(d, job, decision.reason, info)
            return
        retry_at = time.time() + decision.delay
        try:
            await self.broker.nack(d, retry_at, _failure(info))
        except Exception:
            log.exception("could not schedule retry of job %s; its lease will expire", job.id)
            return
        self.on_retry(retry_at)
        self.counters.retried += 1
        if self.bus.wants(sig.JOB_RETRYING):
            self._emit(sig.JOB_RETRYING, d, job.type, delay=decision.delay, error=info)

    def _emit(self, signal: sig.Signal, d: Delivery, job_type: str, **attrs: Any) -> None:
        """Emit a job signal with the attributes every job signal carries."""
        self.bus.emit(
            signal,
            job_id=d.id,
            job_type=job_type,
            queue=d.queue,
            attempt=d.attempts,
            worker_id=self.worker_id,
            **attrs,
        )

    async def _bury(self, d: Delivery, job: Job | None, reason: str, info: ErrorInfo) -> None:
        try:
            await self.broker.dead(d, reason, _failure(info))
        except Exception:
            log.exception("could not dead-letter job %s; its lease will expire", d.id)
            return
        self.counters.dead += 1
        log.warning("job %s (%s) dead-lettered: %s: %s", d.id, d.type, reason, info.message)
        if self.bus.wants(sig.JOB_DEAD):
            self._emit(sig.JOB_DEAD, d, job.type if job else d.type, reason=reason, error=info)
