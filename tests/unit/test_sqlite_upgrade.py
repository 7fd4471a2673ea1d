"""A SQLite database made by an older conveyor keeps working after an upgrade."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from conveyor.brokers import MAX_REFUNDED_INTERRUPTIONS, WORKER_SHUTDOWN
from conveyor.brokers.sqlite import SQLiteBroker

#: conveyor_jobs as the first release created it (no interruptions column).
OLD_SCHEMA = """
CREATE TABLE conveyor_jobs (
    id TEXT PRIMARY KEY, queue TEXT NOT NULL, type TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0, state INTEGER NOT NULL DEFAULT 0, eta REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, lease_until REAL, lease_token TEXT,
    redelivery TEXT NOT NULL DEFAULT '', body BLOB NOT NULL, created_at REAL NOT NULL,
    reason TEXT, error_type TEXT, error_message TEXT, traceback TEXT, dead_at REAL
);
"""


def _old_database(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(OLD_SCHEMA)
    now = time.time()
    conn.execute(
        "INSERT INTO conveyor_jobs (id, queue, type, eta, body, created_at) VALUES ('j1', 'q', 't', ?, x'7b7d', ?)",
        (now, now),
    )
    conn.commit()
    conn.close()


async def test_a_database_without_the_interruptions_column_gets_it_and_keeps_its_jobs(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _old_database(path)
    broker = SQLiteBroker(str(path))
    await broker.connect()
    try:
        for _ in range(MAX_REFUNDED_INTERRUPTIONS + 1):
            [d] = await broker.lease(["q"], 1, 30.0)
            assert d.id == "j1"
            await broker.release([d], WORKER_SHUTDOWN, interrupted=True)
        [d] = await broker.lease(["q"], 1, 30.0)
        assert d.attempts == 2  # the interruption past the refunded ones counted
    finally:
        await broker.close()
    # Opening it again (the column is there now) is a no-op.
    again = SQLiteBroker(str(path))
    await again.connect()
    await again.close()
    columns = {row[1] for row in sqlite3.connect(path).execute("PRAGMA table_info(conveyor_jobs)")}
    assert "interruptions" in columns
