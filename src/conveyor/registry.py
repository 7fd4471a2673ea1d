"""Job definitions and the decorated functions users call ``.send()`` on."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from .errors import ConfigError, PayloadError
from .job import Job
from .retry import RetryPolicy

if TYPE_CHECKING:
    from .app import App

P = ParamSpec("P")
R = TypeVar("R")

_QUEUE = re.compile(r"^[A-Za-z0-9_.:\-]{1,200}$")
_JOB = re.compile(r"^\S{1,200}$")


def check_name(kind: str, value: str) -> str:
    """Queue names: 1-200 letters, digits, ``_ . : -``; job names: 1-200 non-space characters."""
    if kind == "job":
        if not isinstance(value, str) or not _JOB.match(value):
            raise ConfigError(f"invalid job name {value!r}: use 1-200 characters without spaces")
    elif not isinstance(value, str) or not _QUEUE.match(value):
        raise ConfigError(f"invalid {kind} name {value!r}: use 1-200 letters, digits, '_', '.', ':' or '-'")
    return value


@dataclass(frozen=True, slots=True)
class JobDef:
    """A registered job type: its handler and defaults."""

    name: str
    fn: Callable[..., Any]
    queue: str
    policy: RetryPolicy
    timeout: float | None
    priority: int
    is_async: bool
    signature: inspect.Signature | None = None
    """Checked against the arguments at send time; None when not introspectable."""

    def check_call(self, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
        """Raise :class:`PayloadError` unless the handler accepts these arguments."""
        if self.signature is not None:
            try:
                self.signature.bind(*args, **kwargs)
            except TypeError as exc:
                raise PayloadError(f"job {self.name!r}: {exc}") from None


@dataclass(frozen=True, slots=True)
class SendOptions:
    """Per-send overrides: when, where and how urgently to run a job."""

    delay: float | None = None
    eta: datetime | None = None
    queue: str | None = None
    priority: int | None = None
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        if self.delay is not None and self.eta is not None:
            raise ConfigError("pass delay or eta, not both")
        if self.delay is not None and (not isinstance(self.delay, int | float) or self.delay < 0):
            raise ConfigError(f"delay must be a number of seconds >= 0, got {self.delay!r}")
        if self.eta is not None and not isinstance(self.eta, datetime):
            raise ConfigError(f"eta must be a datetime, got {type(self.eta).__name__}")
        if self.queue is not None:
            check_name("queue", self.queue)
        if self.priority is not None and not isinstance(self.priority, int):
            raise ConfigError(f"priority must be an int, got {self.priority!r}")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ConfigError("max_attempts must be at least 1")

    def due(self, now: float) -> float:
        if self.delay is not None:
            return now + self.delay
        if self.eta is not None:
            return self.eta.timestamp()
        return now


class Bound(Generic[P, R]):
    """A job function with send options applied: ``fn.options(delay=5).send(...)``."""

    def __init__(self, fn: JobFunction[P, R], opts: SendOptions) -> None:
        self._fn, self._opts = fn, opts

    def message(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """Build (without sending) a job, for :meth:`App.send_batch`."""
        return self._fn.app.build(self._fn.definition, args, kwargs, self._opts)

    def send(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """Enqueue the job and return its id."""
        return self._fn.app.send_jobs([self.message(*args, **kwargs)])[0]

    async def send_async(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """Enqueue the job from async code and return its id."""
        return (await self._fn.app.send_jobs_async([self.message(*args, **kwargs)]))[0]


class JobFunction(Generic[P, R]):
    """What ``@app.job`` returns: call it to run inline, ``.send()`` to enqueue.

    Calling it calls the undecorated function: a sync job runs and returns its
    result; an ``async def`` job returns a coroutine that runs when awaited.
    Nothing is enqueued and no signal is emitted.
    """

    def __init__(self, app: App, definition: JobDef) -> None:
        self.app = app
        self.definition = definition
        self.__wrapped__ = definition.fn
        self.__doc__ = definition.fn.__doc__
        self.__name__ = getattr(definition.fn, "__name__", definition.name)

    @property
    def name(self) -> str:
        return self.definition.name

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the function inline (an async job returns a coroutine to await)."""
        result: R = self.definition.fn(*args, **kwargs)
        return result

    def options(
        self,
        *,
        delay: float | timedelta | None = None,
        eta: datetime | None = None,
        queue: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
    ) -> Bound[P, R]:
        """Override delay or ETA, queue, priority or max_attempts for one send."""
        if isinstance(delay, timedelta):
            delay = delay.total_seconds()
        return Bound(self, SendOptions(delay, eta, queue, priority, max_attempts))

    def message(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """Build (without sending) a job, for :meth:`App.send_batch`."""
        return self.app.build(self.definition, args, kwargs, _DEFAULT)

    def send(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """Enqueue the job and return its id."""
        return self.app.send_jobs([self.message(*args, **kwargs)])[0]

    async def send_async(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """Enqueue the job from async code and return its id."""
        return (await self.app.send_jobs_async([self.message(*args, **kwargs)]))[0]

    def __repr__(self) -> str:
        return f"<job {self.definition.name} queue={self.definition.queue}>"


_DEFAULT = SendOptions()


def make_definition(
    fn: Callable[..., Any],
    *,
    name: str | None,
    queue: str,
    max_attempts: int,
    timeout: float | timedelta | None,
    backoff: Any,
    retry_on: tuple[type[BaseException], ...],
    priority: int,
) -> JobDef:
    """Validate decorator arguments and build a :class:`JobDef`."""
    if not callable(fn):
        raise ConfigError(f"@app.job decorates functions, not {type(fn).__name__}")
    job_name = check_name("job", name or f"{fn.__module__}.{fn.__qualname__}")
    if isinstance(timeout, timedelta):
        timeout = timeout.total_seconds()
    if timeout is not None and timeout <= 0:
        raise ConfigError(f"timeout must be > 0 seconds, got {timeout!r}")
    if isinstance(retry_on, type):
        retry_on = (retry_on,)
    try:
        kw = {} if backoff is None else {"backoff": backoff}
        policy = RetryPolicy(max_attempts=max_attempts, retry_on=tuple(retry_on), **kw)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    try:
        signature: inspect.Signature | None = inspect.signature(fn)
    except (TypeError, ValueError):
        signature = None
    return JobDef(
        job_name, fn, check_name("queue", queue), policy, timeout, priority,
        inspect.iscoroutinefunction(fn), signature,
    )
