"""Fixtures: SQLite apps with dead letters (some carrying markup), with and without
History and Monitor, and authenticated TestClients for their dashboards."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from conveyor import App, Backoff
from conveyor.brokers import Broker, Failure, Message
from conveyor.dashboard import create_app
from conveyor.history import History, history_of
from conveyor.job import Job, encode, new_id
from conveyor.monitor.extension import Monitor
from conveyor.testing import run_until_idle

TOKEN = "test-token-0123456789abcdef"
XSS = "<script>alert(1)</script>"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACE_URL = "http://jaeger:16686/trace/{trace_id}"
FAST = Backoff(base=0.01, maximum=0.02)


def inject_dead(app: App, *, job_type: str, body: bytes, error: Failure, queue: str = "default") -> str:
    """Store a dead letter straight through the broker contract; returns its id."""
    job_id = new_id()

    async def go(broker: Broker) -> None:
        await broker.enqueue([Message(job_id, queue, job_type, body)])
        [delivery] = await broker.lease([queue], 1, 30.0)
        await broker.dead(delivery, "poison", error)

    app.run(go)
    return job_id


def job_body(job_type: str, *args: Any, headers: dict[str, str] | None = None, **kwargs: Any) -> bytes:
    return encode(Job(id=new_id(), type=job_type, args=list(args), kwargs=kwargs, headers=headers or {}))


def register_jobs(app: App) -> None:
    """A job type named like markup that always fails, and one that works."""

    @app.job(name=XSS, max_attempts=2, backoff=FAST)
    def explode(password: str, note: str) -> None:
        raise RuntimeError(f"{XSS} exploded")

    @app.job(name="ok.add", queue="fast")
    def add(a: int, b: int) -> int:
        return a + b


def seed(app: App) -> dict[str, str]:
    """Two dead jobs from a real worker, one injected with markup everywhere, one with a trace."""
    explode = app.registry[XSS]
    ids = {"run": app.send_jobs([app.message(explode.name, ["hunter2", XSS])])[0]}
    app.send_jobs([app.message(explode.name, ["s3cret", "second"]), app.message("ok.add", [1, 2])])
    run_until_idle(app)
    ids["markup"] = inject_dead(
        app,
        job_type=XSS,
        body=job_body(XSS, XSS, api_key="sk-live-1", note=XSS),
        error=Failure(XSS, f"message {XSS}", f"Traceback (most recent call last):\n  {XSS}\nRuntimeError: {XSS}"),
    )
    ids["traced"] = inject_dead(
        app,
        job_type="ok.add",
        body=job_body("ok.add", 1, 2, headers={"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01", "token": "t0p"}),
        error=Failure("ValueError", "bad sum", ""),
        queue="fast",
    )
    for ext in app.extensions:
        if isinstance(ext, History):
            ext.flush()
    return ids


AppFactory = Callable[..., App]


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[AppFactory]:
    apps: list[App] = []

    def make(history: bool = False, monitor: bool = False) -> App:
        extensions: list[Any] = []
        if history:
            extensions.append(History(f"sqlite:///{tmp_path / 'history.db'}", heartbeat_interval=0.2))
        if monitor:
            extensions.append(Monitor(sinks=[]))
        app = App(f"sqlite:///{tmp_path / f'q{len(apps)}.db'}", extensions=extensions)
        register_jobs(app)
        apps.append(app)
        return app

    yield make
    for app in apps:
        for ext in app.extensions:
            ext.close()  # type: ignore[attr-defined]
        app.close()


@pytest.fixture
def plain_app(make_app: AppFactory) -> App:
    """No History, no Monitor."""
    return make_app()


@pytest.fixture
def full_app(make_app: AppFactory) -> App:
    """History and Monitor installed."""
    return make_app(history=True, monitor=True)


class Dashboard:
    """A TestClient for one dashboard, with helpers for auth and CSRF."""

    def __init__(self, client: TestClient, app: App, ids: dict[str, str]) -> None:
        self.client, self.app, self.ids = client, app, ids
        self.auth = {"Authorization": f"Bearer {TOKEN}"}

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.client.get(path, headers={**self.auth, **kwargs.pop("headers", {})}, **kwargs)

    def csrf(self) -> str:
        token: str = self.get("/api/session").json()["csrf_token"]
        return token

    def post(self, path: str, csrf: bool = True, **kwargs: Any) -> Any:
        headers = {**self.auth, **kwargs.pop("headers", {})}
        if csrf:
            headers["X-CSRF-Token"] = self.csrf()
        return self.client.post(path, headers=headers, **kwargs)

    def delete(self, path: str, csrf: bool = True) -> Any:
        headers = {**self.auth, **({"X-CSRF-Token": self.csrf()} if csrf else {})}
        return self.client.delete(path, headers=headers)

    def dead_ids(self) -> set[str]:
        return {d["id"] for d in self.get("/api/dead-letters").json()}


def open_dashboard(app: App, **options: Any) -> Iterator[Dashboard]:
    ids = seed(app)
    options.setdefault("trace_url", TRACE_URL)
    with TestClient(create_app(app, token=TOKEN, **options), follow_redirects=False) as client:
        yield Dashboard(client, app, ids)


@pytest.fixture
def plain(plain_app: App) -> Iterator[Dashboard]:
    yield from open_dashboard(plain_app)


@pytest.fixture
def full(full_app: App) -> Iterator[Dashboard]:
    yield from open_dashboard(full_app)


def store_of(app: App) -> Any:
    history = history_of(app)
    history.flush()
    return history.store
