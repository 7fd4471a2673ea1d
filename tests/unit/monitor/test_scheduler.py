"""Periodic jobs: triggers, registration, and the exactly-once tick logic across leaders."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from conveyor import App, ConfigError
from conveyor.job import decode
from conveyor.scheduler import (
    LOCK_NAME,
    PERIODIC_TICK,
    TICK_HEADER,
    Cron,
    Every,
    Scheduler,
    scheduler_for,
    tick_id,
)
from conveyor.testing import capture_signals


def ms(dt: datetime) -> int:
    return round(dt.timestamp() * 1000)


def test_every_is_aligned_to_the_epoch() -> None:
    t = Every(timedelta(minutes=5))
    now = ms(datetime(2024, 1, 1, 10, 7, 30, tzinfo=UTC))
    assert t.latest(now) == ms(datetime(2024, 1, 1, 10, 5, tzinfo=UTC))
    assert t.following(t.latest(now)) == ms(datetime(2024, 1, 1, 10, 10, tzinfo=UTC))
    assert t.latest(ms(datetime(2024, 1, 1, 10, 10, tzinfo=UTC))) == ms(datetime(2024, 1, 1, 10, 10, tzinfo=UTC))
    with pytest.raises(ConfigError):
        Every(0.5)


def test_cron_latest_includes_an_exact_tick_and_uses_the_time_zone() -> None:
    c = Cron("*/5 * * * *")
    on_tick = ms(datetime(2024, 1, 1, 0, 10, tzinfo=UTC))
    assert c.latest(on_tick) == on_tick
    assert c.latest(on_tick + 1000) == on_tick
    assert c.following(on_tick) == on_tick + 5 * 60 * 1000
    paris = Cron("0 9 * * *", "Europe/Paris")
    assert paris.latest(ms(datetime(2024, 1, 1, 12, tzinfo=UTC))) == ms(datetime(2024, 1, 1, 8, tzinfo=UTC))
    with pytest.raises(ConfigError):
        Cron("not a cron")


def test_tick_id_is_a_deterministic_uuid() -> None:
    a = tick_id("reports.daily", 1_700_000_000_000)
    assert a == tick_id("reports.daily", 1_700_000_000_000)
    assert uuid.UUID(a).version == 5
    assert a != tick_id("reports.daily", 1_700_000_060_000) != tick_id("reports.other", 1_700_000_000_000)


def test_periodic_registers_the_job_and_one_scheduler(app: App) -> None:
    @app.periodic(every=timedelta(seconds=10), name="tick.a", queue="cron", max_attempts=1, timeout=5)
    def a() -> None:
        pass

    @app.periodic(cron="*/5 * * * *", name="tick.b")
    async def b() -> None:
        pass

    assert app.registry["tick.a"].queue == "cron" and app.registry["tick.a"].timeout == 5
    assert app.registry["tick.a"].policy.max_attempts == 1
    schedulers = [s for s in app.worker_services if isinstance(s, Scheduler)]
    assert len(schedulers) == 1 and set(schedulers[0].schedules) == {"tick.a", "tick.b"}


@pytest.mark.parametrize(
    "options",
    [{}, {"every": 10, "cron": "* * * * *"}, {"every": 10, "catch_up": "all"}, {"every": 10, "grace": -1}],
)
def test_periodic_rejects_bad_options(app: App, options: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        app.periodic(**options)


def test_periodic_job_must_take_no_arguments(app: App) -> None:
    with pytest.raises(ConfigError, match="no arguments"):

        @app.periodic(every=10)
        def needs(x: int) -> None:
            pass


# -- the tick logic, with two "processes" on one SQLite file ---------------------------


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


T0 = 1_800_000_000.0  # a whole multiple of 10 seconds


def make(db: Path) -> tuple[App, Scheduler]:
    app = App(f"sqlite:///{db}")

    @app.periodic(every=timedelta(seconds=10), name="tick.job", catch_up="latest")
    def job() -> None:
        pass

    return app, scheduler_for(app)


Pair = tuple[App, Scheduler, App, Scheduler]


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    a_app, a = make(tmp_path / "q.db")
    b_app, b = make(tmp_path / "q.db")
    yield a_app, a, b_app, b
    a_app.close()
    b_app.close()


def due(app: App, scheduler: Scheduler, owner: str, at: float) -> None:
    """One scheduler step for every schedule at time ``at``, as the leader ``owner``."""
    scheduler.clock = Clock(at)

    async def step() -> None:
        broker = await app.broker()
        for s in scheduler.schedules.values():
            await scheduler._due(broker, s, owner)

    app.run(lambda _b: step())


def ticks(app: App) -> list[int]:
    async def read() -> list[int]:
        broker = await app.broker()
        found = await broker.lease(["default"], 1000, 60)
        await broker.release(found)
        return sorted(int(decode(d.body).headers[TICK_HEADER]) for d in found)

    result: list[int] = app.run(lambda _b: read())
    return result


def test_a_new_job_starts_with_its_next_tick_and_each_tick_is_enqueued_once(pair: Pair) -> None:
    a_app, a, _, _ = pair
    due(a_app, a, "A", T0 + 3)  # first ever: the tick at T0 is not run
    due(a_app, a, "A", T0 + 9)
    assert ticks(a_app) == []
    due(a_app, a, "A", T0 + 10.01)
    due(a_app, a, "A", T0 + 10.5)
    assert ticks(a_app) == [int((T0 + 10) * 1000)]
    job_id = tick_id("tick.job", int((T0 + 10) * 1000))
    assert a_app.stats()["default"].ready == 1 and uuid.UUID(job_id)


def test_a_new_leader_does_not_repeat_the_tick_of_the_old_one(pair: Pair) -> None:
    a_app, a, b_app, b = pair
    due(a_app, a, "A", T0 + 1)
    due(a_app, a, "A", T0 + 10.01)  # A enqueues the tick at T0+10...
    due(b_app, b, "B", T0 + 12)  # ...then B takes over within the same period
    due(b_app, b, "B", T0 + 15)
    assert ticks(a_app) == [int((T0 + 10) * 1000)]
    due(b_app, b, "B", T0 + 20.01)
    due(a_app, a, "A", T0 + 20.02)  # a stale leader gets no second copy
    assert ticks(a_app) == [int((T0 + 10) * 1000), int((T0 + 20) * 1000)]


def test_missed_ticks_run_once_on_catch_up(pair: Pair) -> None:
    a_app, a, b_app, b = pair
    due(a_app, a, "A", T0 + 1)
    with capture_signals(b_app, [PERIODIC_TICK]) as events:
        due(b_app, b, "B", T0 + 47)  # no scheduler ran for ticks 10..40: only 40 runs
    assert ticks(a_app) == [int((T0 + 40) * 1000)]
    assert events[0].attrs["catch_up"] is True and events[0].attrs["late"] == pytest.approx(7)


def test_catch_up_none_skips_missed_ticks(tmp_path: Path) -> None:
    app = App(f"sqlite:///{tmp_path / 'q.db'}")

    @app.periodic(every=10, name="tick.none", catch_up="none", grace=1)
    def job() -> None:
        pass

    s = scheduler_for(app)
    try:
        due(app, s, "A", T0 + 1)
        s.schedules["tick.none"].last_ms = None  # as if a new process took over later
        due(app, s, "B", T0 + 47)
        assert ticks(app) == []
        due(app, s, "B", T0 + 50.2)
        assert ticks(app) == [int((T0 + 50) * 1000)]
    finally:
        app.close()


def test_the_deterministic_id_dedupes_a_tick_whose_claim_was_lost(pair: Pair) -> None:
    a_app, a, b_app, b = pair
    due(a_app, a, "A", T0 + 1)
    due(a_app, a, "A", T0 + 10.01)

    async def drop_claim() -> None:
        broker = await a_app.broker()
        await broker.release_lock(a.schedules["tick.job"].marker(int((T0 + 10) * 1000)), "A")

    a_app.run(lambda _b: drop_claim())
    due(b_app, b, "B", T0 + 12)  # B claims and enqueues the same tick again: same id, stored once
    assert a_app.stats()["default"].ready == 1


def test_scheduler_service_holds_the_leader_lock_and_releases_it(tmp_path: Path) -> None:
    app, s = make(tmp_path / "q.db")
    s.lock_ttl = 3.0
    worker = SimpleNamespace(id="w1")

    async def go() -> tuple[bool, bool]:
        broker = await app.broker()
        task = asyncio.create_task(s.run(worker))  # type: ignore[arg-type]
        await asyncio.sleep(0.2)
        held_by_w1 = not await broker.acquire_lock(LOCK_NAME, "other", 3.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        free = await broker.acquire_lock(LOCK_NAME, "other", 3.0)
        return held_by_w1, free

    try:
        assert app.run(lambda _b: go()) == (True, True)
    finally:
        app.close()
