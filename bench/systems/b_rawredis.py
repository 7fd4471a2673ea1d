"""Reference: the least a Redis queue can do. LPUSH a JSON payload; 8 threads BRPOP and call the job.

No acks, no retries, no leases: a floor for what any Redis-backed system could reach here.
"""

from __future__ import annotations

import json
import threading

import _cfg
import _rec
import redis

KEY = f"{_cfg.TAG}:q"


def noop(ts: float = 0.0) -> None:
    _rec.hit(ts)


class Client:
    batch = True  # one LPUSH with many values

    async def open(self) -> None:
        self.r = redis.Redis.from_url(_cfg.REDIS_URL)
        self.r.ping()

    def send(self, ts: float) -> None:
        self.r.lpush(KEY, json.dumps({"job": "noop", "args": [ts]}))

    def send_batch(self, tss: list[float]) -> None:
        self.r.lpush(KEY, *[json.dumps({"job": "noop", "args": [t]}) for t in tss])

    def depth(self) -> int:
        return int(self.r.llen(KEY))

    async def close(self) -> None:
        self.r.close()


def _loop() -> None:
    r = redis.Redis.from_url(_cfg.REDIS_URL)
    while True:
        got = r.brpop([KEY], timeout=1)
        if got is None:
            continue
        msg = json.loads(got[1])
        noop(*msg["args"])


def run_worker() -> None:
    threads = [threading.Thread(target=_loop, daemon=True) for _ in range(_cfg.CONCURRENCY)]
    for t in threads:
        t.start()
    threading.Event().wait()
