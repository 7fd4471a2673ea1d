"""conveyor on any broker: the URL comes from BENCH_CONVEYOR_URL."""

from __future__ import annotations

import asyncio
import os
import sys

import _cfg
import _rec

from conveyor import App

if os.environ.get("BENCH_CONVEYOR_PATCH"):  # experiments only: see bench/experiments/patches.py
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "experiments"))
    import patches

    patches.apply(os.environ["BENCH_CONVEYOR_PATCH"])

URL = os.environ.get("BENCH_CONVEYOR_URL", "memory://")
ASYNC_JOB = os.environ.get("BENCH_CONVEYOR_JOB", "sync") == "async"

app = App(URL)

if ASYNC_JOB:

    @app.job(name="noop", queue=_cfg.QUEUE)
    async def noop(ts: float = 0.0) -> None:
        _rec.hit(ts)

else:

    @app.job(name="noop", queue=_cfg.QUEUE)
    def noop(ts: float = 0.0) -> None:
        _rec.hit(ts)


class Client:
    """Producer side. ``send`` is the sync API (``fn.send``), ``asend`` the async one."""

    batch = True

    async def open(self) -> None:
        async def nothing(broker: object) -> None:
            return None

        app.run(nothing)  # connect the portal's broker before timing
        await app.broker()  # and this loop's, for send_async

    def send(self, ts: float) -> None:
        noop.send(ts)

    async def asend(self, ts: float) -> None:
        await noop.send_async(ts)

    def send_batch(self, tss: list[float]) -> None:
        app.send_jobs([noop.message(t) for t in tss])

    def depth(self) -> int:
        return app.stats([_cfg.QUEUE])[_cfg.QUEUE].ready

    async def close(self) -> None:
        await app.aclose()
        await asyncio.to_thread(app.close)  # app.close() runs its own event loop


def run_worker() -> None:
    exe = os.path.join(os.path.dirname(sys.executable), "conveyor")
    args = [exe, "worker", "b_conveyor:app", "-q", _cfg.QUEUE, "-c", str(_cfg.CONCURRENCY),
            "--log-level", _cfg.LOG_LEVEL]
    if os.environ.get("BENCH_CONVEYOR_PREFETCH"):  # experiments only (run.py --conveyor-prefetch)
        args += ["--prefetch", os.environ["BENCH_CONVEYOR_PREFETCH"]]
    os.execv(exe, args)


def inproc(n: int, batch_size: int) -> dict[str, float]:
    """Memory broker: enqueue (single, then batch) and drain in this one process."""
    import time

    from conveyor.worker import Worker, WorkerConfig

    out = os.environ["BENCH_OUT"]
    res: dict[str, float] = {}

    def drain(label: str) -> None:
        _rec.reset(f"{out}.{label}", "drain", n)
        t0 = time.time()
        worker = Worker(app, WorkerConfig(queues=(_cfg.QUEUE,), concurrency=_cfg.CONCURRENCY,
                                          burst=True))
        result = asyncio.run(worker.run())
        t1 = time.time()
        import json

        with open(f"{out}.{label}.done") as f:
            done = json.load(f)
        assert result.counters.completed == n, result
        res[f"{label}_first_to_last_s"] = done["last"] - done["first"]
        res[f"{label}_start_to_last_s"] = done["last"] - t0
        res[f"{label}_worker_run_s"] = t1 - t0
        res[f"{label}_rss_kb"] = done["rss_kb"]

    client = Client()
    asyncio.run(client.open())
    t0 = time.perf_counter()
    for _ in range(n):
        client.send(time.time())
    res["single_s"] = time.perf_counter() - t0
    drain("drain_single")
    t0 = time.perf_counter()
    for i in range(0, n, batch_size):
        client.send_batch([time.time()] * min(batch_size, n - i))
    res["batch_s"] = time.perf_counter() - t0
    drain("drain")
    return res
