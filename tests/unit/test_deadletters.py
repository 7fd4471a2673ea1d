"""The App's dead-letter API: ids and prefixes, paging, signals, history and retention."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from conveyor import App
from conveyor import signals as sig
from conveyor.brokers import Broker, Failure, Message, Selector
from conveyor.deadletters import (
    AmbiguousDeadLetterId,
    BadCursor,
    DeadLetterNotFound,
    Retention,
    RetentionService,
)
from conveyor.errors import ConfigError
from conveyor.history import History, history_of
from conveyor.telemetry import Telemetry
from conveyor.testing import capture_signals, run_until_idle
from conveyor.worker import Worker, WorkerConfig


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    a = App(f"sqlite:///{tmp_path / 'q.db'}")
    yield a
    a.close()


def bury(app: App, ids: list[str], queue: str = "default") -> list[str]:
    """Dead-letter messages with these ids, one after the other (oldest first)."""

    async def go(broker: Broker) -> None:
        for job_id in ids:
            await broker.enqueue([Message(job_id, queue, "t", b"{}")])
            [d] = await broker.lease([queue], 1, 30.0)
            await broker.dead(d, "poison", Failure("E", "m"))

    app.run(go)
    return ids


def test_a_dead_letter_is_found_by_whole_id_or_unique_prefix(app: App) -> None:
    bury(app, ["aa-111", "aa-222", "bb-333"])
    assert app.dlq_get("aa-111").id == "aa-111"
    assert app.dlq_get("bb").id == "bb-333"
    assert app.dlq_retry(Selector(ids=["aa-2"])) == ["aa-222"]


def test_an_ambiguous_prefix_is_an_error_listing_the_candidates(app: App) -> None:
    bury(app, ["aa-111", "aa-222", "bb-333"])
    with pytest.raises(AmbiguousDeadLetterId, match=r"'aa'.*aa-111, aa-222") as err:
        app.dlq_retry(Selector(ids=["bb", "aa"]))
    assert err.value.candidates == ["aa-111", "aa-222"]
    assert len(app.dlq_list()) == 3  # nothing retried, not even bb-333


def test_an_unknown_id_is_an_error_and_nothing_is_touched(app: App) -> None:
    bury(app, ["aa-111"])
    with pytest.raises(DeadLetterNotFound, match=r"'zz'.*'yy'"):
        app.dlq_purge(Selector(ids=["aa-111", "zz", "yy"]))
    assert [d.id for d in app.dlq_list()] == ["aa-111"]
    with pytest.raises(DeadLetterNotFound):
        app.dlq_get("zz")
    assert app.dlq_purge(Selector(ids=["zz", "aa"]), missing_ok=True) == ["aa-111"]


def test_pages_go_oldest_first_and_the_last_has_no_next_cursor(app: App) -> None:
    ids = bury(app, [f"id-{i}" for i in range(5)])
    first = app.dlq_page(limit=2)
    assert [d.id for d in first.letters] == ids[:2] and first.next is not None
    second = app.dlq_page(limit=2, after=first.next)
    assert [d.id for d in second.letters] == ids[2:4] and second.next is not None
    last = app.dlq_page(limit=2, after=second.next)
    assert [d.id for d in last.letters] == ids[4:] and last.next is None
    with pytest.raises(BadCursor, match="bad dead-letter cursor"):
        app.dlq_page(after="nonsense")


def test_retry_and_purge_emit_signals_with_count_ids_and_requester(app: App) -> None:
    bury(app, ["r-1", "r-2", "p-1"])
    bury(app, ["q-1"], queue="other")
    with capture_signals(app, [sig.DLQ_RETRIED, sig.DLQ_PURGED]) as events:
        assert app.dlq_retry(Selector(ids=["r-1", "r-2"]), requested_by="cli") == ["r-1", "r-2"]
        assert app.dlq_purge(Selector(all=True, queue="other")) == ["q-1"]
        assert app.dlq_retry(Selector(all=True, queue="other")) == []  # nothing: no signal
    [retried] = events.named("dlq.retried")
    assert dict(retried.attrs) == {"count": 2, "job_ids": "r-1,r-2", "queue": "", "requested_by": "cli"}
    [purged] = events.named("dlq.purged")
    assert dict(purged.attrs) == {"count": 1, "job_ids": "q-1", "queue": "other", "requested_by": "api"}
    with pytest.raises(ValueError, match="requested_by"):
        app.dlq_retry(Selector(all=True), requested_by="someone")


def test_retry_all_is_recorded_in_history_like_a_retry_by_id(tmp_path: Path) -> None:
    history = History(f"sqlite:///{tmp_path / 'h.db'}")
    app = App(f"sqlite:///{tmp_path / 'q.db'}", extensions=[history])
    try:

        @app.job(max_attempts=1)
        def fail(n: int) -> None:
            raise RuntimeError("down")

        ids = [fail.send(n) for n in range(3)]
        run_until_idle(app)
        history.flush()
        assert {history.store.get_job(i).job.state for i in ids} == {"dead"}  # type: ignore[union-attr]
        assert sorted(app.dlq_retry(Selector(all=True))) == sorted(ids)
        for job_id in ids:  # recorded now, before any worker picks the jobs up
            timeline = history_of(app).store.get_job(job_id)
            assert timeline is not None and timeline.job.state == "enqueued"
            assert [e.kind for e in timeline.events][-1] == "manual_retry"
    finally:
        history.close()
        app.close()


def test_retention_defaults_are_seven_days_and_100000_per_queue(app: App) -> None:
    assert app.dead_letters.retention == Retention(timedelta(days=7), 100_000, 300.0)
    assert any(isinstance(s, RetentionService) for s in app.worker_services)
    keep_all = App("memory://", dead_letter_retention=None)
    assert not any(isinstance(s, RetentionService) for s in keep_all.worker_services)
    assert keep_all.dlq_prune() == 0
    keep_all.close()
    for bad in ({"max_age": timedelta(0)}, {"max_per_queue": 0}, {"interval": 0}):
        with pytest.raises(ConfigError):
            Retention(**bad)  # type: ignore[arg-type]


def test_prune_keeps_the_newest_per_queue_and_emits_dlq_pruned(tmp_path: Path) -> None:
    app = App(f"sqlite:///{tmp_path / 'q.db'}", dead_letter_retention=Retention(max_per_queue=2))
    try:
        bury(app, ["a1", "a2", "a3", "a4"])
        bury(app, ["b1"], queue="b")
        with capture_signals(app, [sig.DLQ_PRUNED]) as events:
            assert app.dlq_prune() == 2
            assert app.dlq_prune() == 0
        assert sorted(d.id for d in app.dlq_list()) == ["a3", "a4", "b1"]
        [pruned] = events
        assert dict(pruned.attrs) == {"count": 2, "max_age": 7 * 86400.0, "max_per_queue": 2}
    finally:
        app.close()


def test_prune_by_age(tmp_path: Path) -> None:
    app = App(f"sqlite:///{tmp_path / 'q.db'}", dead_letter_retention=Retention(max_age=timedelta(seconds=0.2)))
    try:
        bury(app, ["old"])
        time.sleep(0.3)
        bury(app, ["young"])
        assert app.dlq_prune() == 1
        assert [d.id for d in app.dlq_list()] == ["young"]
    finally:
        app.close()


def test_a_worker_prunes_dead_letters_on_its_own_and_it_is_counted(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    app = App(
        f"sqlite:///{tmp_path / 'q.db'}",
        dead_letter_retention=Retention(max_per_queue=1, interval=0.05),
        telemetry=Telemetry(prometheus_registry=registry),
    )
    try:
        bury(app, ["x1", "x2", "x3"])
        pruned = threading.Event()
        app.bus.subscribe(lambda e: pruned.set(), [sig.DLQ_PRUNED])

        async def work() -> None:
            worker = Worker(app, WorkerConfig(poll_interval=0.05))
            run = asyncio.create_task(worker.run())
            for _ in range(400):  # up to 20 s on a busy machine
                if pruned.is_set():
                    break
                await asyncio.sleep(0.05)
            worker.request_stop("test")
            await run

        asyncio.run(work())
        assert pruned.is_set(), "the worker never applied dead-letter retention"
        assert [d.id for d in app.dlq_list()] == ["x3"]
        assert registry.get_sample_value("conveyor_dead_letters_pruned_total") == 2.0
    finally:
        app.close()
