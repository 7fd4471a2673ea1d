"""Runs one delivery: decode, look up, run with a timeout, then ack, retry or dead-letter.

Whatever a job raises, BaseException included, settles its delivery. A failure of
conveyor's own code around a job (decoding, the retry policy, a broker call, a
signal) is logged with the job's context and emitted as ``worker.error``; the
delivery is then settled another way or left to its lease. Only the worker's
own cancellation of the consumer task propagates.
"""

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
from ..brokers import LEASE_EXPIRED, WORKER_SHUTDOWN, Broker, Delivery, Failure
from ..context import JobContext, _current
from ..errors import JobCancelled, JobTimeout
from ..job import Job, decode
from ..middleware import chain
from ..registry import JobDef
from ..retry import Decision
from ..signals import ErrorInfo
from .acker import Acker, Finished
from .threads import CallTimedOut, ThreadRunner

if TYPE_CHECKING:
    from ..app import App

log = logging.getLogger("conveyor.worker")


@dataclass(frozen=True, slots=True)
class JobRef:
    """Which job a worker thread is running (to report a stuck thread)."""

    id: str
    type: str
    queue: str
    attempt: int


@dataclass(slots=True)
class Counters:
    """What a worker did, for its summary line."""

    completed: int = 0
    failed: int = 0
    retried: int = 0
    dead: int = 0
    ack_refused: int = 0
    """Finished jobs whose ack was refused: their lease was lost, another worker may run them."""


def job_context(d: Delivery, job_type: str, worker_id: str) -> dict[str, Any]:
    """The keys every job signal and job log line carry about ``d`` (lifted to the top level of JSON logs)."""
    return {"job_id": d.id, "job_type": job_type, "queue": d.queue, "attempt": d.attempts, "worker_id": worker_id}


def _failure(info: ErrorInfo) -> Failure:
    return Failure(info.type, info.message, info.traceback)


def _error_info(exc: BaseException) -> ErrorInfo:
    """``ErrorInfo.from_exception``, even for an exception whose ``str()`` raises."""
    try:
        return ErrorInfo.from_exception(exc)
    except Exception:
        return ErrorInfo(type(exc).__qualname__, f"<{type(exc).__qualname__}: str() failed>")


def cancelled_by_worker(exc: BaseException) -> bool:
    """True for the worker's own cancellation of the running consumer task.

    Only the worker cancels consumer tasks, so a ``CancelledError`` while the task
    has a cancellation request pending is the worker's; one raised without a
    request came from the handler's own awaits (a cancelled future, say).
    """
    if not isinstance(exc, asyncio.CancelledError):
        return False
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _exhausted(d: Delivery, max_attempts: int) -> ErrorInfo:
    """Why a delivery past ``max_attempts`` is dead without running, from its redelivery reason."""
    head = f"delivered {d.attempts} times (max {max_attempts})"
    if d.redelivery == LEASE_EXPIRED:
        return ErrorInfo(
            "LeaseExpired",
            f"{head}; the worker running the previous attempt was lost: its lease expired"
            f" before the attempt was settled (redelivery reason {LEASE_EXPIRED!r})",
        )
    if d.redelivery == WORKER_SHUTDOWN:
        return ErrorInfo(
            "WorkerShutdown",
            f"{head}; the previous attempt was interrupted by a worker shutdown"
            f" (redelivery reason {WORKER_SHUTDOWN!r}) and counted as an attempt",
        )
    why = f"redelivery reason {d.redelivery!r}" if d.redelivery else "no redelivery reason was recorded"
    return ErrorInfo("AttemptsExhausted", f"{head}; the previous attempt was not settled as a failure ({why})")


