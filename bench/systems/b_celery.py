"""Celery on Redis: one worker process, thread pool of 8, results ignored, no gossip/mingle/heartbeat."""

from __future__ import annotations

import os
import sys

import _cfg
import _rec
from celery import Celery

app = Celery("b_celery", broker=_cfg.REDIS_URL)
app.conf.update(
    task_ignore_result=True,
    task_default_queue=_cfg.QUEUE,
    broker_transport_options={"global_keyprefix": f"{_cfg.TAG}:"},
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=True,
)


@app.task(name="noop")
def noop(ts: float = 0.0) -> None:
    _rec.hit(ts)


class Client:
    batch = False  # Celery has no batch publish; group()/chunks still publish one message each

    async def open(self) -> None:
        with app.connection_for_write() as conn:  # declare and bind the queue before timing
            app.amqp.queues[_cfg.QUEUE](conn.default_channel).declare()

    def send(self, ts: float) -> None:
        noop.delay(ts)

    def depth(self) -> int:
        with app.connection_for_write() as conn:
            return int(conn.default_channel.client.llen(_cfg.QUEUE))  # the client adds the prefix

    async def close(self) -> None:
        pass


def run_worker() -> None:
    exe = os.path.join(os.path.dirname(sys.executable), "celery")
    os.execv(exe, [exe, "-A", "b_celery", "worker", "-P", "threads", "-c", str(_cfg.CONCURRENCY),
                   "-Q", _cfg.QUEUE, "--without-gossip", "--without-mingle", "--without-heartbeat",
                   "-l", _cfg.LOG_LEVEL])
