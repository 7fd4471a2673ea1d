"""Middleware wraps sending and running jobs; unlike sinks, it may change control flow."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from .context import JobContext
from .job import Job

CallNext = Callable[[], Awaitable[Any]]


class Middleware:
    """Override either hook. The defaults do nothing."""

    def before_send(self, job: Job) -> None:
        """Called on the producer before ``job`` is encoded; may add ``job.headers``."""

    async def around(self, ctx: JobContext, call_next: CallNext) -> Any:
        """Called on the worker around the handler; must await ``call_next()``."""
        return await call_next()


def chain(middleware: list[Middleware], ctx: JobContext, handler: CallNext) -> CallNext:
    """Compose ``middleware`` around ``handler``; the first in the list is outermost."""
    call = handler
    for mw in reversed(middleware):
        call = _bind(mw, ctx, call)
    return call


def _bind(mw: Middleware, ctx: JobContext, call_next: CallNext) -> CallNext:
    async def step() -> Any:
        return await mw.around(ctx, call_next)

    return step