class Executor:
    """Executes deliveries for one worker."""

    def __init__(
        self,
        app: App,
        broker: Broker,
        acker: Acker,
        threads: ThreadRunner[JobRef],
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
        """Process one delivery to the end; raises only on the worker's own cancellation."""
        try:
            job = decode(d.body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            await self._bury(d, None, "undecodable", _error_info(exc))
            return
        except Exception as exc:  # e.g. RecursionError on absurdly nested input
            self.report(d, d.type, "decode", exc, "dead-lettering it as undecodable")
            await self._bury(d, None, "undecodable", _error_info(exc))
            return
        job.attempts = d.attempts
        definition = self.app.registry.get(job.type)
        if definition is None:
            info = ErrorInfo("UnknownJob", f"no job type {job.type!r} is registered with this app")
            await self._bury(d, job, "unknown_job_type", info)
            return
        if d.attempts > job.max_attempts:
            await self._bury(d, job, "max_attempts_exceeded", _exhausted(d, job.max_attempts))
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
            await self._call(d, definition, job, ctx)
        except BaseException as exc:  # a handler's SystemExit must not kill the worker either
            if cancelled_by_worker(exc):
                raise
            if isinstance(exc, asyncio.CancelledError):
                error: BaseException = JobCancelled(
                    "the handler raised CancelledError, but the worker did not cancel it"
                    " (an awaited future or task was cancelled)"
                )
                error.__cause__ = exc
            else:
                error = exc
            await self._failed(d, job, definition, error, time.time() - start)
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
                d.id, job_type, d.attempts, extra=job_context(d, job_type, self.worker_id),
            )
            self.on_lease_lost(d, "ack")
            if self.bus.wants(sig.JOB_ACK_REFUSED):
                self._emit(sig.JOB_ACK_REFUSED, d, job_type, duration=duration)

    async def _call(self, d: Delivery, definition: JobDef, job: Job, ctx: JobContext) -> Any:
        timeout = definition.timeout

        async def handler() -> Any:
            if definition.is_async:
                return await definition.fn(*job.args, **job.kwargs)
            call = functools.partial(definition.fn, *job.args, **job.kwargs)
            # A sync call's clock starts when a thread begins it, not while it waits for one.
            try:
                return await self.threads.call(call, timeout=timeout, tag=JobRef(d.id, d.type, d.queue, d.attempts))
            except CallTimedOut as exc:
                raise JobTimeout(f"job exceeded its timeout of {timeout}s") from exc

        call_next = chain(self.app.middleware, ctx, handler) if self.app.middleware else handler
        if timeout is None or not definition.is_async:
            return await call_next()
        try:
            async with asyncio.timeout(timeout) as cm:
                return await call_next()
        except TimeoutError as exc:
            if cm.expired():
                raise JobTimeout(f"job exceeded its timeout of {timeout}s") from exc
            raise

    def _decide(self, d: Delivery, job: Job, definition: JobDef, exc: BaseException) -> Decision:
        """The retry policy's decision for the job's own ``max_attempts``; never raises."""
        try:
            decision = definition.policy.decide(exc, d.attempts, job.max_attempts)
        except BaseException as err:
            if cancelled_by_worker(err):
                raise
            self.report(d, job.type, "retry_policy", err, "dead-lettering it as retry_policy_error")
            return Decision(False, reason="retry_policy_error")
        if decision.backoff_error is not None:
            self.report(
                d, job.type, "backoff", decision.backoff_error,
                f"retrying it after a fallback delay of {decision.delay:.3f}s",
            )
        return decision

    async def _failed(self, d: Delivery, job: Job, definition: JobDef, exc: BaseException, duration: float) -> None:
        decision = self._decide(d, job, definition, exc)
        info = _error_info(exc)
        self.counters.failed += 1
        if self.bus.wants(sig.JOB_FAILED):
            self._emit(sig.JOB_FAILED, d, job.type, duration=duration, error=info, will_retry=decision.retry)
        if not decision.retry:
            await self._bury(d, job, decision.reason, info)
            return
        retry_at = time.time() + decision.delay
        try:
            applied = await self.broker.nack(d, retry_at, _failure(info))
        except BaseException as err:
            if cancelled_by_worker(err):
                raise
            self.report(d, job.type, "nack", err, "its lease will expire and it will run again")
            return
        if not applied:
            self._refused(d, job.type, "nack", "retry")
            return
        self.on_retry(retry_at)
        self.counters.retried += 1
        if self.bus.wants(sig.JOB_RETRYING):
            self._emit(sig.JOB_RETRYING, d, job.type, delay=decision.delay, error=info)

    def _emit(self, signal: sig.Signal, d: Delivery, job_type: str, **attrs: Any) -> None:
        """Emit a job signal with the attributes every job signal carries; never raises."""
        self._emit_quietly(signal, d, job_type, **job_context(d, job_type, self.worker_id), **attrs)

    def emit_worker(self, d: Delivery, signal: sig.Signal, **attrs: Any) -> None:
        """Emit a worker signal (busy, idle) around delivery ``d``; never raises."""
        if self.bus.wants(signal):  # busy/idle flip at nearly every job: skip building attributes
            self._emit_quietly(signal, d, d.type, worker_id=self.worker_id, **attrs)

    def _emit_quietly(self, signal: sig.Signal, d: Delivery, of_type: str, /, **attrs: Any) -> None:
        try:
            self.bus.emit(signal, **attrs)
        except BaseException as exc:  # the bus isolates sinks' Exceptions; this is the rest
            self.report(d, of_type, "signal", exc, f"{signal.name} was not delivered; the job carries on")

    def report(self, d: Delivery, job_type: str, stage: str, exc: BaseException, outcome: str) -> None:
        """Log and emit ``worker.error``: conveyor's own code failed at ``stage`` around ``d``."""
        context = job_context(d, job_type, self.worker_id)
        log.error(
            "worker %s: %s failed for job %s (%s, queue %s, attempt %d); %s",
            self.worker_id, stage, d.id, job_type, d.queue, d.attempts, outcome,
            exc_info=exc, extra=context,
        )
        if not self.bus.wants(sig.WORKER_ERROR):
            return
        try:
            self.bus.emit(sig.WORKER_ERROR, **context, stage=stage, error=_error_info(exc))
        except BaseException:
            log.exception("could not emit worker.error for job %s", d.id, extra=context)

    async def _bury(self, d: Delivery, job: Job | None, reason: str, info: ErrorInfo) -> None:
        job_type = job.type if job else d.type
        try:
            applied = await self.broker.dead(d, reason, _failure(info))
        except BaseException as err:
            if cancelled_by_worker(err):
                raise
            self.report(d, job_type, "dead", err, f"could not dead-letter it ({reason}); its lease will expire")
            return
        if not applied:
            self._refused(d, job_type, "dead", f"dead-letter ({reason})")
            return
        self.counters.dead += 1
        log.warning("job %s (%s) dead-lettered: %s: %s", d.id, job_type, reason, info.message)
        if self.bus.wants(sig.JOB_DEAD):
            self._emit(sig.JOB_DEAD, d, job_type, reason=reason, error=info)

    def _refused(self, d: Delivery, job_type: str, detected_by: str, what: str) -> None:
        """The broker refused to settle a failed attempt (``nack`` or ``dead``): its lease was lost."""
        log.warning(
            "job %s (%s) attempt %d lost its lease before it was settled; the %s was refused"
            " (another worker may run the job)",
            d.id, job_type, d.attempts, what, extra=job_context(d, job_type, self.worker_id),
        )
        self.on_lease_lost(d, detected_by)
