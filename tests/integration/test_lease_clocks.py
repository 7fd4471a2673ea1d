"""Lease deadlines on the shared brokers come from the server's clock, not the client's.

Two broker instances on one store stand for two hosts. A host's clock is skewed
by replacing the ``time`` module the broker module reads with one that is
``skew`` seconds off: whatever the broker computes from the client clock moves
with it, what the server computes does not. Real servers at 127.0.0.1; an
unreachable server fails these tests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import conveyor.brokers.postgres
import conveyor.brokers.redis
from conveyor.brokers import Broker, Message, Selector
from conveyor.job import new_id
from tests.contract.factories import postgres, redis

pytestmark = pytest.mark.integration

Q = "clocks"
TWO_MINUTES = 120.0

#: broker name -> (contract factory, the module whose clock a host's broker reads)
SHARED = {
    "postgres": (postgres, conveyor.brokers.postgres),
    "redis": (redis, conveyor.brokers.redis),
}


class _SkewedTime:
    """The ``time`` module, with ``time()`` ``skew`` seconds off."""

    def __init__(self, skew: float) -> None:
        self.skew = skew

    def time(self) -> float:
        return time.time() + self.skew

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@pytest.fixture(params=sorted(SHARED))
def shared(request: pytest.FixtureRequest) -> tuple[ModuleType, ModuleType]:
    return SHARED[request.param]


@asynccontextmanager
async def two_hosts(shared: tuple[ModuleType, ModuleType], tmp_path: Path) -> AsyncIterator[tuple[Broker, Broker]]:
    factory, _ = shared
    async with factory.make(tmp_path) as first, factory.make_peer(tmp_path) as second:
        yield first, second


@contextmanager
def clock_off_by(module: ModuleType, skew: float, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """While inside, every broker of ``module`` (this process's host) reads a skewed clock."""
    with monkeypatch.context() as patch:
        patch.setattr(module, "time", _SkewedTime(skew))
        yield


def msg() -> Message:
    return Message(new_id(), Q, "t", b"{}", 0, 0.0, time.time())


async def test_a_host_two_minutes_ahead_does_not_rescue_a_live_lease(
    shared: tuple[ModuleType, ModuleType], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with two_hosts(shared, tmp_path) as (first, ahead):
        await first.enqueue([msg()])
        [d] = await first.lease([Q], 1, 30.0)
        with clock_off_by(shared[1], TWO_MINUTES, monkeypatch):
            assert await ahead.rescue() == []
            assert await ahead.lease([Q], 1, 30.0) == []
        assert await first.ack([d]) == []


async def test_a_lease_taken_by_a_host_two_minutes_behind_lasts_its_visibility_timeout(
    shared: tuple[ModuleType, ModuleType], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with two_hosts(shared, tmp_path) as (behind, other):
        await behind.enqueue([msg()])
        with clock_off_by(shared[1], -TWO_MINUTES, monkeypatch):
            [d] = await behind.lease([Q], 1, 30.0)
        assert await other.rescue() == []
        with clock_off_by(shared[1], -TWO_MINUTES, monkeypatch):
            assert await behind.extend([d], 30.0) == []
        assert await other.rescue() == []
        assert (await other.stats([Q]))[Q].in_flight == 1


async def test_a_host_two_minutes_behind_still_rescues_an_expired_lease(
    shared: tuple[ModuleType, ModuleType], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with two_hosts(shared, tmp_path) as (first, behind):
        await first.enqueue([msg()])
        [d] = await first.lease([Q], 1, 0.3)
        await asyncio.sleep(0.6)
        with clock_off_by(shared[1], -TWO_MINUTES, monkeypatch):
            assert await behind.rescue() == [d.id]
            [again] = await behind.lease([Q], 1, 30.0)  # rescued work is due to every clock
        assert (again.id, again.attempts) == (d.id, 2)


async def test_a_job_sent_now_by_a_host_two_minutes_ahead_is_due_at_once(
    shared: tuple[ModuleType, ModuleType], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with two_hosts(shared, tmp_path) as (ahead, worker):
        with clock_off_by(shared[1], TWO_MINUTES, monkeypatch):
            m = msg()
            await ahead.enqueue([m])
        [d] = await worker.lease([Q], 1, 30.0)
        assert d.id == m.id


async def test_a_dead_letter_retried_by_a_host_two_minutes_ahead_is_due_at_once(
    shared: tuple[ModuleType, ModuleType], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with two_hosts(shared, tmp_path) as (ahead, worker):
        await worker.enqueue([m := msg()])
        [d] = await worker.lease([Q], 1, 30.0)
        await worker.dead(d, "non_retryable")
        with clock_off_by(shared[1], TWO_MINUTES, monkeypatch):
            assert await ahead.dlq_retry(Selector(ids=[m.id])) == [m.id]
        [again] = await worker.lease([Q], 1, 30.0)
        assert (again.id, again.attempts) == (m.id, 1)
