"""History in a SQLite file (WAL mode; safe for several processes on one host).

Each thread gets its own connection, so the writer thread, the CLI and a
dashboard read and write concurrently; writes take SQLite's write lock up front
(``BEGIN IMMEDIATE``) and wait for it up to ``busy_timeout`` seconds.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..brokers.sqlite import path_from_url
from ..errors import ConfigError
from .schema import SQLITE, Cursor, ddl
from .sqlstore import SQLHistoryStore


class SQLiteHistoryStore(SQLHistoryStore):
    """History tables (``conveyor_history_*``) in a SQLite file, possibly the broker's own."""

    driver_errors = (sqlite3.Error,)

    def __init__(self, url: str, busy_timeout: float = 30.0) -> None:
        super().__init__(url, SQLITE)
        self.path = path_from_url(url)
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._ready = False

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        parent = Path(self.path).resolve().parent
        if not parent.is_dir():
            raise ConfigError(f"cannot open history database {self.path!r}: no directory {parent}")
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA cache_size=-16000")  # 16 MB: the history indexes stay in memory longer
        with self._lock:
            self._all.append(conn)
            if not self._ready:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for statement in ddl(self.dialect):
                        conn.execute(statement)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                self._ready = True
        self._local.conn = conn
        return conn

    @contextmanager
    def _transaction(self, batch: bool = False) -> Iterator[Cursor]:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn.cursor()
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @contextmanager
    def _reading(self) -> Iterator[Cursor]:
        yield self._connection().cursor()

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
        self._local = threading.local()
