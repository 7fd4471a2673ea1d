"""The History extension: where it stores, how it records (off the hot path), retention, errors."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
import pytest

from conveyor import App
from conveyor.commands.history import Window
from conveyor.errors import ConfigError
from conveyor.history import (
    Change,
    History,
    HistoryNotInstalled,
    HistoryUnavailable,
    history_of,
    history_url,
    open_store,
)
from conveyor.history.sqlite import SQLiteHistoryStore
from conveyor.testing import run_until_idle

from .scenarios import history


def test_default_url_follows_the_broker() -> None:
    assert history_url("sqlite:///jobs.db") == "sqlite:///jobs.db"
    pg = "postgresql://u@db:5432/app?schema=billing&pool_max=4"
    assert history_url(pg) == pg
    assert history_url("sqlite:///jobs.db", "postgresql://u@h/d") == "postgresql://u@h/d"
    with pytest.raises(ConfigError, match="unsupported history URL"):
        History("mysql://nope")
    with pytest.raises(ConfigError, match="max_rows"):
        History(max_rows=0)


@pytest.mark.parametrize("broker", ["redis://localhost:6379/0", "memory://"])
def test_history_on_a_broker_without_sql_needs_an_explicit_store_url(
    broker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    scheme = broker.partition("://")[0]
    with pytest.raises(ConfigError, match=rf"History on a {scheme}:// broker needs a store: pass History\(url="):
        history_url(broker)
    with pytest.raises(ConfigError, match=r"History\(url="):
        App(broker, extensions=[History()])
    assert list(tmp_path.iterdir()) == [], "nothing may be written in the working directory"


def test_history_on_the_broker_file_and_on_its_own_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    on_broker = App(f"sqlite:///{tmp_path / 'q.db'}", extensions=[History()])
    explicit = App("memory://", extensions=[History(f"sqlite:///{tmp_path / 'h.db'}")])
    try:
        assert history_of(on_broker).url == f"sqlite:///{tmp_path / 'q.db'}"
        assert history_of(explicit).url == f"sqlite:///{tmp_path / 'h.db'}"

        @explicit.job
        def ping() -> None:
            pass

        job_id = ping.send()
        run_until_idle(explicit)
        history_of(explicit).flush()
        assert history_of(explicit).store.get_job(job_id).job.state == "completed"  # type: ignore[union-attr]
        assert (tmp_path / "h.db").exists() and not (tmp_path / "conveyor-history.db").exists()
    finally:
        for app in (on_broker, explicit):
            history_of(app).close()
            app.close()


def test_history_not_installed_is_a_clear_error(app: App) -> None:
    with pytest.raises(HistoryNotInstalled, match=r"extensions=\[conveyor.history.History\(\)\]"):
        history_of(app)


class SlowStore(SQLiteHistoryStore):
    """A store whose writes take a while, to show the hot path never waits for them."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.batches: list[int] = []
        self.fail = 0

    def record(self, changes: Sequence[Change]) -> None:
        if self.fail:
            self.fail -= 1
            raise OSError("disk on fire")
        time.sleep(0.3)
        super().record(changes)
        self.batches.append(len(changes))


def test_sink_buffers_and_a_thread_writes_in_batches(tmp_path: Path) -> None:
    app = App("memory://", extensions=[history(url=f"sqlite:///{tmp_path / 'h.db'}", batch_size=1000)])
    h = history_of(app)
    store = h._store = SlowStore(h.url)

    @app.job
    def noop() -> None:
        pass

    started = time.perf_counter()
    ids = app.send_jobs(app.message(noop.name) for _ in range(200))
    assert time.perf_counter() - started < 0.25, "enqueue waited for history writes"
    assert h.recorder._thread is not None and h.recorder._thread.name == "conveyor-history"
    deadline = time.monotonic() + 5
    while sum(store.batches) < 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sum(store.batches) == 200 and len(store.batches) < 10
    assert len(store.list_jobs(state="enqueued", limit=500)) == 200 and ids
    h.close()
    app.close()


def test_failed_writes_are_retried(tmp_path: Path) -> None:
    app = App("memory://", extensions=[history(url=f"sqlite:///{tmp_path / 'h.db'}")])
    h = history_of(app)
    store = h._store = SlowStore(h.url)
    store.fail = 2

    @app.job
    def noop() -> None:
        pass

    job_id = noop.send()
    h.flush()
    h.flush()
    assert store.get_job(job_id) is None
    h.flush()
    assert store.get_job(job_id).job.state == "enqueued"  # type: ignore[union-attr]
    h.close()
    app.close()


def test_retention_runs_from_time_to_time(tmp_path: Path) -> None:
    app = App("memory://", extensions=[history(url=f"sqlite:///{tmp_path / 'h.db'}", prune_interval=0.2)])
    h = history_of(app)
    h.store.record([Change("enqueued", "ancient", "t", "q", time.time() - 8 * 86400)])
    assert h.store.get_job("ancient") is not None

    @app.job
    def noop() -> None:
        pass

    noop.send()  # starts the writer thread, which prunes every prune_interval
    deadline = time.monotonic() + 5
    while h.store.get_job("ancient") is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert h.store.get_job("ancient") is None
    assert len(h.store.list_jobs()) == 1
    h.close()
    app.close()


def test_dead_letters_that_never_ran_count_as_failures(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    producer, worker = App(url, extensions=[history()]), App(url, extensions=[history()])

    @producer.job(name="reports.build")
    def build() -> None:
        pass

    job_id = build.send()
    history_of(producer).flush()
    run_until_idle(worker)  # this worker does not know reports.build
    store = history_of(worker).store
    history_of(worker).flush()
    t = store.get_job(job_id)
    assert t.job.state == "dead" and t.job.dead_reason == "unknown_job_type" and t.attempts == []  # type: ignore[union-attr]
    [cluster] = store.failure_clusters(timedelta(minutes=1))
    assert (cluster.error_type, cluster.count, cluster.dead, cluster.job_type) == ("UnknownJob", 1, 1, "reports.build")
    for app in (producer, worker):
        history_of(app).close()
        app.close()


def test_window_option_parses_durations() -> None:
    w = Window()
    assert w.convert("90s", None, None) == timedelta(seconds=90)
    assert w.convert("1h30m", None, None) == timedelta(minutes=90)
    assert w.convert("7d", None, None) == timedelta(days=7)
    assert w.convert("45", None, None) == timedelta(seconds=45)
    for bad in ("1x", "h", "-5m", "0"):
        with pytest.raises(click.BadParameter):
            w.convert(bad, None, None)


def test_sink_is_thread_safe(tmp_path: Path) -> None:
    app = App("memory://", extensions=[history(url=f"sqlite:///{tmp_path / 'h.db'}")])

    @app.job
    def noop() -> None:
        pass

    def send(n: int) -> list[Any]:
        return [noop.send() for _ in range(n)]

    threads = [threading.Thread(target=send, args=(50,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    h = history_of(app)
    h.flush()
    assert len(h.store.list_jobs(limit=1000)) == 200
    h.close()
    app.close()


def test_unreachable_database_is_one_clear_error() -> None:
    store = open_store("postgresql://postgres@127.0.0.1:1/test?schema=nowhere")
    started = time.monotonic()
    with pytest.raises(HistoryUnavailable) as info:
        store.list_jobs()
    assert time.monotonic() - started < 5
    assert "\n" not in str(info.value) and "cannot read job history (postgresql)" in str(info.value)
    store.close()
