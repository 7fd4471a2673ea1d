"""Taskiq with taskiq-redis RedisStreamBroker (acks; the README's default): 1 worker, 8 async tasks."""

from __future__ import annotations

import os
import sys

import _cfg
import _rec
from taskiq_redis import RedisStreamBroker

broker = RedisStreamBroker(url=_cfg.REDIS_URL, queue_name=_cfg.QUEUE,
                           consumer_group_name=_cfg.TAG)


@broker.task(task_name="noop")
async def noop(ts: float = 0.0) -> None:
    _rec.hit(ts)


class Client:
    batch = False  # taskiq has no batch kick

    async def open(self) -> None:
        await broker.startup()

    async def send(self, ts: float) -> None:
        await noop.kiq(ts)

    async def adepth(self) -> int:
        from redis.asyncio import Redis

        async with Redis(connection_pool=broker.connection_pool) as r:
            return int(await r.xlen(_cfg.QUEUE))

    async def close(self) -> None:
        await broker.shutdown()


def run_worker() -> None:
    exe = os.path.join(os.path.dirname(sys.executable), "taskiq")
    os.execv(exe, [exe, "worker", "b_taskiq:broker", "--workers", "1",
                   "--max-async-tasks", str(_cfg.CONCURRENCY), "--log-level", _cfg.LOG_LEVEL])
