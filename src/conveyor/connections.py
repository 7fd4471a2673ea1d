"""The broker connections an App opens, and when they are closed.

A broker that can be shared across loops and threads (memory, SQLite) is
opened once. A ``loop_bound`` broker (Redis, PostgreSQL) is opened once per
event loop and closed by the first of: :meth:`Connections.aclose` /
:meth:`Connections.close`, the end of its loop, or the end of the process.

The end of a loop is noticed through the loop's own shutdown protocol: every
broker is guarded by an async generator started on its loop, and
``loop.shutdown_asyncgens()`` (which ``asyncio.run``, ``asyncio.Runner`` and
the portal call before closing a loop) finalises it, which closes the broker
while the loop can still run the close.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import logging
import threading
import weakref
from collections.abc import AsyncGenerator, Callable, Iterable

from .brokers import Broker, open_broker
from .portal import Portal

log = logging.getLogger("conveyor.connections")

#: Seconds :meth:`Connections.close` waits for a loop in another thread to close its broker.
CLOSE_TIMEOUT = 10.0


class _Opened:
    """A loop-bound broker, the loop it belongs to, and the guard that closes it with the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, broker: Broker, forget: Callable[[_Opened], None]) -> None:
        self.loop = loop
        self.broker = broker
        self._forget = forget
        self.ready: asyncio.Task[None] = loop.create_task(self._connect(), name="conveyor-connect")
        self.guard: AsyncGenerator[None, None] | None = None
        self._closing: asyncio.Task[None] | None = None

    async def _connect(self) -> None:
        try:
            await self.broker.connect()
        except BaseException:
            self._forget(self)  # the next broker() call tries again
            with contextlib.suppress(Exception):
                await self.broker.close()
            raise
        guard = self.guard = _guard(self)
        await guard.asend(None)  # now registered with the loop: closed by its shutdown_asyncgens()

    def closing(self) -> asyncio.Task[None]:
        """Close the broker (once); call on the broker's own loop."""
        if self._closing is None:
            self._closing = self.loop.create_task(self._close(), name="conveyor-close")
        return self._closing

    async def _close(self) -> None:
        self._forget(self)
        await asyncio.wait([self.ready])
        try:
            if not self.ready.cancelled() and self.ready.exception() is None:
                await self.broker.close()
        finally:
            guard, self.guard = self.guard, None
            if guard is not None:
                await guard.aclose()

    def abandon(self) -> None:
        """Drop the guard of a broker whose loop was closed without shutting down its async generators.

        Nothing can run on that loop any more; the sockets go with the garbage collector.
        """
        guard, self.guard = self.guard, None
        if guard is not None:  # finish it here, or its finaliser would call the closed loop
            with contextlib.suppress(StopIteration):
                guard.aclose().send(None)


async def _guard(opened: _Opened) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        if opened.guard is not None:  # finalised by the loop's shutdown, not by _close()
            opened.guard = None
            try:
                await opened.closing()
            except Exception as exc:
                _report(0, [exc])


