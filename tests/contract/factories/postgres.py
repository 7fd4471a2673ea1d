"""Contract factory: a PostgreSQL schema of its own per test, dropped afterwards.

The server comes from ``$CONVEYOR_TEST_POSTGRES_URL``, else the first of
``postgresql://postgres@127.0.0.1:5432/test`` and ``postgresql://root@...``
that accepts a connection. An unreachable server fails the test: it is
never skipped.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import psycopg
import pytest

from conveyor.brokers.postgres import PostgresBroker

URL_ENV = "CONVEYOR_TEST_POSTGRES_URL"
CANDIDATES = (
    "postgresql://postgres@127.0.0.1:5432/test",
    "postgresql://root@127.0.0.1:5432/test",
)

_server: str | None = None
_schemas: dict[Path, str] = {}


def server_url() -> str:
    """The test server's URL (without conveyor options); fails the test if none answers."""
    global _server
    if _server is not None:
        return _server
    candidates = [os.environ[URL_ENV]] if os.environ.get(URL_ENV) else list(CANDIDATES)
    errors = []
    for url in candidates:
        try:
            with psycopg.connect(url, connect_timeout=5):
                _server = url
                return url
        except psycopg.Error as exc:
            errors.append(f"  {url}: {str(exc).strip()}")
    pytest.fail(
        "PostgreSQL is not reachable; the postgres broker tests need a server with trust auth"
        f" and a database 'test' (or set ${URL_ENV}). Tried:\n" + "\n".join(errors),
        pytrace=False,
    )


def url_for(schema: str, **options: str) -> str:
    """A broker URL on the test server using ``schema``."""
    query = "&".join(f"{k}={v}" for k, v in {"schema": schema, **options}.items())
    return f"{server_url()}?{query}"


def new_schema() -> str:
    return f"ct_{uuid.uuid4().hex[:16]}"


def drop_schema(schema: str) -> None:
    with psycopg.connect(server_url(), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@asynccontextmanager
async def make(tmp_path: Path) -> AsyncIterator[PostgresBroker]:
    schema = _schemas[tmp_path] = new_schema()
    broker = PostgresBroker.from_url(url_for(schema))
    try:
        await broker.connect()
        yield broker
    finally:
        await broker.close()
        _schemas.pop(tmp_path, None)
        drop_schema(schema)


@asynccontextmanager
async def make_peer(tmp_path: Path) -> AsyncIterator[PostgresBroker]:
    """A second broker (its own pool) on the schema of the ``make`` of the same test."""
    broker = PostgresBroker.from_url(url_for(_schemas[tmp_path]))
    try:
        await broker.connect()
        yield broker
    finally:
        await broker.close()
