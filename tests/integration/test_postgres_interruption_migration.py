"""Migration 3 (the interruptions column) upgrades a schema that already holds jobs."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest

from conveyor.brokers import MAX_REFUNDED_INTERRUPTIONS, WORKER_SHUTDOWN, Message
from conveyor.brokers.postgres import PostgresBroker
from conveyor.brokers.postgres_sql import latest_version, migrations
from conveyor.job import new_id
from tests.contract.factories.postgres import drop_schema, new_schema, server_url, url_for

Q = "upgrade"


@pytest.fixture
def schema() -> Iterator[str]:
    name = new_schema()
    yield name
    drop_schema(name)


async def _schema_at_version_2_with_a_job(schema: str) -> None:
    old = PostgresBroker.from_url(url_for(schema, auto_migrate="false"))
    async with await psycopg.AsyncConnection.connect(server_url(), autocommit=True) as conn:
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(old.sql.version_table)
        for version, ddl in migrations(schema)[:2]:
            await conn.execute(ddl)
            await conn.execute(old.sql.record_version, (version,))
    await old.connect()
    await old.enqueue([Message(new_id(), Q, "t", b"{}", created_at=time.time())])
    await old.close()


async def test_a_version_2_schema_with_jobs_is_upgraded_and_counts_interruptions(schema: str) -> None:
    await _schema_at_version_2_with_a_job(schema)
    broker = PostgresBroker.from_url(url_for(schema))
    await broker.connect()  # auto_migrate: applies migration 3
    try:
        assert await broker.schema_version() == latest_version()
        for _ in range(MAX_REFUNDED_INTERRUPTIONS + 1):
            [d] = await broker.lease([Q], 1, 30.0)
            assert d.attempts == 1
            await broker.release([d], WORKER_SHUTDOWN, interrupted=True)
        [d] = await broker.lease([Q], 1, 30.0)
        assert d.attempts == 2
    finally:
        await broker.close()
