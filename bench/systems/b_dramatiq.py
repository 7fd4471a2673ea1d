"""Dramatiq on Redis: one worker process (--processes 1) with 8 threads, default middleware."""

from __future__ import annotations

import os
import sys

import _cfg
import _rec
import dramatiq
from dramatiq.brokers.redis import RedisBroker

broker = RedisBroker(url=_cfg.REDIS_URL, namespace=_cfg.TAG)
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="noop", queue_name=_cfg.QUEUE)
def noop(ts: float = 0.0) -> None:
    _rec.hit(ts)


class Client:
    batch = False  # Dramatiq has no batch enqueue (group() sends one message at a time)

    async def open(self) -> None:
        broker.client.ping()

    def send(self, ts: float) -> None:
        noop.send(ts)

    def depth(self) -> int:
        return int(broker.client.hlen(f"{_cfg.TAG}:{_cfg.QUEUE}.msgs"))

    async def close(self) -> None:
        broker.close()


def run_worker() -> None:
    exe = os.path.join(os.path.dirname(sys.executable), "dramatiq")
    os.execv(exe, [exe, "b_dramatiq", "--processes", "1", "--threads", str(_cfg.CONCURRENCY),
                   "--queues", _cfg.QUEUE])
