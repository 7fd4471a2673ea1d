"""Job history on PostgreSQL: the shared scenarios, plus where the tables go.

Each test uses a schema of its own, dropped afterwards. An unreachable server
fails the tests (see tests/contract/factories/postgres.py); they never skip.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from conveyor import App
from conveyor.history import history_of, open_store
from tests.contract.factories.postgres import drop_schema, new_schema, server_url, url_for
from tests.unit.history import scenarios as s

pytestmark = pytest.mark.integration


@pytest.fixture
def schema() -> Iterator[str]:
    name = new_schema()
    yield name
    drop_schema(name)


@pytest.fixture
def make_app(schema: str) -> Iterator[s.MakeApp]:
    apps: list[App] = []

    def make(**options: Any) -> App:
        app = App(url_for(schema), extensions=[s.history(**options)])
        apps.append(app)
        return app

    yield make
    for app in apps:
        history_of(app).close()
        app.close()


@pytest.mark.parametrize("scenario", s.ALL, ids=[f.__name__ for f in s.ALL])
def test_scenario(scenario: Any, make_app: s.MakeApp) -> None:
    scenario(make_app)


def tables_in(schema: str) -> set[str]:
    with psycopg.connect(server_url()) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
        ).fetchall()
    return {r[0] for r in rows}


def test_tables_live_in_the_broker_schema(make_app: s.MakeApp, schema: str) -> None:
    app = make_app()
    assert history_of(app).url == url_for(schema)

    @app.job
    def noop() -> None:
        pass

    job_id = noop.send()
    history_of(app).flush()
    assert {
        "conveyor_history_jobs", "conveyor_history_attempts", "conveyor_history_events",
        "conveyor_history_workers", "conveyor_history_meta",
    } <= tables_in(schema)  # fmt: skip
    assert history_of(app).store.get_job(job_id).job.state == "enqueued"  # type: ignore[union-attr]


def test_processes_creating_the_tables_together_do_not_race(schema: str) -> None:
    stores = [open_store(url_for(schema)) for _ in range(6)]
    errors: list[BaseException] = []

    def first_read(store: Any) -> None:
        try:
            store.list_jobs()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=first_read, args=(st,)) for st in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for st in stores:
        st.close()
    assert errors == []
    assert "conveyor_history_jobs" in tables_in(schema)
