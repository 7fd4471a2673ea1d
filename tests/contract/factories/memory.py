"""Contract factory: the in-process memory broker."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from conveyor.brokers.memory import MemoryBroker


@asynccontextmanager
async def make(tmp_path: object) -> AsyncIterator[MemoryBroker]:
    broker = MemoryBroker()
    await broker.connect()
    yield broker
    await broker.close()
