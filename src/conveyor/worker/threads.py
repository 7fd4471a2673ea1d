"""Runs sync handlers on worker threads, handing results back to the loop in batches.

``loop.run_in_executor`` wakes the event loop once per finished call. With short
jobs those wake-ups dominate, so here a thread that finishes a call only wakes
the loop when no other result is already waiting to be collected: one wake-up
serves every call that finished in the meantime.
"""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any

_STOP = object()


class ThreadRunner:
    """``threads`` daemon threads running sync calls for one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, threads: int, name: str = "conveyor-job") -> None:
        self._loop = loop
        self._calls: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._done: list[tuple[asyncio.Future[Any], bool, Any]] = []
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._serve, name=f"{name}-{i}", daemon=True) for i in range(threads)
        ]
        for t in self._threads:
            t.start()

    def run(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        """Run ``fn()`` on a worker thread in a copy of the current context."""
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._calls.put((fut, contextvars.copy_context(), fn))
        return fut

    def _serve(self) -> None:
        while True:
            item = self._calls.get()
            if item is _STOP:
                return
            fut, ctx, fn = item
            try:
                outcome: tuple[asyncio.Future[Any], bool, Any] = (fut, True, ctx.run(fn))
            except BaseException as exc:  # handed to the awaiting coroutine
                outcome = (fut, False, exc)
            with self._lock:
                self._done.append(outcome)
                first = len(self._done) == 1
            if first:
                try:
                    self._loop.call_soon_threadsafe(self._collect)
                except RuntimeError:  # the loop is closed: nobody is waiting any more
                    return

    def _collect(self) -> None:
        with self._lock:
            done, self._done = self._done, []
        for fut, ok, value in done:
            if fut.done():  # cancelled: a timeout or a forced stop gave up on it
                continue
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

    def stop(self) -> None:
        """Let idle threads exit; a thread stuck in a call ends with the process (daemon)."""
        for _ in self._threads:
            self._calls.put(_STOP)
