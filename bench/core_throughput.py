"""The core throughput goal, measured exactly: no-op jobs through one worker process,
>= 20,000 jobs/s on the memory broker and >= 3,000 jobs/s on SQLite, end to end.

Each trial runs in a fresh process: send N no-op jobs with ``app.send_jobs`` in batches, then
run a burst :class:`conveyor.worker.Worker` (concurrency 8) in the same process until the
queue is empty. Reported per trial:

* enqueue  N / time of the batch sends
* drain    N / time of ``Worker.run()`` (start to burst exit, final acks included)
* e2e      N / (enqueue + drain)

The summary gives the median of ``--runs`` trials (default 3) for each broker and job kind
(``def`` jobs run in the worker's thread pool, ``async def`` jobs on its event loop).

    python bench/core_throughput.py                   # memory + sqlite, sync + async jobs
    python bench/core_throughput.py --brokers redis,postgres --runs 5
    python bench/core_throughput.py --profile memory:sync   # cProfile one drain, print hot spots

Uses only conveyor (any virtualenv where it is installed: the project's or bench/.venv).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
GOALS = {"memory": 20000.0, "sqlite": 3000.0}
URLS = {
    "memory": "memory://",
    "sqlite": "sqlite:///{tmp}/core.db",
    "redis": os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13") + "?prefix={tag}",
    "postgres": os.environ.get("BENCH_PG_BASE", "postgresql://postgres@127.0.0.1:5432")
    + "/test?schema={schema}",
}


def trial(broker: str, job: str, n: int, batch: int, concurrency: int,
          profile: str | None) -> dict[str, Any]:
    """One trial, in this (fresh) process."""
    import asyncio

    from conveyor import App
    from conveyor.worker import Worker, WorkerConfig

    tmp = tempfile.mkdtemp(prefix="cvbench-core-")
    tag = f"cvbench-core-{os.getpid()}-{int(time.time())}"
    schema = tag.replace("-", "_")
    url = URLS[broker].format(tmp=tmp, tag=tag, schema=schema)
    app = App(url)
    if job == "async":
        @app.job(name="noop", queue="core")
        async def noop() -> None:
            pass
    else:
        @app.job(name="noop", queue="core")
        def noop() -> None:
            pass

    try:
        app.stats(["core"])  # connect (and migrate) before timing
        t0 = time.perf_counter()
        for i in range(0, n, batch):
            app.send_jobs([noop.message() for _ in range(min(batch, n - i))])
        t1 = time.perf_counter()
        worker = Worker(app, WorkerConfig(queues=("core",), concurrency=concurrency, burst=True))
        if profile:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        result = asyncio.run(worker.run())
        t2 = time.perf_counter()
        if profile:
            prof.disable()
            prof.dump_stats(profile)
        done = result.counters.completed
        if done != n:
            raise SystemExit(f"drained {done} of {n} jobs ({result})")
        return {"broker": broker, "job": job, "n": n, "enqueue_s": t1 - t0, "drain_s": t2 - t1,
                "enqueue_rate": n / (t1 - t0), "drain_rate": n / (t2 - t1),
                "e2e_rate": n / (t2 - t0), "rss_kb": _rss_kb()}
    finally:
        _cleanup(app, broker, tag, schema, tmp)


def _cleanup(app: Any, broker: str, tag: str, schema: str, tmp: str) -> None:
    with contextlib.suppress(Exception):
        app.close()
    if broker == "redis":
        import redis

        r = redis.Redis.from_url(URLS["redis"].split("?")[0])
        keys = list(r.scan_iter(match=f"*{tag}*", count=1000))
        if keys:
            r.unlink(*keys)
    elif broker == "postgres":
        import psycopg

        with psycopg.connect(URLS["postgres"].split("?")[0], autocommit=True) as c:
            c.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')  # only the schema we created
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_busy(seconds: float = 1.0) -> float:
    """Fraction of all CPUs busy over ``seconds``: other processes' load between our trials."""
    def snap() -> tuple[int, int]:
        with open("/proc/stat") as f:
            vals = [int(x) for x in f.readline().split()[1:]]
        return sum(vals[:8]), vals[3] + vals[4]

    t0, i0 = snap()
    time.sleep(seconds)
    t1, i1 = snap()
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def wait_quiet(max_wait: float, threshold: float = 0.25) -> float:
    deadline = time.monotonic() + max_wait
    busy = cpu_busy()
    while busy > threshold and time.monotonic() < deadline:
        busy = cpu_busy()
    return busy


