"""One benchmark step in a fresh process, run by bench/run.py with a system's own interpreter.

    python bench/driver.py SYSTEM_MODULE ROLE [options]

Roles: ``check`` (import only), ``versions``, ``setup``, ``enqueue``, ``produce``, ``depth``,
``worker`` (becomes the system's worker process), ``inproc`` (conveyor memory broker only).
Prints one JSON object on stdout's last line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.metadata
import inspect
import json
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "systems"))

DISTS = ["conveyor", "dramatiq", "celery", "kombu", "arq", "taskiq", "taskiq-redis",
         "procrastinate", "redis", "hiredis", "psycopg", "psycopg-binary", "psycopg-pool"]


async def maybe(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


async def enqueue(mod: Any, n: int, mode: str, batch: int, max_seconds: float = 0) -> dict[str, Any]:
    client = mod.Client()
    await maybe(client.open())
    try:
        if mode == "batch":
            chunks = [min(batch, n - i) for i in range(0, n, batch)]
            t0 = time.perf_counter()
            for size in chunks:
                now = time.time()
                await maybe(client.send_batch([now] * size))
            elapsed = time.perf_counter() - t0
        else:
            send = client.asend if mode == "single_async" else client.send
            t0 = time.perf_counter()
            stop = t0 + max_seconds if max_seconds > 0 else float("inf")
            sent = 0
            while sent < n:
                await maybe(send(time.time()))
                sent += 1
                if not sent % 100 and time.perf_counter() > stop:
                    break  # capped: the rate is over what was sent
            elapsed = time.perf_counter() - t0
            n = sent
        depth = await depth_of(client)
    finally:
        await maybe(client.close())
    return {"n": n, "mode": mode, "elapsed_s": elapsed, "rate": n / elapsed, "depth": depth}


async def depth_of(client: Any) -> int | None:
    if hasattr(client, "adepth"):
        return await client.adepth()
    if hasattr(client, "depth"):
        return await asyncio.to_thread(client.depth)
    return None


async def produce(mod: Any, n: int, rate: float, warmup: int, ready_file: str,
                  ready_timeout: float) -> dict[str, Any]:
    """Open loop at ``rate``: job i is sent at t0 + i/rate (late sends go at once)."""
    client = mod.Client()
    await maybe(client.open())
    try:
        deadline = time.monotonic() + ready_timeout
        while not os.path.exists(ready_file):  # the worker is up once a warm-up job ran
            if time.monotonic() > deadline:
                raise SystemExit(f"worker not ready after {ready_timeout}s")
            await maybe(client.send(-time.time()))
            await asyncio.sleep(0.05)
        period = 1.0 / rate
        t0 = time.perf_counter()
        for i in range(warmup):  # warm the steady state at the same rate; not measured
            delay = t0 + i * period - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await maybe(client.send(-time.time()))
        t0 = time.perf_counter()
        late = 0
        send_time = 0.0
        for i in range(n):
            delay = t0 + i * period - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -period:
                late += 1
            s0 = time.perf_counter()
            await maybe(client.send(time.time()))
            send_time += time.perf_counter() - s0
        elapsed = time.perf_counter() - t0
    finally:
        await maybe(client.close())
    return {"sent": n, "elapsed_s": elapsed, "achieved_rate": n / elapsed, "late": late,
            "mean_send_ms": 1000 * send_time / n}


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for d in DISTS:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[d] = importlib.metadata.version(d)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("module")
    p.add_argument("role")
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--mode", default="single")
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--max-seconds", type=float, default=0.0, help="cap single sends at this time")
    p.add_argument("--rate", type=float, default=500.0)
    p.add_argument("--warmup", type=int, default=250)
    p.add_argument("--ready-file", default="")
    p.add_argument("--ready-timeout", type=float, default=60.0)
    a = p.parse_args()
    if a.role == "versions":
        print(json.dumps(versions()))
        return
    mod = importlib.import_module(a.module)
    result: Any = {"ok": True}
    if a.role == "check":
        result = {"ok": True, "batch": bool(getattr(mod.Client, "batch", False)),
                  "single_async": hasattr(mod.Client, "asend")}
    elif a.role == "setup":
        if hasattr(mod, "setup"):
            asyncio.run(maybe_call(mod.setup))
    elif a.role == "enqueue":
        result = asyncio.run(enqueue(mod, a.n, a.mode, a.batch, a.max_seconds))
    elif a.role == "produce":
        result = asyncio.run(produce(mod, a.n, a.rate, a.warmup, a.ready_file, a.ready_timeout))
    elif a.role == "depth":
        async def d() -> int | None:
            c = mod.Client()
            await maybe(c.open())
            try:
                return await depth_of(c)
            finally:
                await maybe(c.close())
        result = {"depth": asyncio.run(d())}
    elif a.role == "worker":
        mod.run_worker()
        return
    elif a.role == "inproc":
        result = mod.inproc(a.n, a.batch)
    else:
        raise SystemExit(f"unknown role {a.role}")
    sys.stdout.flush()
    print(json.dumps(result))


async def maybe_call(fn: Any) -> Any:
    return await maybe(fn())


if __name__ == "__main__":
    main()
