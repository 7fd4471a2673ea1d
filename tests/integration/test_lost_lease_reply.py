"""A lease whose reply is lost after the broker committed it costs no attempt.

The worker runs on the real broker (each of the four, real servers at
127.0.0.1) turned into a subclass whose first non-empty ``lease`` commits and
then raises, as a connection dropped before the reply would. A job with
``max_attempts=1`` must still run, once, and complete.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from conveyor import App, Worker, WorkerConfig
from conveyor.brokers import Broker, Delivery
from conveyor.brokers.memory import MemoryBroker
from conveyor.brokers.postgres import PostgresBroker
from conveyor.brokers.redis import RedisBroker
from conveyor.brokers.sqlite import SQLiteBroker
from conveyor.testing import capture_signals

pytestmark = pytest.mark.integration

BROKERS = ("memory", "postgres", "redis", "sqlite")


class LosesTheFirstLeaseReply:
    """Mixed in before a real broker class: its first lease that took messages raises."""

    replies_lost = 0

    async def lease(
        self, queues: Sequence[str], limit: int, visibility_timeout: float, *, claim: str | None = None
    ) -> list[Delivery]:
        taken: list[Delivery] = await super().lease(  # type: ignore[misc]
            queues, limit, visibility_timeout, claim=claim
        )
        if taken and not self.replies_lost:
            self.replies_lost += 1
            raise ConnectionError("connection lost before the lease reply arrived")
        return taken


def _twin(real: Broker) -> Broker:
    """A flaky instance of ``real``'s class on ``real``'s store (memory: a fresh one)."""
    cls: Any = type(f"Flaky{type(real).__name__}", (LosesTheFirstLeaseReply, type(real)), {})
    if isinstance(real, MemoryBroker):
        return cls()  # type: ignore[no-any-return]
    if isinstance(real, SQLiteBroker):
        return cls(real.path)  # type: ignore[no-any-return]
    if isinstance(real, PostgresBroker):
        return cls(real.settings)  # type: ignore[no-any-return]
    assert isinstance(real, RedisBroker)
    return cls(real.url, real.prefix)  # type: ignore[no-any-return]


@pytest.fixture(params=BROKERS)
async def flaky(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Broker]:
    factory: ModuleType = importlib.import_module(f"tests.contract.factories.{request.param}")
    async with factory.make(tmp_path) as real:  # the store, and its cleanup
        broker = _twin(real)
        await broker.connect()
        try:
            yield broker
        finally:
            await broker.close()


async def test_a_lost_lease_reply_does_not_cost_a_single_attempt_job_its_run(flaky: Broker) -> None:
    app = App("memory://")
    app._connections._shared = flaky  # the worker uses this broker (any URL scheme)
    runs: list[int] = []

    @app.job(max_attempts=1)
    async def once(n: int) -> None:
        runs.append(n)

    await once.send_async(7)
    config = WorkerConfig(queues=("default",), burst=True, poll_interval=0.05, visibility_timeout=30)
    with capture_signals(app) as events:
        result = await Worker(app, config).run()
    lost: Any = flaky
    assert lost.replies_lost == 1
    assert runs == [7]
    assert result.counters.completed == 1 and result.counters.dead == 0
    assert [e.attrs["attempt"] for e in events.named("job.started")] == [1]
    s = (await flaky.stats(["default"]))["default"]
    assert (s.ready, s.in_flight, s.dead) == (0, 0, 0)