class Connections:
    """The brokers of one app: one shared, or one per event loop when ``loop_bound``."""

    def __init__(self, url: str, loop_bound: bool, portal: Portal) -> None:
        self.url = url
        self.loop_bound = loop_bound
        self._portal = portal
        self._lock = threading.Lock()
        self._shared: Broker | None = None
        self._connected: Broker | None = None
        """The shared broker once its ``connect()`` returned."""
        self._loops: dict[asyncio.AbstractEventLoop, _Opened] = {}
        self._pending: set[asyncio.Task[None]] = set()
        self._exit_hook: Callable[[], None] | None = None

    # -- opening --------------------------------------------------------------
    async def broker(self) -> Broker:
        """The connected broker for the running event loop, opened on first use."""
        if not self.loop_bound:
            return await self._shared_broker()
        loop = asyncio.get_running_loop()
        opened = self._loops.get(loop)
        if opened is None:
            with self._lock:
                opened = self._loops.get(loop)
                if opened is None:
                    self._abandon_closed_loops()
                    opened = self._loops[loop] = _Opened(loop, open_broker(self.url), self._forget)
                    self._close_at_exit()
        if not opened.ready.done():
            await asyncio.shield(opened.ready)  # a cancelled caller leaves the connect to the others
        opened.ready.result()
        return opened.broker

    async def _shared_broker(self) -> Broker:
        shared = self._shared
        if shared is not None and shared is self._connected:
            return shared  # the hot path of every send: no call into the broker
        if shared is None:
            with self._lock:
                if self._shared is None:
                    self._shared = open_broker(self.url)
                    self._close_at_exit()
                shared = self._shared
        await shared.connect()
        self._connected = shared
        return shared

    def _forget(self, opened: _Opened) -> None:
        with self._lock:
            if self._loops.get(opened.loop) is opened:
                del self._loops[opened.loop]

    def _abandon_closed_loops(self) -> None:
        for opened in [o for o in self._loops.values() if o.loop.is_closed()]:
            del self._loops[opened.loop]
            opened.abandon()

    def _close_at_exit(self) -> None:
        """Register (once per opening) an exit hook that closes what is still open."""
        if self._exit_hook is not None:
            return
        ref = weakref.ref(self)

        def close_at_exit() -> None:
            connections = ref()
            if connections is not None:
                connections.close()

        self._exit_hook = close_at_exit
        atexit.register(close_at_exit)

    # -- closing --------------------------------------------------------------
    def _take(self) -> tuple[Broker | None, list[_Opened]]:
        """Detach everything open; closed loops are abandoned on the way."""
        with self._lock:
            self._abandon_closed_loops()
            shared, self._shared = self._shared, None
            self._connected = None
            opened = list(self._loops.values())
            hook, self._exit_hook = self._exit_hook, None
        if hook is not None:
            atexit.unregister(hook)
        return shared, opened

    def _elsewhere(self, opened: Iterable[_Opened]) -> list[concurrent.futures.Future[None]]:
        """Ask running loops in other threads to close their brokers.

        A loop that is not running now closes its broker when it shuts down.
        """
        futures = []
        for o in opened:
            if o.loop.is_running():
                with contextlib.suppress(RuntimeError):  # it closed in the meantime
                    futures.append(asyncio.run_coroutine_threadsafe(_close(o), o.loop))
        return futures

    async def aclose(self) -> None:
        """Close every connection: this loop's, the shared one and those of other running loops."""
        here = asyncio.get_running_loop()
        shared, opened = self._take()
        elsewhere = self._elsewhere(o for o in opened if o.loop is not here)
        closing = [o.closing() for o in opened if o.loop is here]
        if shared is not None:
            closing.append(here.create_task(shared.close(), name="conveyor-close"))
        errors = [e for e in await asyncio.gather(*closing, return_exceptions=True) if e is not None]
        if elsewhere:
            done, late = await asyncio.wait([asyncio.wrap_future(f) for f in elsewhere], timeout=CLOSE_TIMEOUT)
            _report(len(late), [f.exception() for f in done if not f.cancelled()])
        if errors:
            raise errors[0]

    def close(self) -> None:
        """Sync :meth:`aclose`; inside a running loop, that loop's brokers close in a task.

        Blocks at most :data:`CLOSE_TIMEOUT` seconds for loops in other threads,
        so a loop busy waiting on the caller cannot deadlock it.
        """
        try:
            here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        shared, opened = self._take()
        elsewhere = self._elsewhere(o for o in opened if o.loop is not here)
        for o in opened:
            if o.loop is here:
                self._keep(o.closing())
        if shared is not None:
            if here is None:
                asyncio.run(shared.close())
            else:
                self._keep(here.create_task(shared.close(), name="conveyor-close"))
        done, late = concurrent.futures.wait(elsewhere, timeout=CLOSE_TIMEOUT)
        _report(len(late), [f.exception() for f in done if not f.cancelled()])
        self._portal.stop()

    def _keep(self, task: asyncio.Task[None]) -> None:
        """Hold a fire-and-forget close task until it is done."""
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)


async def _close(opened: _Opened) -> None:
    await opened.closing()


def _report(late: int, errors: Iterable[BaseException | None]) -> None:
    if late:
        log.warning("%d broker connection(s) did not close within %gs", late, CLOSE_TIMEOUT)
    for exc in errors:
        if exc is not None:
            log.warning("closing a broker connection failed: %r", exc)
