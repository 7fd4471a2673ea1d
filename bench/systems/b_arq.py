"""arq (its own virtualenv: arq pins redis<6): one worker, max_jobs=8, keep_result=0, poll_delay=0.01.

arq sleeps ``poll_delay`` (default 0.5 s) after every poll, and a poll starts at most
``queue_read_limit`` (default 100) jobs, so with defaults one worker tops out near 200 jobs/s
here and enqueue->start latency is ~250 ms. The benchmark sets poll_delay to 10 ms, which is
how arq is tuned for throughput, to compare its engine rather than that sleep.
"""

from __future__ import annotations

import logging
import os
import uuid

import _cfg
import _rec
from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import func
from arq.worker import run_worker as arq_run_worker

REDIS = RedisSettings.from_dsn(_cfg.REDIS_URL)


async def noop(ctx: dict, ts: float = 0.0) -> None:
    _rec.hit(ts)


class WorkerSettings:
    functions = [func(noop, name="noop", keep_result=0)]
    redis_settings = REDIS
    queue_name = _cfg.QUEUE
    max_jobs = _cfg.CONCURRENCY
    keep_result = 0
    poll_delay = float(os.environ.get("BENCH_ARQ_POLL_DELAY", "0.01"))
    handle_signals = True


class Client:
    batch = False  # arq has no batch enqueue

    async def open(self) -> None:
        self.pool = await create_pool(REDIS, default_queue_name=_cfg.QUEUE)

    async def send(self, ts: float) -> None:
        # job ids carry the run tag so that cleanup can find every key (same cost as arq's uuid4)
        await self.pool.enqueue_job("noop", ts, _job_id=f"{_cfg.TAG}-{uuid.uuid4().hex}")

    async def adepth(self) -> int:
        return int(await self.pool.zcard(_cfg.QUEUE))

    async def close(self) -> None:
        await self.pool.aclose()


def run_worker() -> None:
    # arq's CLI logs every job at INFO; every system runs with WARNING logging.
    logging.basicConfig(level=_cfg.LOG_LEVEL)
    arq_run_worker(WorkerSettings)
