"""Transactional enqueue: send jobs inside your own PostgreSQL transaction.

The jobs are inserted on *your* connection, so they become visible (and
workers are notified) only when you commit, and a rollback enqueues nothing::

    async with await psycopg.AsyncConnection.connect(DSN) as conn:
        async with conn.transaction():
            await conn.execute("INSERT INTO orders ...")
            await send_in_transaction(app, conn, [send_receipt.message(order_id)])

The app's URL must be a ``postgresql://`` URL; its ``schema`` option names the
tables used, and that schema must exist already (``conveyor migrate APP``, or
any broker connect with ``auto_migrate`` on). The connection may be any
connection to the same database, pooled or not. ``job.enqueued`` is not
emitted, since this code cannot know whether the caller will commit: call
``app.emit_enqueued(jobs)`` after your commit to emit it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import psycopg

from .postgres_sql import Queries, enqueue_params, parse_url

if TYPE_CHECKING:
    from ..app import App
    from ..job import Job

__all__ = ["send_in_transaction", "send_in_transaction_sync"]

_queries: dict[str, Queries] = {}


def _prepare(app: App, jobs: Iterable[Job]) -> tuple[list[str], str, dict[str, Any]]:
    queries = _queries.get(app.url)
    if queries is None:
        queries = _queries[app.url] = Queries(parse_url(app.url))
    batch = list(jobs)
    params = enqueue_params(queries.channel, app.encode(batch), time.time())
    return [j.id for j in batch], queries.enqueue, params


async def send_in_transaction(
    app: App, conn: psycopg.AsyncConnection[Any], jobs: Iterable[Job]
) -> list[str]:
    """Insert built jobs (``fn.message(...)``) on ``conn`` without committing; return their ids."""
    ids, query, params = _prepare(app, jobs)
    if ids:
        await conn.execute(query, params)
    return ids


def send_in_transaction_sync(
    app: App, conn: psycopg.Connection[Any], jobs: Iterable[Job]
) -> list[str]:
    """Sync twin of :func:`send_in_transaction`."""
    ids, query, params = _prepare(app, jobs)
    if ids:
        conn.execute(query, params)
    return ids
