"""The PostgreSQL broker: many hosts, one table, ``FOR UPDATE SKIP LOCKED`` and LISTEN/NOTIFY.

Jobs live in ``<schema>.jobs`` (schema ``conveyor`` unless the URL says
``?schema=...``). A lease is one statement that locks the best ready rows
with ``FOR UPDATE SKIP LOCKED`` and marks them leased, so workers on any
number of hosts never take the same job nor wait for each other. Statements
that make work ready send ``pg_notify`` in the same transaction; a dedicated
listening connection turns those into early returns from :meth:`wait`, and
polling stays the fallback when it is down. The schema is versioned and
created by :meth:`PostgresBroker.migrate` (on :meth:`connect` unless
``auto_migrate=false``). See docs/brokers/postgres.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from ..errors import BrokerUnavailable, ConfigError
from .base import (
    LEASE_EXPIRED,
    MANUAL_RETRY,
    MAX_REFUNDED_INTERRUPTIONS,
    WORKER_SHUTDOWN,
    Broker,
    Claims,
    DeadLetter,
    Delivery,
    DlqPosition,
    Failure,
    Message,
    QueueStats,
    Selector,
    check_claim,
)
from .postgres_sql import Queries, Settings, enqueue_params, migrations, parse_url

__all__ = ["PostgresBroker"]

log = logging.getLogger("conveyor.brokers.postgres")

Conn = psycopg.AsyncConnection[TupleRow]
T = TypeVar("T")

#: Seconds between liveness checks of an idle listening connection.
LISTEN_CHECK_INTERVAL = 30.0


class PostgresBroker(Broker):
    """A broker on a PostgreSQL database, shared by every worker that uses the same schema."""

    loop_bound = True

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sql = Queries(settings)
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._pooled: weakref.WeakSet[Conn] = weakref.WeakSet()
        self._listener: asyncio.Task[None] | None = None
        self._listen_conn: Conn | None = None
        self._wake = asyncio.Event()
        self._seq = 0
        self._notified: dict[str, int] = {}
        self._everyone = 0
        self._seen: dict[tuple[str, ...], int] = {}
        self._claims = Claims()

    @classmethod
    def from_url(cls, url: str) -> PostgresBroker:
        """``postgresql://user:pw@host:5432/db?schema=conveyor&auto_migrate=true&pool_max=10``."""
        return cls(parse_url(url))

    def __repr__(self) -> str:
        return f"PostgresBroker(schema={self.settings.schema!r})"

    # -- connections ----------------------------------------------------------
    async def _direct(self) -> Conn:
        """A connection outside the pool; a failure raises :class:`BrokerUnavailable` with libpq's reason."""
        try:
            return await psycopg.AsyncConnection.connect(self.settings.conninfo, autocommit=True)
        except psycopg.OperationalError as exc:
            raise BrokerUnavailable.connecting("PostgreSQL", self.settings.conninfo, exc) from exc

    @property
    def pool(self) -> AsyncConnectionPool[Conn]:
        if self._pool is None:
            raise RuntimeError("PostgresBroker is not connected: await broker.connect() first")
        return self._pool

    async def connect(self) -> None:
        """Check the server, migrate the schema (unless ``auto_migrate=false``), open the pool."""
        if self._pool is not None:
            return
        async with await self._direct() as conn:
            if self.settings.auto_migrate:
                await self._migrate(conn)
        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            self.settings.conninfo,
            min_size=self.settings.pool_min,
            max_size=self.settings.pool_max,
            kwargs={"autocommit": True},
            configure=self._track,
            open=False,
            name=f"conveyor-{self.settings.schema}",
        )
        await pool.open(wait=self.settings.pool_min > 0)
        self._pool = pool

    async def _track(self, conn: Conn) -> None:
        self._pooled.add(conn)

    async def close(self) -> None:
        """Stop listening and close every connection, also those lent out of the pool."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            await asyncio.wait([listener])
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await pool.close()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise
            # Not us: the loop is shutting down (asyncio.run) and already cancelled the
            # pool's own tasks, so pool.close() gave up before closing its connections.
        for conn in list(self._pooled):
            await conn.close()

    async def migrate(self) -> None:
        """Create or upgrade the schema to this release's version; safe to run anywhere, any time.

        Concurrent migrations (several processes starting at once) take turns on
        a transaction-scoped advisory lock, so each change is applied exactly once.
        """
        async with await self._direct() as conn:
            await self._migrate(conn)

    async def schema_version(self) -> int:
        """The version recorded in the schema (0 when it was never migrated)."""
        async with await self._direct() as conn:
            cur = await conn.execute(
                "SELECT to_regclass(%s) IS NOT NULL", (f"{self.sql.schema}.schema_version",)
            )
            row = await cur.fetchone()
            if not row or not row[0]:
                return 0
            cur = await conn.execute(self.sql.current_version)
            row = await cur.fetchone()
            return int(row[0]) if row else 0

    async def _migrate(self, conn: Conn) -> None:
        steps = migrations(self.settings.schema)
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", self.settings.lock_key)
            cur = await conn.execute(
                "SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.settings.schema,)
            )
            if await cur.fetchone() is None:
                await conn.execute(f"CREATE SCHEMA {self.sql.schema}")
            await conn.execute(self.sql.version_table)
            cur = await conn.execute(self.sql.current_version)
            row = await cur.fetchone()
            current = int(row[0]) if row else 0
            if current > steps[-1][0]:
                raise ConfigError(
                    f"schema {self.settings.schema!r} is at version {current}, newer than this"
                    f" conveyor knows ({steps[-1][0]}); upgrade conveyor"
                )
            for version, ddl in steps:
                if version > current:
                    await conn.execute(ddl)
                    await conn.execute(self.sql.record_version, (version,))
                    log.info("migrated schema %s to version %d", self.settings.schema, version)

    async def _execute(
        self, query: str, params: Mapping[str, Any]
    ) -> tuple[list[tuple[Any, ...]], int]:
        """Run one statement on a pooled connection; return its rows and rowcount.

        Every statement is safe to repeat: enqueue is idempotent by id and the
        others match on lease tokens and states (a lease repeats through its claim).
        """
        return await self._retrying(lambda conn, _repeat: self._on(conn, query, params))

    async def _retrying(self, work: Callable[[Conn, bool], Awaitable[T]]) -> T:
        """Run ``work(conn, repeat)`` on a pooled connection.

        A connection found dead (the server restarted, a firewall dropped it)
        makes the pool check its idle connections, and ``work`` runs once more
        with ``repeat=True``: the first try may have committed.
        """
        pool = self.pool
        conn: Conn | None = None
        try:
            async with pool.connection() as conn:
                return await work(conn, False)
        except psycopg.OperationalError as exc:
            if conn is None or not conn.broken:
                raise
            log.warning("PostgreSQL connection lost (%s); retrying on a fresh one", exc)
        await pool.check()
        async with pool.connection() as conn:
            return await work(conn, True)

    @staticmethod
    async def _on(
        conn: Conn, query: str, params: Mapping[str, Any]
    ) -> tuple[list[tuple[Any, ...]], int]:
        cur = await conn.execute(query, params)
        return (await cur.fetchall() if cur.description else []), cur.rowcount

    async def _fetch(self, query: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        return (await self._execute(query, params))[0]

    async def _run(self, query: str, params: Mapping[str, Any]) -> int:
        return (await self._execute(query, params))[1]

    async def _notifying(self, query: str, params: Mapping[str, Any]) -> list[str]:
        """Run a statement built by ``_notifying`` (see postgres_sql); return the changed ids."""
        rows = await self._fetch(query, {"channel": self.sql.channel, **params})
        ids: list[str] = rows[0][0] if rows else []
        return ids

    # -- contract -----------------------------------------------------------
    async def enqueue(self, messages: Sequence[Message]) -> None:
        if messages:
            await self._notifying(
                self.sql.enqueue, enqueue_params(self.sql.channel, messages, time.time())
            )

    async def lease(
        self,
        queues: Sequence[str],
        limit: int,
        visibility_timeout: float,
        *,
        claim: str | None = None,
    ) -> list[Delivery]:
        names = list(dict.fromkeys(queues))
        if limit <= 0 or not names:
            return []
        token, retry = self._claims.token(claim)
        params: dict[str, Any] = {f"q{i}": q for i, q in enumerate(names)}
        params.update(limit=limit, vt=visibility_timeout, token=token)
        sql = self.sql.lease(len(names))

        async def take(conn: Conn, repeat: bool) -> list[tuple[Any, ...]]:
            if retry or repeat:  # the first call may have committed: what does the claim hold?
                held, _ = await self._on(conn, self.sql.held, {"token": token})
                if held:
                    return held
            return (await self._on(conn, sql, params))[0]

        return _deliveries(await self._retrying(take))

    async def reclaim(self, claim: str) -> list[Delivery]:
        return _deliveries(await self._fetch(self.sql.held, {"token": check_claim(claim)}))

    @staticmethod
    def _pairs(deliveries: Sequence[Delivery]) -> dict[str, Any]:
        return {"ids": [d.id for d in deliveries], "tokens": [d.lease_token for d in deliveries]}

    async def ack(self, deliveries: Sequence[Delivery]) -> list[str]:
        if not deliveries:
            return []
        pairs = self._pairs(deliveries)

        async def delete(conn: Conn, _repeat: bool) -> list[str]:
            missed = _missed(deliveries, (await self._on(conn, self.sql.ack, pairs))[0])
            if not missed:
                return []
            # gone is not refused: a repeat after a lost reply finds its own deletions gone
            present = {r[0] for r in (await self._on(conn, self.sql.present, {"ids": missed}))[0]}
            return [i for i in missed if i in present]

        return await self._retrying(delete)

    async def nack(self, delivery: Delivery, retry_at: float, failure: Failure | None = None) -> bool:
        f = failure or Failure()
        return bool(await self._notifying(self.sql.nack, {
            "now": time.time(), "retry_at": retry_at, "etype": f.type, "emsg": f.message,
            "tb": f.traceback, "id": delivery.id, "token": delivery.lease_token,
        }))

    async def release(
        self, deliveries: Sequence[Delivery], reason: str = WORKER_SHUTDOWN, *, interrupted: bool = False
    ) -> None:
        if deliveries:
            await self._notifying(self.sql.release, {
                "now": time.time(), "reason": reason, "interrupted": interrupted,
                "refunded": MAX_REFUNDED_INTERRUPTIONS, **self._pairs(deliveries),
            })

    async def dead(self, delivery: Delivery, reason: str, failure: Failure | None = None) -> bool:
        f = failure or Failure()
        return await self._run(self.sql.dead, {
            "reason": reason, "etype": f.type, "emsg": f.message, "tb": f.traceback,
            "now": time.time(), "id": delivery.id, "token": delivery.lease_token,
        }) > 0

    async def extend(self, deliveries: Sequence[Delivery], visibility_timeout: float) -> list[str]:
        if not deliveries:
            return []
        rows = await self._fetch(self.sql.extend, {"vt": visibility_timeout, **self._pairs(deliveries)})
        return _missed(deliveries, rows)

    async def rescue(self) -> list[str]:
        rescued = await self._notifying(
            self.sql.rescue, {"now": time.time(), "reason": LEASE_EXPIRED}
        )
        await self._run(self.sql.prune_locks, {})  # expired locks are garbage
        return rescued

    async def stats(self, queues: Sequence[str] | None = None) -> dict[str, QueueStats]:
        now = time.time()
        if queues is None:
            rows = await self._fetch(self.sql.stats_all, {"now": now})
        else:
            rows = await self._fetch(self.sql.stats_some, {"now": now, "queues": list(queues)})
        found = {
            r[0]: QueueStats(r[1], r[2], r[3], r[4], max(0.0, now - r[5]) if r[5] else 0.0)
            for r in rows
        }
        if queues is None:
            return found
        return {q: found.get(q, QueueStats()) for q in queues}

    def _where(self, selector: Selector) -> tuple[str, dict[str, Any]]:
        if selector.all:
            return self.sql.dlq_where(None, selector.queue)
        return self.sql.dlq_where(selector.ids, None)

    async def _letters(self, where: str, params: dict[str, Any], limit: int | None) -> list[DeadLetter]:
        rows = await self._fetch(self.sql.dlq_letters(where), {"limit": limit, **params})
        return [DeadLetter(*r) for r in rows]

    async def dlq_page(
        self, queue: str | None = None, limit: int = 100, after: DlqPosition | None = None
    ) -> list[DeadLetter]:
        if limit <= 0:
            return []
        return await self._letters(*self.sql.dlq_where(None, queue, after=after), limit)

    async def dlq_get(self, ids: Sequence[str]) -> list[DeadLetter]:
        if not ids:
            return []
        return await self._letters(*self.sql.dlq_where(ids), None)

    async def dlq_match(self, prefix: str, limit: int = 10) -> list[DeadLetter]:
        if limit <= 0:
            return []
        return await self._letters(*self.sql.dlq_where(prefix=prefix), limit)

    async def dlq_retry(self, selector: Selector) -> list[str]:
        where, params = self._where(selector)
        return await self._notifying(
            self.sql.dlq_retry(where), {"now": time.time(), "reason": MANUAL_RETRY, **params}
        )

    async def dlq_purge(self, selector: Selector) -> list[str]:
        where, params = self._where(selector)
        return [r[0] for r in await self._fetch(self.sql.dlq_purge(where), params)]

    async def dlq_prune(self, dead_before: float | None = None, keep: int | None = None) -> int:
        gone = 0
        if dead_before is not None:
            gone += await self._run(self.sql.dlq_prune_age, {"before": dead_before})
        if keep is not None:
            gone += await self._run(self.sql.dlq_prune_count, {"keep": keep})
        return gone

    async def acquire_lock(self, name: str, owner: str, ttl: float) -> bool:
        rows = await self._fetch(self.sql.acquire_lock, {"name": name, "owner": owner, "ttl": ttl})
        return bool(rows)

    async def release_lock(self, name: str, owner: str) -> None:
        await self._run(self.sql.release_lock, {"name": name, "owner": owner})

    # -- LISTEN/NOTIFY --------------------------------------------------------
    @property
    def listening(self) -> bool:
        """Whether the notification connection is up (it starts on the first :meth:`wait`)."""
        return self._listen_conn is not None

    async def wait(self, queues: Sequence[str], timeout: float) -> None:
        """Return when one of ``queues`` is notified of ready work, or after ``timeout``.

        A notification that arrived since the previous call for the same queues
        returns at once, so none is lost between a lease and the next wait.
        """
        if self._pool is None:  # not connected (or closed): nothing to listen with
            await asyncio.sleep(timeout)
            return
        if self._listener is None or self._listener.done():
            self._listener = asyncio.get_running_loop().create_task(
                self._listen(), name="conveyor-postgres-listen"
            )
        key = tuple(sorted(set(queues)))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            latest = max([self._everyone, *(self._notified.get(q, 0) for q in key)])
            if latest > self._seen.get(key, 0):
                self._seen[key] = latest
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                return

    def _signal(self, queue: str | None) -> None:
        """Record a notification (``None``: everyone, e.g. after reconnecting) and wake waiters."""
        self._seq += 1
        if queue is None:
            self._everyone = self._seq
        else:
            self._notified[queue] = self._seq
        wake, self._wake = self._wake, asyncio.Event()
        wake.set()

    async def _listen(self) -> None:
        """Keep one connection LISTENing; reconnect with backoff when it drops."""
        delay = 0.05
        while True:
            try:
                async with await self._direct() as conn:
                    await conn.execute(self.sql.listen)
                    self._listen_conn = conn
                    delay = 0.05
                    self._signal(None)  # anything sent while we were not listening
                    try:
                        while True:
                            async for note in conn.notifies(timeout=LISTEN_CHECK_INTERVAL):
                                self._signal(note.payload)
                            await conn.execute("SELECT 1")
                    finally:
                        self._listen_conn = None
            except Exception as exc:
                log.warning("PostgreSQL listen connection lost (%s); reconnecting in %.2fs",
                            exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


def _missed(deliveries: Sequence[Delivery], rows: Sequence[tuple[Any, ...]]) -> list[str]:
    """The ids of ``deliveries`` that a statement returning (id, token) of its changes missed."""
    done = {(r[0], r[1]) for r in rows}
    return [d.id for d in deliveries if (d.id, d.lease_token) not in done]


def _deliveries(rows: list[tuple[Any, ...]]) -> list[Delivery]:
    """Deliveries from rows of the lease columns (``seq`` last), in lease order."""
    rows.sort(key=lambda r: (-r[6], r[7], r[10]))
    return [Delivery(*r[:10]) for r in rows]
