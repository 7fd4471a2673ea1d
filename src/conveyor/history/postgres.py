"""History in PostgreSQL (psycopg 3, sync, on a small connection pool).

Tables are ``<schema>.conveyor_history_*``; the schema comes from the URL's
``?schema=`` option (default ``conveyor``, the broker's). They are created on
first use under an advisory lock, so processes starting together do not race.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..brokers.postgres_sql import parse_url
from ..errors import ConfigError
from .schema import Cursor, ddl, postgres
from .sqlstore import SQLHistoryStore

try:
    import psycopg
    from psycopg_pool import ConnectionPool
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the install
    raise ConfigError(f"PostgreSQL history needs {exc.name}: pip install 'conveyor[postgres]'") from exc

#: First key of the advisory lock taken while creating the history tables ("hist").
_LOCK_NAMESPACE = 0x68697374


class PostgresHistoryStore(SQLHistoryStore):
    """History tables in a PostgreSQL schema, possibly next to the broker's own tables."""

    driver_errors = (psycopg.Error,)

    def __init__(self, url: str, pool_max: int = 4) -> None:
        settings = parse_url(url)
        super().__init__(url, postgres(settings.schema))
        self.schema = settings.schema
        self._conninfo = settings.conninfo
        self._pool: ConnectionPool[Any] = ConnectionPool(
            settings.conninfo,
            min_size=0,
            max_size=pool_max,
            open=False,
            name=f"conveyor-history-{settings.schema}",
            timeout=10.0,
            kwargs={"autocommit": True},
        )
        self._opened = False
        self._lock = threading.Lock()

    def _open(self) -> ConnectionPool[Any]:
        if not self._opened:
            with self._lock:
                if not self._opened:
                    self._migrate()  # on a connection of its own: an unreachable server fails fast
                    self._pool.open(wait=False)
                    self._opened = True
        return self._pool

    def _migrate(self) -> None:
        crc = zlib.crc32(self.schema.encode())
        key = crc - (1 << 32) if crc >= 1 << 31 else crc
        with psycopg.connect(self._conninfo, connect_timeout=10, autocommit=True) as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_LOCK_NAMESPACE, key))
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            for statement in ddl(self.dialect):
                conn.execute(statement)

    @contextmanager
    def _transaction(self, batch: bool = False) -> Iterator[Cursor]:
        with self._open().connection() as conn, conn.transaction(), conn.cursor() as cur:
            if batch:
                with conn.pipeline():
                    yield cur
            else:
                yield cur

    @contextmanager
    def _reading(self) -> Iterator[Cursor]:
        with self._open().connection() as conn, conn.cursor() as cur:
            yield cur

    def close(self) -> None:
        self._pool.close()

