"""Reference: the classic PostgreSQL queue. INSERT a JSON row; 8 threads, each on its own
connection, run ``DELETE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING``
and the job inside one transaction; an empty poll sleeps 10 ms. No LISTEN/NOTIFY, no retries.
"""

from __future__ import annotations

import threading
import time

import _cfg
import _rec
import psycopg
from psycopg.types.json import Jsonb

TABLE = "cvbench_rawpg_jobs"
TAKE = (
    f"DELETE FROM {TABLE} WHERE id = (SELECT id FROM {TABLE} ORDER BY id"
    " FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING payload"
)


def noop(ts: float = 0.0) -> None:
    _rec.hit(ts)


def setup() -> None:
    with psycopg.connect(_cfg.PG_DSN, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (id bigserial PRIMARY KEY,"
                     " payload jsonb NOT NULL)")


class Client:
    batch = True  # executemany in one transaction (psycopg pipelines it)

    async def open(self) -> None:
        self.conn = psycopg.connect(_cfg.PG_DSN, autocommit=True)

    def send(self, ts: float) -> None:
        self.conn.execute(f"INSERT INTO {TABLE} (payload) VALUES (%s)",
                          (Jsonb({"job": "noop", "args": [ts]}),))

    def send_batch(self, tss: list[float]) -> None:
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {TABLE} (payload) VALUES (%s)",
                            [(Jsonb({"job": "noop", "args": [t]}),) for t in tss])

    def depth(self) -> int:
        return int(self.conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0])

    async def close(self) -> None:
        self.conn.close()


def _loop() -> None:
    conn = psycopg.connect(_cfg.PG_DSN)
    while True:
        with conn.transaction():
            row = conn.execute(TAKE).fetchone()
            if row is not None:
                noop(*row[0]["args"])
        if row is None:
            time.sleep(0.01)


def run_worker() -> None:
    threads = [threading.Thread(target=_loop, daemon=True) for _ in range(_cfg.CONCURRENCY)]
    for t in threads:
        t.start()
    threading.Event().wait()
