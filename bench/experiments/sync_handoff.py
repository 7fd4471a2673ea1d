"""Experiment (not part of `make bench`): what the loop -> thread -> loop handoff of a `def`
job costs. This experiment measured the gain of coalescing completion wake-ups before
conveyor adopted it (commit 196a673, worker/threads.py ThreadRunner); it now compares:

  current    conveyor as checked out (ThreadRunner when present)
  executor   the previous path, emulated: ``loop.run_in_executor`` on a ThreadPoolExecutor per
             job (a concurrent Future, wrap_future and one call_soon_threadsafe per job)
  coalesced  this file's CoalescedThreads: 8 threads pull from a SimpleQueue; only the first
             finisher since the loop last looked schedules a call_soon_threadsafe
  async      the same no-op as an ``async def`` (no thread at all)

    bench/.venv/bin/python bench/experiments/sync_handoff.py [--n 20000] [--runs 5] [--broker redis]

Each trial is a fresh process: N no-op jobs sent in batches, then a burst Worker (concurrency 8,
BENCH_PREFETCH to change the prefetch) drains them; the drain rate is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextvars
import functools
import json
import os
import queue
import statistics
import subprocess
import sys
import threading
import time


class CoalescedThreads:
    def __init__(self, loop: asyncio.AbstractEventLoop, n: int) -> None:
        self.loop = loop
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self.done: collections.deque = collections.deque()
        self.lock = threading.Lock()
        self.wake_pending = False
        for i in range(n):
            threading.Thread(target=self._work, daemon=True, name=f"job-{i}").start()

    def submit(self, fn) -> asyncio.Future:
        fut = self.loop.create_future()
        self.q.put((fut, contextvars.copy_context(), fn))
        return fut

    def _work(self) -> None:
        while True:
            fut, ctx, fn = self.q.get()
            try:
                res = (True, ctx.run(fn))
            except BaseException as exc:
                res = (False, exc)
            with self.lock:
                self.done.append((fut, res))
                if self.wake_pending:
                    continue
                self.wake_pending = True
            self.loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        with self.lock:
            items = list(self.done)
            self.done.clear()
            self.wake_pending = False
        for fut, (ok, value) in items:
            if not fut.cancelled():
                fut.set_result(value) if ok else fut.set_exception(value)


def url_for(broker: str, tag: str, tmp: str) -> str:
    return {
        "memory": "memory://",
        "sqlite": f"sqlite:///{tmp}/exp.db",
        "redis": f"redis://127.0.0.1:6379/13?prefix={tag}",
        "postgres": f"postgresql://postgres@127.0.0.1:5432/test?schema={tag.replace('-', '_')}",
    }[broker]


def cleanup(broker: str, tag: str) -> None:
    if broker == "redis":
        import redis

        r = redis.Redis.from_url("redis://127.0.0.1:6379/13")
        keys = list(r.scan_iter(match=f"{tag}*", count=1000))
        if keys:
            r.unlink(*keys)
    elif broker == "postgres":
        import psycopg

        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True) as c:
            c.execute(f'DROP SCHEMA IF EXISTS "{tag.replace("-", "_")}" CASCADE')


def trial(variant: str, n: int, broker: str = "memory") -> dict:
    import os
    import shutil
    import tempfile

    from conveyor import App
    from conveyor.worker import Worker, WorkerConfig
    from conveyor.worker import executor as ex

    tag = f"cvbench-exp-{os.getpid()}"
    tmp = tempfile.mkdtemp(prefix="cvbench-exp-")
    app = App(url_for(broker, tag, tmp))
    try:
        return _trial(app, variant, n, ex, Worker, WorkerConfig)
    finally:
        app.close()
        cleanup(broker, tag)
        shutil.rmtree(tmp, ignore_errors=True)


def _trial(app, variant: str, n: int, ex, Worker, WorkerConfig) -> dict:
    if variant == "async":
        @app.job(name="noop", queue="q")
        async def noop() -> None:
            pass
    else:
        @app.job(name="noop", queue="q")
        def noop() -> None:
            pass

    if variant in ("coalesced", "executor"):
        from concurrent.futures import ThreadPoolExecutor

        runners: dict = {}

        async def _call(self, definition, job, ctx):  # Executor._call's contract
            loop = asyncio.get_running_loop()
            call = functools.partial(definition.fn, *job.args, **job.kwargs)
            if variant == "executor":
                pool = runners.get(loop)
                if pool is None:
                    pool = runners[loop] = ThreadPoolExecutor(8, thread_name_prefix="job")
                return await loop.run_in_executor(pool, contextvars.copy_context().run, call)
            runner = runners.get(loop)
            if runner is None:
                runner = runners[loop] = CoalescedThreads(loop, 8)
            return await runner.submit(call)

        ex.Executor._call = _call

    for i in range(0, n, 1000):
        app.send_jobs([noop.message() for _ in range(min(1000, n - i))])
    t0 = time.perf_counter()
    prefetch = int(os.environ["BENCH_PREFETCH"]) if os.environ.get("BENCH_PREFETCH") else None
    r = asyncio.run(Worker(app, WorkerConfig(queues=("q",), concurrency=8, prefetch=prefetch,
                                             burst=True)).run())
    dt = time.perf_counter() - t0
    assert r.counters.completed == n, r
    return {"variant": variant, "drain_rate": n / dt}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--broker", default="memory", choices=["memory", "sqlite", "redis", "postgres"])
    p.add_argument("--child")
    a = p.parse_args()
    if a.child:
        print(json.dumps(trial(a.child, a.n, a.broker)))
        return
    rates: dict[str, list[float]] = collections.defaultdict(list)
    for _ in range(a.runs):
        for v in ("current", "executor", "coalesced", "async"):
            out = subprocess.run([sys.executable, __file__, "--child", v, "--n", str(a.n),
                                  "--broker", a.broker],
                                 capture_output=True, text=True, check=True).stdout
            rates[v].append(json.loads(out.strip().splitlines()[-1])["drain_rate"])
    print(f"{a.broker}, {a.n:,} jobs, drain (burst Worker, concurrency 8), medians of {a.runs}:")
    for v, rs in rates.items():
        print(f"{v:10s} median {statistics.median(rs):8,.0f} jobs/s  runs {[round(x) for x in rs]}")


if __name__ == "__main__":
    main()
