"""Contract factory: a fresh SQLite file per test."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from conveyor.brokers.sqlite import SQLiteBroker


@asynccontextmanager
async def make(tmp_path: Path) -> AsyncIterator[SQLiteBroker]:
    broker = SQLiteBroker(str(tmp_path / "contract.db"))
    await broker.connect()
    yield broker
    await broker.close()


@asynccontextmanager
async def make_peer(tmp_path: Path) -> AsyncIterator[SQLiteBroker]:
    """Another connection to the same file, as a second worker process would open."""
    async with make(tmp_path) as broker:
        yield broker
