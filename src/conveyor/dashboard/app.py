"""The dashboard's Starlette application: :func:`create_app`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from ..app import App
from . import api, pages
from .filters import templates
from .security import MAX_BODY, Guard, Keys
from .sources import Sources

log = logging.getLogger("conveyor.dashboard")
HERE = Path(__file__).parent
SAMPLE_INTERVAL = 5.0


async def healthz(request: Request) -> Response:
    """Liveness of the dashboard process (open: no token needed)."""
    return JSONResponse({"status": "ok"})


async def _sample(sources: Sources) -> None:
    try:
        await sources.sample()
    except Exception:
        log.exception("dashboard: sampling queue stats failed")


async def _sample_forever(sources: Sources, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        await _sample(sources)


def create_app(
    conveyor_app: App,
    *,
    token: str,
    trace_url: str | None = None,
    metrics: bool = False,
    sample_interval: float = SAMPLE_INTERVAL,
    max_body: int = MAX_BODY,
    close_app: bool = False,
) -> Starlette:
    """The dashboard for ``conveyor_app`` as a Starlette application.

    ``token`` guards every route but ``/healthz`` (see :mod:`.security`);
    ``trace_url`` is a template such as ``http://jaeger:16686/trace/{trace_id}``;
    ``metrics`` serves the app's Prometheus registry on ``/metrics``. While it
    runs (its lifespan), the dashboard samples queue depths every
    ``sample_interval`` seconds and counts job outcomes emitted in this
    process. ``close_app`` closes the app's broker connection at shutdown.
    """
    sources = Sources(conveyor_app, trace_url)
    keys = Keys(token)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        subscription = sources.samples.outcomes.attach(conveyor_app.bus)
        await _sample(sources)  # the first page already has a sample (and a health evaluation)
        task = asyncio.create_task(_sample_forever(sources, sample_interval), name="conveyor-dashboard-sampler")
        try:
            yield
        finally:
            subscription.cancel()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if close_app:
                await conveyor_app.aclose()

    routes: list[BaseRoute] = [
        Route("/healthz", healthz),
        *pages.routes(),
        *api.routes(),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(Guard, keys=keys, max_body=max_body)])
    if metrics:
        from .metrics import metrics_endpoint, registry_for

        app.add_route("/metrics", metrics_endpoint)
        app.state.metrics_registry = registry_for(sources.samples)
    app.state.sources = sources
    app.state.templates = templates()
    return app
