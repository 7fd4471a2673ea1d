"""The App: job registry, broker, signal bus and middleware, with no globals."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar, overload

from . import signals as sig
from .brokers import Broker, DeadLetter, Message, QueueStats, Selector
from .brokers.factory import broker_class
from .connections import Connections
from .deadletters import DeadLetterPage, DeadLetters, Retention, RetentionService
from .errors import UnknownJob
from .job import DEFAULT_MAX_MESSAGE_SIZE, Job, check_json, encode, new_id
from .middleware import Middleware
from .portal import Portal
from .registry import JobDef, JobFunction, SendOptions, make_definition
from .retry import BackoffLike

if TYPE_CHECKING:
    from .worker import WorkerService

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_URL = "sqlite:///conveyor.db"
DEFAULT_RETENTION = Retention()
URL_ENV = "CONVEYOR_BROKER_URL"


class Installable(Protocol):
    """Something that wires itself into an app: subscribes sinks, adds middleware."""

    def install(self, app: App) -> None: ...


class App:
    """A conveyor application.

    ``url`` picks the broker (``memory://``, ``sqlite:///file.db``, ``redis://``,
    ``postgresql://``). When omitted, ``$CONVEYOR_BROKER_URL`` is used, and then
    ``sqlite:///conveyor.db``. ``telemetry`` (see :mod:`conveyor.telemetry`) and
    ``extensions`` (job history, monitors...) are installed on creation; an
    extension may subscribe sinks, add middleware and add ``worker_services``.
    ``dead_letter_retention`` (see :class:`~conveyor.deadletters.Retention`: 7 days
    and 100,000 per queue by default, ``None`` to keep every dead letter) is
    applied by workers.

    The app owns its broker connections (see :mod:`conveyor.connections`): one
    per event loop for Redis and PostgreSQL, closed when that loop ends, by
    :meth:`aclose` / ``async with`` / :meth:`close`, or at interpreter exit.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        middleware: Iterable[Middleware] = (),
        telemetry: Installable | None = None,
        extensions: Iterable[Installable] = (),
        dead_letter_retention: Retention | None = DEFAULT_RETENTION,
    ) -> None:
        self.url = url or os.environ.get(URL_ENV) or DEFAULT_URL
        self._broker_cls = broker_class(self.url)  # fails fast on a bad URL or missing extra
        if max_message_size < 1:
            raise ValueError("max_message_size must be positive")
        self.max_message_size = max_message_size
        self.bus = sig.Bus()
        self.middleware: list[Middleware] = list(middleware)
        self.registry: dict[str, JobDef] = {}
        self._portal = Portal()
        self._connections = Connections(self.url, self._broker_cls.loop_bound, self._portal)
        self.worker_services: list[WorkerService] = []
        self.dead_letters = DeadLetters(self, dead_letter_retention)
        if dead_letter_retention is not None:
            self.worker_services.append(RetentionService(self.dead_letters))
        self.extensions: list[Installable] = list(extensions)
        self.telemetry = telemetry
        if telemetry is not None:
            telemetry.install(self)
        for extension in self.extensions:
            extension.install(self)

    def __repr__(self) -> str:
        return f"App({self.url!r}, jobs={len(self.registry)})"

    # -- registry -----------------------------------------------------------
    @overload
    def job(self, fn: Callable[P, R], /) -> JobFunction[P, R]: ...

    @overload
    def job(
        self,
        *,
        name: str | None = None,
        queue: str = "default",
        max_attempts: int = 3,
        timeout: float | timedelta | None = None,
        backoff: BackoffLike | None = None,
        retry_on: tuple[type[BaseException], ...] | type[BaseException] = (Exception,),
        priority: int = 0,
    ) -> Callable[[Callable[P, R]], JobFunction[P, R]]: ...

    def job(  # type: ignore[misc]  # P and R are bound by the decorated function
        self,
        fn: Callable[P, R] | None = None,
        /,
        *,
        name: str | None = None,
        queue: str = "default",
        max_attempts: int = 3,
        timeout: float | timedelta | None = None,
        backoff: BackoffLike | None = None,
        retry_on: tuple[type[BaseException], ...] | type[BaseException] = (Exception,),
        priority: int = 0,
    ) -> JobFunction[P, R] | Callable[[Callable[P, R]], JobFunction[P, R]]:
        """Register a sync or async function as a job type.

        ``name`` defaults to ``module.qualname``. Exceptions outside ``retry_on``
        are not retried; ``backoff`` is a :class:`~conveyor.Backoff` or a
        function of the attempt number returning seconds.
        """

        def register(f: Callable[P, R]) -> JobFunction[P, R]:
            retry = retry_on if isinstance(retry_on, tuple) else (retry_on,)
            definition = make_definition(
                f,
                name=name,
                queue=queue,
                max_attempts=max_attempts,
                timeout=timeout,
                backoff=backoff,
                retry_on=retry,
                priority=priority,
            )
            if definition.name in self.registry:
                from .errors import ConfigError

                raise ConfigError(f"job {definition.name!r} is already registered")
            self.registry[definition.name] = definition
            return JobFunction(self, definition)

        return register(fn) if fn is not None else register

    def periodic(self, **options: Any) -> Callable[[Callable[P, R]], JobFunction[P, R]]:
        """Register a job that runs on a schedule: ``every=timedelta(...)`` or ``cron="*/5 * * * *"``.

        See :func:`conveyor.scheduler.periodic` for the options and the policy for missed ticks.
        """
        from .scheduler import periodic

        return periodic(self, **options)

    def definition(self, name: str) -> JobDef:
        try:
            return self.registry[name]
        except KeyError:
            known = ", ".join(sorted(self.registry)) or "none"
            raise UnknownJob(f"unknown job {name!r}; registered jobs: {known}") from None

    # -- building and sending ----------------------------------------------
    def build(self, definition: JobDef, args: Sequence[Any], kwargs: dict[str, Any], opts: SendOptions) -> Job:
        """Validate arguments and build a :class:`Job` ready to send."""
        check_json(args, "args")
        check_json(kwargs, "kwargs")
        definition.check_call(args, kwargs)
        now = time.time()
        job = Job(
            id=new_id(),
            type=definition.name,
            queue=opts.queue or definition.queue,
            args=list(args),
            kwargs=dict(kwargs),
            max_attempts=opts.max_attempts or definition.policy.max_attempts,
            priority=definition.priority if opts.priority is None else opts.priority,
            created_at=now,
            scheduled_at=opts.due(now),
        )
        for mw in self.middleware:
            mw.before_send(job)
        return job

    def message(
        self,
        name: str,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        delay: float | None = None,
        queue: str | None = None,
        priority: int | None = None,
    ) -> Job:
        """Build a job of a registered type by name (as the CLI does)."""
        opts = SendOptions(delay=delay, queue=queue, priority=priority)
        return self.build(self.definition(name), args, kwargs or {}, opts)

    def encode(self, jobs: Sequence[Job]) -> list[Message]:
        """Encode built jobs into broker messages (size limit enforced)."""
        return [
            Message(
                j.id,
                j.queue,
                j.type,
                encode(j, self.max_message_size),
                j.priority,
                j.scheduled_at,
                j.created_at,
            )
            for j in jobs
        ]

    async def send_jobs_async(self, jobs: Iterable[Job]) -> list[str]:
        """Enqueue built jobs atomically (one batch); return their ids."""
        batch = list(jobs)
        messages = self.encode(batch)
        broker = await self.broker()
        await broker.enqueue(messages)
        self.emit_enqueued(batch)
        return [j.id for j in batch]

    def emit_enqueued(self, jobs: Iterable[Job]) -> None:
        """Emit ``job.enqueued`` for stored jobs (call it after committing a transactional send)."""
        if self.bus.wants(sig.JOB_ENQUEUED):
            for job in jobs:
                self.bus.emit(
                    sig.JOB_ENQUEUED,
                    job_id=job.id,
                    job_type=job.type,
                    queue=job.queue,
                    priority=job.priority,
                    delay=max(0.0, job.scheduled_at - job.created_at),
                )

    def send_jobs(self, jobs: Iterable[Job]) -> list[str]:
        """Sync form of :meth:`send_jobs_async`."""
        return self._portal.call(self.send_jobs_async(jobs))

    send_batch = send_jobs
    send_batch_async = send_jobs_async

    def emit(self, signal: sig.Signal, /, **attrs: Any) -> None:
        """Emit a signal (built-in or your own) on this app's bus."""
        self.bus.emit(signal, **attrs)

    # -- broker access and lifecycle ------------------------------------------
    async def broker(self) -> Broker:
        """The connected broker for the running event loop (opened on first use, owned by the app)."""
        return await self._connections.broker()

    def run(self, coro_fn: Callable[[Broker], Any]) -> Any:
        """Run ``await coro_fn(broker)`` from sync code (used by the CLI)."""

        async def call() -> Any:
            return await coro_fn(await self.broker())

        return self._portal.call(call())

    async def aclose(self) -> None:
        """Close every connection the app opened, on any loop; the app reopens them when used again."""
        await self._connections.aclose()

    def close(self) -> None:
        """Close every connection and stop the background loop (also run at exit).

        Inside a running event loop it does not block on that loop: its
        connections close in a task; ``await app.aclose()`` waits for them.
        """
        self._connections.close()

    async def __aenter__(self) -> App:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- operations (sync facade used by the CLI and scripts) ---------------
    async def stats_async(self, queues: Sequence[str] | None = None) -> dict[str, QueueStats]:
        """Per-queue counts, sorted by queue; without ``queues``, registered queues are always listed."""
        broker = await self.broker()
        found = await broker.stats(queues)
        if queues is None:
            missing = sorted({d.queue for d in self.registry.values()} - set(found))
            if missing:
                found.update(await broker.stats(missing))
        return dict(sorted(found.items()))

    def stats(self, queues: Sequence[str] | None = None) -> dict[str, QueueStats]:
        """Sync form of :meth:`stats_async`."""
        return self._portal.call(self.stats_async(queues))

    # -- dead letters (see conveyor.deadletters; ids may be unique prefixes) --
    def dlq_list(self, queue: str | None = None, limit: int = 1000) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters (of ``queue``)."""
        return self.dlq_page(queue, limit).letters

    def dlq_page(self, queue: str | None = None, limit: int = 100, after: str | None = None) -> DeadLetterPage:
        """A page of dead letters, oldest first; ``after`` is the previous page's ``next``."""
        return self._portal.call(self.dead_letters.page(queue, limit, after))

    def dlq_get(self, job_id: str) -> DeadLetter:
        """One dead letter by id or unique id prefix."""
        return self._portal.call(self.dead_letters.get(job_id))

    def dlq_retry(self, selector: Selector, *, requested_by: str = "api", missing_ok: bool = False) -> list[str]:
        """Retry dead letters; return the ids retried (emits ``dlq.retried``)."""
        return self._portal.call(self.dead_letters.retry(selector, requested_by=requested_by, missing_ok=missing_ok))

    def dlq_purge(self, selector: Selector, *, requested_by: str = "api", missing_ok: bool = False) -> list[str]:
        """Delete dead letters; return the ids deleted (emits ``dlq.purged``)."""
        return self._portal.call(self.dead_letters.purge(selector, requested_by=requested_by, missing_ok=missing_ok))

    def dlq_prune(self) -> int:
        """Apply dead-letter retention now; return how many were deleted (emits ``dlq.pruned``)."""
        return self._portal.call(self.dead_letters.prune())
