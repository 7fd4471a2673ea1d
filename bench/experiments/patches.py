"""Experimental changes to conveyor, applied by monkeypatching inside benchmark processes only,
to measure a recommended core change before anyone makes it. Enabled per run with
``bench/run.py --conveyor-patch NAME[,NAME]`` (or BENCH_CONVEYOR_PATCH for b_conveyor).

* ``sqlite_wake``   SQLiteBroker.wait polls ``PRAGMA data_version`` every 1 ms and returns as
                    soon as another connection committed (instead of sleeping the whole timeout)
* ``sqlite_spin``   take SQLite's write lock with a Python retry every 0.2 ms (busy_timeout 0)
                    instead of SQLite's busy handler, which sleeps 1, 2, 5, 10, 15, 20, 25 ... ms
* ``sqlite_nockpt`` diagnosis only: PRAGMA wal_autocheckpoint=0 (no checkpoint stalls in commits)
"""

from __future__ import annotations

import asyncio
from typing import Any


def sqlite_wake() -> None:
    from conveyor.brokers import sqlite

    def version(conn: Any) -> int:
        return int(conn.execute("PRAGMA data_version").fetchone()[0])

    async def wait(self: Any, queues: Any, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        start = await self._run(version)
        while loop.time() < end:
            await asyncio.sleep(min(0.001, max(0.0, end - loop.time())))
            if await self._run(version) != start:
                return

    sqlite.SQLiteBroker.wait = wait


def sqlite_spin() -> None:
    import sqlite3
    import time

    from conveyor.brokers import sqlite

    original_connection = sqlite.SQLiteBroker._connection

    def _connection(self: Any) -> Any:
        fresh = self._conn is None
        conn = original_connection(self)
        if fresh:
            conn.execute("PRAGMA busy_timeout = 0")
        return conn

    def _write(self: Any, fn: Any, *args: Any) -> Any:
        def tx(conn: Any) -> Any:
            deadline = time.monotonic() + self.busy_timeout
            while True:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) and "busy" not in str(exc):
                        raise
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.0002)
            try:
                result = fn(conn, *args)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        return tx

    sqlite.SQLiteBroker._connection = _connection
    sqlite.SQLiteBroker._write = _write


def sqlite_nockpt() -> None:
    from conveyor.brokers import sqlite

    original_connection = sqlite.SQLiteBroker._connection

    def _connection(self: Any) -> Any:
        fresh = self._conn is None
        conn = original_connection(self)
        if fresh:
            conn.execute("PRAGMA wal_autocheckpoint = 0")
        return conn

    sqlite.SQLiteBroker._connection = _connection


def apply(names: str) -> None:
    for name in filter(None, (n.strip() for n in names.split(","))):
        globals()[name]()
