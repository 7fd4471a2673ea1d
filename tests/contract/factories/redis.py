"""Contract factory: a Redis broker under a key prefix of its own per test.

The server is ``$CONVEYOR_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``).
An unreachable server fails the test: it is never skipped.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from redis.asyncio import Redis

from conveyor.brokers.redis import RedisBroker

REDIS_URL = os.environ.get("CONVEYOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def prefix_for(tmp_path: Path) -> str:
    """One prefix per test: derived from its (unique) temporary directory."""
    digest = hashlib.sha1(str(tmp_path.resolve()).encode()).hexdigest()[:16]
    return f"conveyor-test-{digest}"


def url_for(tmp_path: Path) -> str:
    sep = "&" if "?" in REDIS_URL else "?"
    return f"{REDIS_URL}{sep}prefix={prefix_for(tmp_path)}"


async def connected(url: str) -> RedisBroker:
    broker = RedisBroker.from_url(url)
    try:
        await broker.connect()
        return broker
    except Exception as exc:
        problem = f"{type(exc).__name__}: {exc}"
    pytest.fail(
        f"Redis is not reachable at {REDIS_URL} ({problem}); start a server there"
        " or point CONVEYOR_TEST_REDIS_URL at one",
        pytrace=False,
    )


async def delete_prefix(prefix: str) -> None:
    """Delete every key under ``prefix``."""
    client = Redis.from_url(REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        for i in range(0, len(keys), 500):
            await client.delete(*keys[i: i + 500])
    finally:
        await client.aclose()


@asynccontextmanager
async def make(tmp_path: Path) -> AsyncIterator[RedisBroker]:
    broker = await connected(url_for(tmp_path))
    await delete_prefix(broker.prefix)
    try:
        yield broker
    finally:
        await broker.close()
        await delete_prefix(broker.prefix)


@asynccontextmanager
async def make_peer(tmp_path: Path) -> AsyncIterator[RedisBroker]:
    """A second connection under the same prefix, as another worker process would open."""
    broker = await connected(url_for(tmp_path))
    try:
        yield broker
    finally:
        await broker.close()
