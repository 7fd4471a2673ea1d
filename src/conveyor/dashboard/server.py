"""Serving the dashboard with uvicorn, standalone (the CLI) or inside another
asyncio program (``conveyor demo``) that keeps its own signal handlers."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from urllib.parse import quote

import uvicorn

from ..app import App
from .app import SAMPLE_INTERVAL, create_app
from .security import resolve_token


class _Server(uvicorn.Server):
    """A uvicorn server that leaves SIGINT/SIGTERM to its host program."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``; ``OSError`` when the address is taken or wrong."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


class DashboardServer:
    """The dashboard of ``app`` on ``host:port`` (``port=0``: a free port).

    ``token`` defaults to ``$CONVEYOR_DASHBOARD_TOKEN``, else a new random one;
    :attr:`login_url` carries it. ``await start()`` returns once it listens.
    """

    def __init__(
        self,
        app: App,
        *,
        host: str = "127.0.0.1",
        port: int = 8000,
        token: str | None = None,
        trace_url: str | None = None,
        metrics: bool = False,
        close_app: bool = False,
        log_level: str = "warning",
        sample_interval: float = SAMPLE_INTERVAL,
    ) -> None:
        self.token, self.generated_token = resolve_token(token)
        self.host = host
        self._port = port
        self._sock: socket.socket | None = None
        self.asgi = create_app(
            app, token=self.token, trace_url=trace_url, metrics=metrics, close_app=close_app,
            sample_interval=sample_interval,
        )  # fmt: skip
        config = uvicorn.Config(
            self.asgi, host=host, port=port, log_level=log_level, lifespan="on", server_header=False
        )
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The port it listens on (known once started)."""
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    @property
    def login_url(self) -> str:
        """The URL that signs a browser in (it sets the session cookie)."""
        return f"{self.url}?token={quote(self.token, safe='')}"

    async def start(self) -> str:
        """Start serving; returns :attr:`login_url` once it accepts connections.

        Raises ``OSError`` when the address cannot be bound.
        """
        self._sock = bind(self.host, self._port)
        self._port = int(self._sock.getsockname()[1])
        self._task = asyncio.create_task(self._server.serve([self._sock]), name="conveyor-dashboard")
        while not self._server.started:
            if self._task.done():
                await self._task
                raise RuntimeError("the dashboard stopped while starting")
            await asyncio.sleep(0.02)
        return self.login_url

    async def stop(self) -> None:
        """Stop serving and wait for open requests to finish."""
        self._server.should_exit = True
        if self._task is not None:
            await self._task
            self._task = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def serve_until(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set (or the server exits by itself)."""
        if self._task is None:
            await self.start()
        assert self._task is not None
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait({self._task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        await self.stop()
