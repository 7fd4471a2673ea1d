"""A background event loop that lets sync code call the async core."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

#: Seconds :meth:`Portal.stop` waits for the loop to shut down.
STOP_TIMEOUT = 10.0


class Portal:
    """Runs coroutines on a private loop in a daemon thread, started on first use.

    The loop runs under ``asyncio.run``, so stopping it shuts it down like any
    other: pending tasks are cancelled and async generators finalised (which
    closes the brokers opened on it) before the loop is closed.
    """

    def __init__(self, name: str = "conveyor-portal") -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                ready = threading.Event()
                thread = threading.Thread(target=asyncio.run, args=(self._serve(ready),), name=self._name, daemon=True)
                self._thread = thread
                thread.start()
                ready.wait()
            assert self._loop is not None
            return self._loop

    async def _serve(self, ready: threading.Event) -> None:
        stop = self._stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        ready.set()
        await stop.wait()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the portal loop and block until it returns."""
        loop = self.loop
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("cannot block on the portal from its own thread")
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    def stop(self) -> None:
        """Shut the loop down and wait (up to :data:`STOP_TIMEOUT` s) unless called from it."""
        with self._lock:
            loop, stop, thread = self._loop, self._stop, self._thread
            self._loop = self._stop = self._thread = None
        if loop is None or stop is None or thread is None:
            return
        try:
            loop.call_soon_threadsafe(stop.set)
        except RuntimeError:  # already closed
            return
        if thread is not threading.current_thread():
            thread.join(timeout=STOP_TIMEOUT)
