"""The embedded default broker: one SQLite file in WAL mode.

Durable across restarts and safe for several worker processes on one host:
every write takes SQLite's write lock up front (``BEGIN IMMEDIATE``), and a
lease is one ``UPDATE ... RETURNING``. Being single-host, it reads deadlines and
due times from this host's clock. All calls run on one thread that owns
the connection, so the event loop never blocks on disk.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

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

T = TypeVar("T")

READY, LEASED, DEAD = 0, 1, 2

SCHEMA = """
CREATE TABLE IF NOT EXISTS conveyor_jobs (
    id TEXT PRIMARY KEY,
    queue TEXT NOT NULL,
    type TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    state INTEGER NOT NULL DEFAULT 0,
    eta REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    lease_until REAL,
    lease_token TEXT,
    redelivery TEXT NOT NULL DEFAULT '',
    interruptions INTEGER NOT NULL DEFAULT 0,
    body BLOB NOT NULL,
    created_at REAL NOT NULL,
    reason TEXT,
    error_type TEXT,
    error_message TEXT,
    traceback TEXT,
    dead_at REAL
);
CREATE INDEX IF NOT EXISTS conveyor_jobs_ready
    ON conveyor_jobs (queue, priority DESC, eta) WHERE state = 0;
CREATE INDEX IF NOT EXISTS conveyor_jobs_leased
    ON conveyor_jobs (lease_until) WHERE state = 1;
CREATE INDEX IF NOT EXISTS conveyor_jobs_dead
    ON conveyor_jobs (dead_at) WHERE state = 2;
CREATE TABLE IF NOT EXISTS conveyor_locks (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires_at REAL NOT NULL
);
"""

#: Columns added after the first release, with their definitions: a database made by an
#: older conveyor gets them on open (see :func:`_upgrade`).
_ADDED_COLUMNS = {"interruptions": "INTEGER NOT NULL DEFAULT 0"}

_DELIVERY_COLS = "id, queue, type, body, attempts, lease_token, priority, eta, created_at, redelivery"


def path_from_url(url: str) -> str:
    """``sqlite:///rel.db`` is relative to the working directory, ``sqlite:////abs.db`` absolute."""
    prefix = "sqlite://"
    if not url.startswith(prefix) or not url[len(prefix) :].startswith("/"):
        raise ConfigError(f"bad SQLite URL {url!r}; use sqlite:///relative.db or sqlite:////abs.db")
    path = url[len(prefix) + 1 :]
    if not path or path == ":memory:":
        raise ConfigError(f"bad SQLite URL {url!r}: name a database file")
    return path


