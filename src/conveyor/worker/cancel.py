"""Cancelling tasks that may swallow the cancellation, with a bound."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection
from typing import Any

log = logging.getLogger("conveyor.worker")

#: Seconds the worker keeps cancelling its own tasks at exit before it leaves one behind.
CANCEL_TIMEOUT = 5.0


async def cancel_all(tasks: Collection[asyncio.Task[Any]], timeout: float = CANCEL_TIMEOUT) -> set[asyncio.Task[Any]]:
    """Cancel ``tasks`` and wait for them, re-cancelling any that swallowed it.

    A library can swallow a cancellation (redis-py can, while a command is on the
    wire): one cancel and a plain ``gather`` would then wait for ever. Each task is
    cancelled again until it ends; those still running after ``timeout`` seconds
    are logged and left behind (and returned), so the caller always goes on.
    """
    pending = {t for t in tasks if not t.done()}
    deadline = time.monotonic() + timeout
    while pending:
        for task in pending:
            task.cancel()
        left = deadline - time.monotonic()
        if left <= 0:
            log.error(
                "tasks %s ignored cancellation for %gs; stopping without them",
                ", ".join(sorted(t.get_name() for t in pending)), timeout,
            )  # fmt: skip
            return pending
        _, pending = await asyncio.wait(pending, timeout=min(0.1, left))
    for task in tasks:  # retrieve outcomes so none is reported as never retrieved
        if not task.cancelled():
            task.exception()
    return set()
