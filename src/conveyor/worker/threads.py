"""Runs sync handlers on worker threads, handing results back to the loop in batches.

``loop.run_in_executor`` wakes the event loop once per finished call. With short
jobs those wake-ups dominate, so here a thread that finishes a call only wakes
the loop when no other result is already waiting to be collected: one wake-up
serves every call that finished in the meantime.

A call's timeout counts from the moment a thread begins it, not from when it was
queued. A call given up before it began (timed out, cancelled) never begins. A
call that outlives its timeout cannot be stopped (Python threads cannot be
killed): its caller gets :class:`CallTimedOut` at once, the thread is reported
stuck, and a replacement thread keeps the promised number of threads serving, up
to ``spare`` replacements. When a stuck thread finally returns, its result is
discarded and, if it had been replaced, it retires.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger("conveyor.worker")

_STOP = object()
_QUEUED, _RUNNING, _GIVEN_UP, _STUCK, _DONE = range(5)  # a call's states
_BEGAN, _RESULT, _RETURNED = range(3)  # what a thread hands back to the loop


class CallTimedOut(Exception):
    """A call ran past its timeout; its thread may still be running it."""


@dataclass(frozen=True, slots=True)
class StuckThread(Generic[T]):
    """A thread still running a call its caller gave up on after the timeout."""

    thread: str
    tag: T
    started_at: float
    """Wall-clock time the call began."""
    running: float
    """Seconds the call has been running (at the time of the report)."""
    stuck: int
    """Threads stuck now, this one included (after a return: without it)."""
    short: int
    """Threads missing from the promised number (stuck and not replaced)."""
    replaced: bool
    """A replacement thread serves in its place (after a return: it retired)."""


@dataclass(eq=False, slots=True)
class _Call(Generic[T]):
    fut: asyncio.Future[Any]
    ctx: contextvars.Context
    fn: Callable[[], Any]
    timeout: float | None
    tag: T
    state: int = _QUEUED
    started: float = 0.0  # time.monotonic()
    started_wall: float = 0.0
    thread: str = ""
    notify_start: bool = False  # the timeout came due while queued: tell the loop when it begins
    timer: asyncio.TimerHandle | None = None


class ThreadRunner(Generic[T]):
    """``threads`` daemon threads running sync calls for one event loop.

    ``on_stuck``, ``on_returned`` and ``on_short`` run on the loop: when a call
    outlives its timeout, when such a call finally returns, and when a stuck
    thread could not be replaced because ``spare`` replacements are running.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        threads: int,
        name: str = "conveyor-job",
        *,
        spare: int | None = None,
        on_stuck: Callable[[StuckThread[T]], None] | None = None,
        on_returned: Callable[[StuckThread[T]], None] | None = None,
        on_short: Callable[[StuckThread[T]], None] | None = None,
    ) -> None:
        self._loop = loop
        self.spare = threads if spare is None else spare
        self._name = name
        self._on_stuck, self._on_returned, self._on_short = on_stuck, on_returned, on_short
        self._calls: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._done: list[tuple[int, _Call[T], bool, Any]] = []
        self._lock = threading.Lock()
        self._queued: dict[_Call[T], None] = {}
        self._stuck: dict[_Call[T], None] = {}
        self._replacements = 0
        self._serial = 0
        self._alive = 0
        for _ in range(threads):
            self._start_thread()

    def _start_thread(self) -> None:
        with self._lock:
            name = f"{self._name}-{self._serial}"
            self._serial += 1
            self._alive += 1
        threading.Thread(target=self._serve, name=name, daemon=True).start()

    @property
    def threads(self) -> int:
        """Threads alive now, stuck ones included."""
        return self._alive

    def stuck(self) -> list[StuckThread[T]]:
        """The threads stuck now, longest first."""
        with self._lock:
            calls, short, replaced = list(self._stuck), self._short(), self._replacements
        # Replacements are counted, not paired: say the oldest stuck threads are the replaced ones.
        return [self._report(c, len(calls), short, i < replaced) for i, c in enumerate(calls)]

    def _short(self) -> int:
        """Threads missing from the promised number; call with the lock held."""
        return max(0, len(self._stuck) - self._replacements)

    def _report(self, c: _Call[T], stuck: int, short: int, replaced: bool) -> StuckThread[T]:
        return StuckThread(c.thread, c.tag, c.started_wall, time.monotonic() - c.started, stuck, short, replaced)

    async def call(self, fn: Callable[[], Any], *, timeout: float | None = None, tag: T) -> Any:
        """Run ``fn()`` on a worker thread in a copy of the current context.

        Raises :class:`CallTimedOut` when it runs longer than ``timeout`` seconds
        (counted from when a thread begins it). A call cancelled before a
        thread begins it never runs.
        """
        c = _Call(self._loop.create_future(), contextvars.copy_context(), fn, timeout, tag)
        if timeout is not None:
            c.timer = self._loop.call_later(timeout, self._expire, c)
        self._queued[c] = None  # only this loop's thread adds; threads remove under the lock
        self._calls.put(c)
        try:
            return await c.fut
        except BaseException:
            with self._lock:
                if c.state == _QUEUED:  # cancelled while waiting for a thread: never start it
                    c.state = _GIVEN_UP
                    del self._queued[c]
            raise
        finally:
            if c.timer is not None:
                c.timer.cancel()

    def give_up_waiting(self) -> list[T]:
        """Never start the calls still waiting for a thread; return their tags."""
        with self._lock:
            waiting, self._queued = list(self._queued), {}
            for c in waiting:
                c.state = _GIVEN_UP
        return [c.tag for c in waiting]

    # -- on the loop ------------------------------------------------------------
    def _expire(self, c: _Call[T]) -> None:
        """The timeout timer: stuck if the call ran ``timeout`` seconds, else re-arm."""
        assert c.timeout is not None
        with self._lock:
            if c.state == _QUEUED:
                c.notify_start = True  # the clock has not started; the thread tells us when it does
                return
            if c.state != _RUNNING:
                return
            left = c.started + c.timeout - time.monotonic()
            if left > 0:
                c.timer = self._loop.call_later(left, self._expire, c)
                return
            c.state = _STUCK
            self._stuck[c] = None
            replace = len(self._stuck) > self._replacements and self._replacements < self.spare
            if replace:
                self._replacements += 1
            report = self._report(c, len(self._stuck), self._short(), replace)
        if replace:
            self._start_thread()
        if not c.fut.done():
            c.fut.set_exception(CallTimedOut(f"ran past its timeout of {c.timeout}s"))
        _notify(self._on_stuck, report)
        if report.short:
            _notify(self._on_short, report)

    def _arm(self, c: _Call[T]) -> None:
        """A call whose timeout came due while queued has begun: start its clock."""
        if c.state == _RUNNING and c.timeout is not None and not c.fut.done():
            c.timer = self._loop.call_later(max(0.0, c.started + c.timeout - time.monotonic()), self._expire, c)

    def _collect(self) -> None:
        with self._lock:
            done, self._done = self._done, []
        for kind, c, ok, value in done:
            if kind == _BEGAN:
                self._arm(c)
                continue
            if kind == _RETURNED:  # a stuck call returned; its result is discarded
                _notify(self._on_returned, value)
                continue
            if c.fut.done():  # cancelled: a forced stop gave up on it
                continue
            if ok:
                c.fut.set_result(value)
            else:
                c.fut.set_exception(value)

    # -- on the threads -----------------------------------------------------------
    def _post(self, item: tuple[int, _Call[T], bool, Any]) -> bool:
        """Hand ``item`` to the loop; False when the loop is closed."""
        with self._lock:
            self._done.append(item)
            first = len(self._done) == 1
        return self._wake() if first else True

    def _wake(self) -> bool:
        """Have the loop collect what is done; False when the loop is closed."""
        try:
            self._loop.call_soon_threadsafe(self._collect)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            return False
        return True

    def _serve(self) -> None:
        try:
            self._serve_calls(threading.current_thread().name)
        finally:
            with self._lock:
                self._alive -= 1

    def _serve_calls(self, name: str) -> None:
        while True:
            c = self._calls.get()
            if c is _STOP:
                return
            with self._lock:
                if c.state != _QUEUED:
                    continue  # given up before it began: its job is settled
                del self._queued[c]
                c.state, c.thread = _RUNNING, name
                c.started, c.started_wall = time.monotonic(), time.time()
                notify = c.notify_start
            if notify and not self._post((_BEGAN, c, True, None)):
                return
            try:
                ok, value = True, c.ctx.run(c.fn)
            except BaseException as exc:  # handed to the awaiting coroutine
                ok, value = False, exc
            kind, retire = _RESULT, False
            with self._lock:  # one critical section: settle the call and queue its result
                if c.state == _STUCK:
                    del self._stuck[c]
                    # Retire if the replacements alone now keep the pool at its size.
                    retire = self._replacements > len(self._stuck)
                    if retire:
                        self._replacements -= 1
                    kind, value = _RETURNED, self._report(c, len(self._stuck), self._short(), retire)
                c.state = _DONE
                self._done.append((kind, c, ok, value))
                first = len(self._done) == 1
            if (first and not self._wake()) or retire:
                return

    def stop(self) -> None:
        """Let idle threads exit; a thread stuck in a call ends with the process (daemon)."""
        for _ in range(self._alive):
            self._calls.put(_STOP)


def _notify(callback: Callable[[StuckThread[T]], None] | None, report: StuckThread[T]) -> None:
    """Call a report callback; one that raises is logged, never left to break result hand-back."""
    if callback is None:
        return
    try:
        callback(report)
    except Exception:
        log.exception("reporting a stuck thread failed (%s)", report.thread)