def _upgrade(conn: sqlite3.Connection) -> None:
    """Add the columns a database created by an older conveyor lacks (under the write lock,
    so processes opening the same file at once do not both add them)."""

    def missing() -> list[str]:
        have = {row[1] for row in conn.execute("PRAGMA table_info(conveyor_jobs)")}
        return [name for name in _ADDED_COLUMNS if name not in have]

    if not missing():
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for name in missing():
            conn.execute(f"ALTER TABLE conveyor_jobs ADD COLUMN {name} {_ADDED_COLUMNS[name]}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class SQLiteBroker(Broker):
    """A broker on one SQLite file, shared by every thread, loop and process on the host."""

    def __init__(self, path: str, busy_timeout: float = 30.0) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="conveyor-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._init_lock = threading.Lock()
        self._claims = Claims()

    @classmethod
    def from_url(cls, url: str) -> SQLiteBroker:
        return cls(path_from_url(url))

    # -- plumbing ---------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            parent = Path(self.path).resolve().parent
            if not parent.is_dir():
                raise ConfigError(f"cannot open SQLite database {self.path!r}: no directory {parent}")
            try:
                conn = sqlite3.connect(
                    self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
                )
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.executescript(SCHEMA)
                _upgrade(conn)
            except sqlite3.Error as exc:  # unreadable file, not a database, read-only directory...
                raise BrokerUnavailable.connecting("SQLite", f"sqlite:///{self.path}", exc) from exc
            self._conn = conn
        return self._conn

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, fn, args)

    def _call(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        return fn(self._connection(), *args)

    def _write(self, fn: Callable[..., T], *args: Any) -> Callable[[sqlite3.Connection], T]:
        def tx(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn, *args)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        return tx

    async def _tx(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._run(self._write(fn, *args))

    async def connect(self) -> None:
        await self._run(lambda conn: None)

    async def close(self) -> None:
        def shut(conn: sqlite3.Connection) -> None:
            conn.close()
            self._conn = None

        if self._conn is not None:
            try:
                await self._run(shut)
            except RuntimeError:  # at interpreter exit executors take no new work; close it here
                shut(self._conn)
        self._executor.shutdown(wait=True)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="conveyor-sqlite")

    # -- contract -----------------------------------------------------------
    async def enqueue(self, messages: Sequence[Message]) -> None:
        now = time.time()
        rows = [(m.id, m.queue, m.type, m.priority, m.eta or now, m.body, m.created_at or now) for m in messages]

        def insert(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT OR IGNORE INTO conveyor_jobs (id, queue, type, priority, eta, body, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

        await self._tx(insert)

    async def lease(
        self, queues: Sequence[str], limit: int, visibility_timeout: float, *, claim: str | None = None
    ) -> list[Delivery]:
        if limit <= 0 or not queues:
            return []
        token, retry = self._claims.token(claim)
        marks = ",".join("?" * len(queues))
        sql = (
            "UPDATE conveyor_jobs SET state = 1, attempts = attempts + 1, lease_until = ?,"
            " lease_token = ? WHERE rowid IN (SELECT rowid FROM conveyor_jobs"
            f" WHERE state = 0 AND queue IN ({marks}) AND eta <= ?"
            " ORDER BY priority DESC, eta, rowid LIMIT ?)"
            f" RETURNING {_DELIVERY_COLS}, rowid"
        )

        def take(conn: sqlite3.Connection) -> list[Delivery]:
            held = _held(conn, token) if retry else []
            if held:
                return held
            now = time.time()
            return _deliveries(conn.execute(sql, (now + visibility_timeout, token, *queues, now, limit)).fetchall())

        return await self._tx(take)

    async def reclaim(self, claim: str) -> list[Delivery]:
        token = check_claim(claim)
        return await self._run(_held, token)

    async def ack(self, deliveries: Sequence[Delivery]) -> list[str]:
        def delete(conn: sqlite3.Connection) -> list[str]:
            missed = _each(
                conn,
                "DELETE FROM conveyor_jobs WHERE id = ? AND lease_token = ? AND state = 1",
                [(d.id, d.lease_token) for d in deliveries],
            )
            return [i for i in missed if conn.execute("SELECT 1 FROM conveyor_jobs WHERE id = ?", (i,)).fetchone()]

        return await self._tx(delete)

    async def nack(self, delivery: Delivery, retry_at: float, failure: Failure | None = None) -> bool:
        f = failure or Failure()

        def back(conn: sqlite3.Connection) -> bool:
            return conn.execute(
                "UPDATE conveyor_jobs SET state = 0, eta = ?, lease_until = NULL, lease_token = NULL,"
                " redelivery = '', error_type = ?, error_message = ?, traceback = ?"
                " WHERE id = ? AND lease_token = ? AND state = 1",
                (retry_at, f.type, f.message, f.traceback, delivery.id, delivery.lease_token),
            ).rowcount > 0

        return await self._tx(back)

    async def release(
        self, deliveries: Sequence[Delivery], reason: str = WORKER_SHUTDOWN, *, interrupted: bool = False
    ) -> None:
        now, inc = time.time(), int(interrupted)
        rows = [(now, inc, MAX_REFUNDED_INTERRUPTIONS, inc, reason, d.id, d.lease_token) for d in deliveries]

        def give_back(conn: sqlite3.Connection) -> None:
            # SET expressions see the row as it was: the refund depends on the old count.
            conn.executemany(
                "UPDATE conveyor_jobs SET state = 0, eta = MIN(eta, ?),"
                " attempts = attempts - (CASE WHEN ? AND interruptions >= ? THEN 0 ELSE 1 END),"
                " interruptions = interruptions + ?, lease_until = NULL, lease_token = NULL, redelivery = ?"
                " WHERE id = ? AND lease_token = ? AND state = 1",
                rows,
            )

        await self._tx(give_back)

    async def dead(self, delivery: Delivery, reason: str, failure: Failure | None = None) -> bool:
        f = failure or Failure()

        def bury(conn: sqlite3.Connection) -> bool:
            return conn.execute(
                "UPDATE conveyor_jobs SET state = 2, reason = ?, error_type = ?, error_message = ?,"
                " traceback = ?, dead_at = ?, lease_until = NULL, lease_token = NULL"
                " WHERE id = ? AND lease_token = ? AND state = 1",
                (reason, f.type, f.message, f.traceback, time.time(), delivery.id, delivery.lease_token),
            ).rowcount > 0

        return await self._tx(bury)

    async def extend(self, deliveries: Sequence[Delivery], visibility_timeout: float) -> list[str]:
        until = time.time() + visibility_timeout
        return await self._tx(
            _each,
            "UPDATE conveyor_jobs SET lease_until = ? WHERE id = ? AND lease_token = ? AND state = 1",
            [(until, d.id, d.lease_token) for d in deliveries],
        )

    async def rescue(self) -> list[str]:
        def requeue(conn: sqlite3.Connection) -> list[str]:
            now = time.time()
            rows = conn.execute(
                # a rescued job keeps its eta, and so its place in line
                "UPDATE conveyor_jobs SET state = 0, lease_until = NULL, lease_token = NULL,"
                " redelivery = ? WHERE state = 1 AND lease_until < ? RETURNING id",
                (LEASE_EXPIRED, now),
            ).fetchall()
            conn.execute("DELETE FROM conveyor_locks WHERE expires_at < ?", (now,))
            return [r[0] for r in rows]

        return await self._tx(requeue)

    async def stats(self, queues: Sequence[str] | None = None) -> dict[str, QueueStats]:
        def count(conn: sqlite3.Connection) -> dict[str, QueueStats]:
            now = time.time()
            rows = conn.execute(
                "SELECT queue, SUM(state = 0 AND eta <= ?), SUM(state = 0 AND eta > ?),"
                " SUM(state = 1), SUM(state = 2), MIN(CASE WHEN state = 0 AND eta <= ? THEN eta END)"
                " FROM conveyor_jobs GROUP BY queue",
                (now, now, now),
            ).fetchall()
            found = {r[0]: QueueStats(r[1], r[2], r[3], r[4], max(0.0, now - r[5]) if r[5] else 0.0) for r in rows}
            if queues is None:
                return found
            return {q: found.get(q, QueueStats()) for q in queues}

        return await self._run(count)

    @staticmethod
    def _where(selector: Selector) -> tuple[str, list[Any]]:
        if selector.all:
            if selector.queue is None:
                return "state = 2", []
            return "state = 2 AND queue = ?", [selector.queue]
        marks = ",".join("?" * len(selector.ids))
        return f"state = 2 AND id IN ({marks})", list(selector.ids)

    _LETTER_COLS = (
        "id, queue, type, body, attempts, reason, COALESCE(error_type, ''),"
        " COALESCE(error_message, ''), COALESCE(traceback, ''), dead_at, created_at"
    )

    async def _letters(self, where: str, params: Sequence[Any], limit: int = -1) -> list[DeadLetter]:
        def fetch(conn: sqlite3.Connection) -> list[DeadLetter]:
            rows = conn.execute(
                f"SELECT {self._LETTER_COLS} FROM conveyor_jobs WHERE {where} ORDER BY dead_at, id LIMIT ?",
                (*params, limit),
            ).fetchall()
            return [DeadLetter(*r) for r in rows]

        return await self._run(fetch)

    async def dlq_page(
        self, queue: str | None = None, limit: int = 100, after: DlqPosition | None = None
    ) -> list[DeadLetter]:
        if limit <= 0:
            return []
        where, params = self._where(Selector(all=True, queue=queue))
        if after is not None:
            where += " AND (dead_at > ? OR (dead_at = ? AND id > ?))"
            params += [after[0], after[0], after[1]]
        return await self._letters(where, params, limit)

    async def dlq_get(self, ids: Sequence[str]) -> list[DeadLetter]:
        if not ids:
            return []
        return await self._letters(*self._where(Selector(ids=list(dict.fromkeys(ids)))))

    async def dlq_match(self, prefix: str, limit: int = 10) -> list[DeadLetter]:
        if limit <= 0:
            return []
        return await self._letters("state = 2 AND substr(id, 1, ?) = ?", [len(prefix), prefix], limit)

    async def dlq_retry(self, selector: Selector) -> list[str]:
        where, params = self._where(selector)

        def revive(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "UPDATE conveyor_jobs SET state = 0, attempts = 0, interruptions = 0, eta = ?, redelivery = ?,"
                " reason = NULL, error_type = NULL, error_message = NULL, traceback = NULL,"
                f" dead_at = NULL WHERE {where} RETURNING id",
                (time.time(), MANUAL_RETRY, *params),
            ).fetchall()
            return [r[0] for r in rows]

        return await self._tx(revive)

    async def dlq_purge(self, selector: Selector) -> list[str]:
        where, params = self._where(selector)

        def purge(conn: sqlite3.Connection) -> list[str]:
            return [r[0] for r in conn.execute(f"DELETE FROM conveyor_jobs WHERE {where} RETURNING id", params)]

        return await self._tx(purge)

    async def dlq_prune(self, dead_before: float | None = None, keep: int | None = None) -> int:
        def prune(conn: sqlite3.Connection) -> int:
            gone = 0
            if dead_before is not None:
                aged = conn.execute("DELETE FROM conveyor_jobs WHERE state = 2 AND dead_at < ?", (dead_before,))
                gone += aged.rowcount
            if keep is not None:
                gone += conn.execute(
                    "DELETE FROM conveyor_jobs WHERE state = 2 AND id IN (SELECT id FROM (SELECT id, row_number()"
                    " OVER (PARTITION BY queue ORDER BY dead_at DESC, id DESC) AS n FROM conveyor_jobs"
                    " WHERE state = 2) WHERE n > ?)",
                    (keep,),
                ).rowcount
            return gone

        return await self._tx(prune)

    async def acquire_lock(self, name: str, owner: str, ttl: float) -> bool:
        def take(conn: sqlite3.Connection) -> bool:
            now = time.time()
            row = conn.execute(
                "INSERT INTO conveyor_locks (name, owner, expires_at) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at"
                " WHERE conveyor_locks.owner = excluded.owner OR conveyor_locks.expires_at <= ?"
                " RETURNING owner",
                (name, owner, now + ttl, now),
            ).fetchone()
            return row is not None

        return await self._tx(take)

    async def release_lock(self, name: str, owner: str) -> None:
        def drop(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM conveyor_locks WHERE name = ? AND owner = ?", (name, owner))

        await self._tx(drop)


def _each(conn: sqlite3.Connection, sql: str, rows: Sequence[tuple[Any, ...]]) -> list[str]:
    """Run ``sql`` once per row (its last two values: id, lease token); return the ids it missed."""
    return [row[-2] for row in rows if conn.execute(sql, row).rowcount == 0]


def _held(conn: sqlite3.Connection, token: str) -> list[Delivery]:
    """The live leases of ``token`` (a lease claim), in lease order."""
    rows = conn.execute(
        f"SELECT {_DELIVERY_COLS}, rowid FROM conveyor_jobs WHERE state = 1 AND lease_token = ? AND lease_until >= ?",
        (token, time.time()),
    ).fetchall()
    return _deliveries(rows)


def _deliveries(rows: list[Any]) -> list[Delivery]:
    """Deliveries from rows of ``_DELIVERY_COLS, rowid``, in lease order."""
    rows.sort(key=lambda r: (-r[6], r[7], r[10]))
    return [Delivery(*r[:10]) for r in rows]