def run_child(broker: str, job: str, a: argparse.Namespace, profile: str | None = None) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", f"{broker}:{job}", "--n", str(a.n), "--batch",
           str(a.batch), "--concurrency", str(a.concurrency)]
    if profile:
        cmd += ["--profile-out", profile]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise RuntimeError(f"{broker}:{job} failed: {(p.stderr or p.stdout).strip()[-600:]}")
    result: dict[str, Any] = json.loads(p.stdout.strip().splitlines()[-1])
    return result


def pyspy(a: argparse.Namespace) -> None:
    """Sample a whole trial (enqueue + drain) with py-spy, then summarise per thread."""
    import collections
    import shutil

    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    out = BENCH / "results" / "profiles"
    out.mkdir(parents=True, exist_ok=True)
    raw = out / f"pyspy-{a.pyspy.replace(':', '-')}.txt"
    rate = 500
    cmd = [spy, "record", "--format", "raw", "--threads", "-r", str(rate), "-o", str(raw), "--",
           sys.executable, __file__, "--child", a.pyspy, "--n", str(a.n), "--batch", str(a.batch),
           "--concurrency", str(a.concurrency)]
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    wall = time.time() - t0
    print((p.stdout.strip().splitlines() or [""])[-1])
    per_thread: collections.Counter[str] = collections.Counter()
    leaf: collections.Counter[tuple[str, str]] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    idle_leaves = ("_worker (concurrent/futures/thread.py:81)", "EpollSelector.select",
                   "Condition.wait", "Event.wait", "Thread.join")
    idle: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if frames[-1].startswith(idle_leaves):  # blocked in a wait that py-spy sees as running
            th = frames[0].split(": ", 1)[-1].rstrip("_0123456789")
            idle[th] += int(count)
            continue
        thread = frames[0].split(": ", 1)[-1] if ": " in frames[0] else frames[0]
        thread = thread.rstrip("_0123456789") or thread
        n = int(count)
        per_thread[thread] += n
        leaf[(thread, frames[-1])] += n
        for f in set(frames[1:]):
            if "conveyor/" in f:
                incl[f] += n
    print(f"\npy-spy at {rate} Hz over ~{wall:.1f} s (active samples only; idle waits excluded)")
    print("\nsamples per thread, working / blocked in a queue or selector wait:")
    for t, n in per_thread.most_common():
        print(f"  {n:7d} / {idle.get(t, 0):7d}  {t}")
    print("\ntop leaf frames (self time):")
    for (t, f), n in leaf.most_common(30):
        print(f"  {n:7d}  [{t}] {f}")
    print("\nconveyor functions, inclusive:")
    for f, n in incl.most_common(30):
        print(f"  {n:7d}  {f}")
    print(f"\nraw stacks: {raw}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--brokers", default="memory,sqlite")
    p.add_argument("--jobs", default="sync,async", help="sync, async or both")
    p.add_argument("--json", help="write the results here (default bench/results/core-<date>.json)")
    p.add_argument("--profile", help="BROKER:JOB — cProfile one drain and print the hot spots")
    p.add_argument("--pyspy", help="BROKER:JOB — sample one trial with py-spy (every thread) and"
                   " summarise where each thread spends its time")
    p.add_argument("--quiet-wait", type=float, default=20.0,
                   help="seconds to wait for a quiet machine before each trial")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--profile-out", help=argparse.SUPPRESS)
    a = p.parse_args()

    if a.child:
        broker, job = a.child.split(":")
        print(json.dumps(trial(broker, job, a.n, a.batch, a.concurrency, a.profile_out)))
        return

    if a.profile:
        broker, job = a.profile.split(":")
        out = BENCH / "results" / "profiles"
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"core-{broker}-{job}.pstats"
        r = run_child(broker, job, a, str(path))
        print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in r.items()}))
        import pstats

        st = pstats.Stats(str(path))
        st.sort_stats("tottime").print_stats(30)
        st.sort_stats("cumulative").print_stats(40)
        print(f"profile: {path}")
        return

    if a.pyspy:
        pyspy(a)
        return

    brokers = [b.strip() for b in a.brokers.split(",") if b.strip()]
    jobs = ["sync", "async"] if a.jobs in ("both", "sync,async") else [a.jobs]
    started = dt.datetime.now(dt.UTC)
    trials: dict[str, list[dict[str, Any]]] = {}
    errors: dict[str, str] = {}
    for rep in range(a.runs):  # interleaved, so that drifts of a noisy machine spread evenly
        for broker in brokers:
            for job in jobs:
                key = f"{broker}:{job}"
                if key in errors:
                    continue
                busy = wait_quiet(a.quiet_wait)
                try:
                    r = run_child(broker, job, a)
                    r["busy_before"] = busy
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    errors[key] = str(exc)
                    print(f"{key}: FAILED {exc}", file=sys.stderr)
                    continue
                trials.setdefault(key, []).append(r)
                print(f"run {rep + 1}/{a.runs} {key:16s} enqueue {r['enqueue_rate']:9,.0f}/s"
                      f"  drain {r['drain_rate']:8,.0f}/s  e2e {r['e2e_rate']:8,.0f}/s"
                      f"  (machine {busy:.0%} busy before)",
                      file=sys.stderr, flush=True)

    summary: dict[str, dict[str, Any]] = {}
    for key, rs in trials.items():
        broker = key.split(":")[0]
        s = {m: statistics.median(r[m] for r in rs) for m in ("enqueue_rate", "drain_rate", "e2e_rate")}
        s["runs"] = len(rs)
        s["rss_kb"] = statistics.median(r["rss_kb"] for r in rs)
        s["busy_before"] = [round(r["busy_before"], 2) for r in rs]
        if broker in GOALS:
            s["goal"] = GOALS[broker]
            s["drain_goal_met"] = s["drain_rate"] >= GOALS[broker]
            s["e2e_goal_met"] = s["e2e_rate"] >= GOALS[broker]
        summary[key] = s
    sys.path.insert(0, str(BENCH))
    from run import source_fingerprint

    doc = {"date": started.strftime("%Y-%m-%d %H:%M UTC"), "n": a.n,
           "conveyor_source": source_fingerprint(), "batch": a.batch,
           "concurrency": a.concurrency, "runs": a.runs, "python": sys.version.split()[0],
           "loadavg": Path("/proc/loadavg").read_text().split()[:3],
           "summary": summary, "errors": errors, "trials": trials}
    out = Path(a.json) if a.json else BENCH / "results" / "scratch" / f"core-{started.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))

    print(f"\nconveyor core throughput, {doc['date']}: {a.n:,} no-op jobs, batches of {a.batch},"
          f" one burst worker, concurrency {a.concurrency}; medians of {a.runs} runs\n")
    print("| broker:job | enqueue (jobs/s) | drain (jobs/s) | end to end (jobs/s) | goal | met (drain / e2e) |")
    print("|---|---:|---:|---:|---:|---|")
    for key, s in summary.items():
        goal = f"≥ {s['goal']:,.0f}" if "goal" in s else "—"
        met = (f"{'yes' if s['drain_goal_met'] else 'NO'} / {'yes' if s['e2e_goal_met'] else 'NO'}"
               if "goal" in s else "—")
        print(f"| {key} | {s['enqueue_rate']:,.0f} | {s['drain_rate']:,.0f} | {s['e2e_rate']:,.0f}"
              f" | {goal} | {met} |")
    for key, e in errors.items():
        print(f"\n{key}: FAILED: {e[:400]}")
    print(f"\nwrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
