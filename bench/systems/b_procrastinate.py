"""Procrastinate on PostgreSQL: one worker, concurrency 8, async task, jobs deleted on success."""

from __future__ import annotations

import os
import sys

import _cfg
import _rec
import procrastinate

app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=_cfg.PG_DSN))


@app.task(name="noop", queue=_cfg.QUEUE)
async def noop(ts: float = 0.0) -> None:
    _rec.hit(ts)


async def setup() -> None:
    async with app.open_async():
        await app.schema_manager.apply_schema_async()


class Client:
    batch = True  # Task.batch_defer_async: one INSERT for many jobs

    async def open(self) -> None:
        self._ctx = app.open_async()
        await self._ctx.__aenter__()

    async def send(self, ts: float) -> None:
        await noop.defer_async(ts=ts)

    async def send_batch(self, tss: list[float]) -> None:
        await noop.batch_defer_async(*({"ts": t} for t in tss))

    async def adepth(self) -> int:
        rows = await app.connector.execute_query_all_async(
            "SELECT count(*) AS n FROM procrastinate_jobs WHERE status = 'todo'")
        return int(rows[0]["n"])

    async def close(self) -> None:
        await self._ctx.__aexit__(None, None, None)


def run_worker() -> None:
    exe = os.path.join(os.path.dirname(sys.executable), "procrastinate")
    os.execv(exe, [exe, "--app=b_procrastinate.app", "--log-level", _cfg.LOG_LEVEL.lower(),
                   "worker", "--concurrency", str(_cfg.CONCURRENCY), "--queues", _cfg.QUEUE,
                   "--delete-jobs", "always"])
