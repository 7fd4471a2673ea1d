"""conveyor's comparative benchmark: the same four workloads for every system, one system at a
time, each step in fresh processes, all on this machine in one run.

    bench/run.sh                       # what `make bench` runs: venvs, then this, then core_throughput
    bench/.venv/bin/python bench/run.py [--quick] [--only a,b] [--reps 3] [--n 20000]

Workloads (see bench/README.md for the exact definitions):
  a. enqueue 20,000 no-op jobs: single sends, and batch sends where the library has a batch API
  b. drain those 20,000 jobs with ONE fresh worker process at concurrency 8
  c. enqueue->start latency at an offered 500 jobs/s for ~10 s (p50, p99)
  d. the worker's RSS when the drain ends

Repetitions are interleaved (system A, B, C, then A, B, C again...) so that slow drifts of
this noisy 2-core machine spread over every system; the report gives medians.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
VENVS = {"main": BENCH / ".venv" / "bin" / "python", "arq": BENCH / ".venv-arq" / "bin" / "python"}

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
PG_BASE = os.environ.get("BENCH_PG_BASE", "postgresql://postgres@127.0.0.1:5432")
PG_ADMIN_DB = os.environ.get("BENCH_PG_ADMIN_DB", "postgres")
"""Database we connect to only to CREATE/DROP our own ``cvbench_*`` databases."""

GOALS = {
    "memory_drain": 20000.0,  # jobs/s, one worker process, end to end (core_throughput.py)
    "sqlite_drain": 3000.0,
    "redis_vs_dramatiq": 5.0,  # conveyor-redis drain / dramatiq drain
    "postgres_vs_procrastinate": 10.0,
    "p99_ms": 5.0,  # enqueue->start p99 at 500 jobs/s
}


@dataclass
class Spec:
    name: str
    module: str
    store: str  # memory | sqlite | redis | pg
    venv: str = "main"
    env: dict[str, str] = field(default_factory=dict)
    inproc: bool = False
    note: str = ""


SYSTEMS: list[Spec] = [
    Spec("conveyor-memory", "b_conveyor", "memory", inproc=True,
         note="in-process: enqueue, then a burst Worker in the same process"),
    Spec("conveyor-sqlite", "b_conveyor", "sqlite"),
    Spec("conveyor-redis", "b_conveyor", "redis"),
    Spec("conveyor-postgres", "b_conveyor", "pg"),
    Spec("dramatiq", "b_dramatiq", "redis"),
    Spec("celery", "b_celery", "redis"),
    Spec("arq", "b_arq", "redis", venv="arq"),
    Spec("taskiq", "b_taskiq", "redis"),
    Spec("procrastinate", "b_procrastinate", "pg"),
    Spec("raw-redis", "b_rawredis", "redis", note="reference: LPUSH / 8 threads BRPOP, no acks"),
    Spec("raw-pg", "b_rawpg", "pg", note="reference: INSERT / 8 threads DELETE..SKIP LOCKED"),
]
BY_NAME = {s.name: s for s in SYSTEMS}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- stores: every key, database and file we make carries the run tag ------------------------
class Store:
    def __init__(self, spec: Spec, tag: str, tmp: Path) -> None:
        self.spec, self.tag, self.tmp = spec, tag, tmp
        self.db = "cvbench_" + spec.name.replace("-", "_")
        # PostgreSQL systems get a database of their own, and Procrastinate's NOTIFY channel
        # name (63 bytes at most) contains the queue name: a short queue name there.
        queue = "bench" if spec.store == "pg" else tag
        self.env: dict[str, str] = {"BENCH_TAG": tag, "BENCH_QUEUE": queue,
                                    "BENCH_REDIS_URL": REDIS_URL,
                                    "BENCH_PG_DSN": f"{PG_BASE}/{self.db}"}
        if spec.module == "b_conveyor":
            url = {
                "memory": "memory://",
                "sqlite": f"sqlite:///{tmp / (tag + '.db')}",
                "redis": f"{REDIS_URL}?prefix={tag}",
                "pg": f"{PG_BASE}/{self.db}",
            }[spec.store]
            self.env["BENCH_CONVEYOR_URL"] = url

    def reset(self) -> None:
        """Make the store empty: our Redis keys unlinked, our database recreated, our file gone."""
        if self.spec.store == "redis":
            redis_unlink(f"*{self.tag}*")
        elif self.spec.store == "pg":
            pg_drop(self.db)
            pg_create(self.db)
        elif self.spec.store == "sqlite":
            for p in self.tmp.glob(self.tag + ".db*"):
                p.unlink()

    def drop(self) -> None:
        if self.spec.store == "redis":
            redis_unlink(f"*{self.tag}*")
        elif self.spec.store == "pg":
            pg_drop(self.db)
        elif self.spec.store == "sqlite":
            for p in self.tmp.glob(self.tag + ".db*"):
                p.unlink()


def redis_client() -> Any:
    import redis

    return redis.Redis.from_url(REDIS_URL)


def redis_unlink(pattern: str) -> int:
    assert "cvbench" in pattern, pattern  # never touch keys that are not ours
    r = redis_client()
    n = 0
    batch: list[bytes] = []
    for key in r.scan_iter(match=pattern, count=1000):
        batch.append(key)
        if len(batch) >= 500:
            n += r.unlink(*batch)
            batch = []
    if batch:
        n += r.unlink(*batch)
    r.close()
    return n


def pg_admin() -> Any:
    import psycopg

    return psycopg.connect(f"{PG_BASE}/{PG_ADMIN_DB}", autocommit=True)


def pg_drop(db: str) -> None:
    assert db.startswith("cvbench_"), db  # only databases this benchmark creates
    with pg_admin() as c:
        c.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def pg_analyze(db: str) -> None:
    import psycopg

    assert db.startswith("cvbench_"), db
    with psycopg.connect(f"{PG_BASE}/{db}", autocommit=True) as c:
        c.execute("ANALYZE")


def pg_create(db: str) -> None:
    assert db.startswith("cvbench_"), db
    with pg_admin() as c:
        c.execute(f'CREATE DATABASE "{db}"')


# -- child processes -----------------------------------------------------------------------
class StepFailed(Exception):
    pass


def child_env(spec: Spec, store: Store, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    for k in list(env):
        if k.startswith("BENCH_") or k == "CONVEYOR_BROKER_URL":
            del env[k]
    env.update(store.env)
    env.update(spec.env)
    env.update(extra or {})
    env["PYTHONPATH"] = str(BENCH / "systems")
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def driver(spec: Spec, store: Store, role: str, *args: str, timeout: float = 600,
           extra_env: dict[str, str] | None = None, logfile: Path | None = None) -> dict[str, Any]:
    cmd = [str(VENVS[spec.venv]), str(BENCH / "driver.py"), spec.module, role, *args]
    proc = subprocess.run(cmd, env=child_env(spec, store, extra_env), capture_output=True,
                          text=True, timeout=timeout, cwd=str(BENCH / "systems"))
    if logfile is not None:
        logfile.write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-8:]
        raise StepFailed(f"{role} failed (exit {proc.returncode}): " + " | ".join(tail))
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
    if not lines:
        raise StepFailed(f"{role} printed no result")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


class WorkerProc:
    """A worker in its own session, so that it and its children can be stopped together."""

    def __init__(self, spec: Spec, store: Store, out: str, mode: str, expect: int,
                 logfile: Path) -> None:
        env = child_env(spec, store, {"BENCH_OUT": out, "BENCH_MODE": mode,
                                      "BENCH_EXPECT": str(expect)})
        cmd = [str(VENVS[spec.venv]), str(BENCH / "driver.py"), spec.module, "worker"]
        self.log = open(logfile, "w")  # noqa: SIM115 - closed in stop()
        self.spawned = time.time()
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=str(BENCH / "systems"), start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tree_rss_kb(self) -> int:
        try:
            import psutil

            p = psutil.Process(self.proc.pid)
            procs = [p, *p.children(recursive=True)]
            return sum(q.memory_info().rss for q in procs) // 1024
        except Exception:
            return 0

    def stop(self, grace: float = 15.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace)
        # children a supervisor left behind, or a worker that ignored SIGTERM
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self.log.close()


def wait_file(path: str, timeout: float, worker: WorkerProc | None = None,
              stalled: Any = None, check_every: float = 15.0) -> dict[str, Any]:
    """Wait for ``path``; ``stalled()`` (checked every ``check_every`` s) may raise StepFailed."""
    deadline = time.monotonic() + timeout
    next_check = time.monotonic() + check_every
    while time.monotonic() < deadline:
        if os.path.exists(path):
            with open(path) as f:
                data: dict[str, Any] = json.load(f)
            return data
        if worker is not None and not worker.alive():
            raise StepFailed(f"worker exited (code {worker.proc.returncode}) before {path}")
        if stalled is not None and time.monotonic() > next_check:
            stalled()
            next_check = time.monotonic() + check_every
        time.sleep(0.02)
    raise StepFailed(f"timed out after {timeout:.0f}s waiting for {os.path.basename(path)}")


def cpu_busy(seconds: float = 1.0) -> float:
    """Fraction of all CPUs busy over ``seconds`` (between our steps: other people's load)."""
    def snap() -> tuple[int, int]:
        with open("/proc/stat") as f:
            vals = [int(x) for x in f.readline().split()[1:]]
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
        return sum(vals[:8]), idle

    t0, i0 = snap()
    time.sleep(seconds)
    t1, i1 = snap()
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def wait_quiet(max_wait: float, threshold: float) -> float:
    """Wait (at most ``max_wait`` s) until other processes leave the CPUs mostly idle."""
    deadline = time.monotonic() + max_wait
    busy = cpu_busy()
    while busy > threshold and time.monotonic() < deadline:
        busy = cpu_busy()
    return busy


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


# -- one repetition of one system ----------------------------------------------------------
def run_system(spec: Spec, rep: int, a: argparse.Namespace, run_id: str, tmp: Path,
               logs: Path) -> dict[str, Any]:
    tag = f"cvbench-{run_id}-{spec.name}-{rep}"
    store = Store(spec, tag, tmp)
    res: dict[str, Any] = {"system": spec.name, "rep": rep, "errors": {}}
    lg = lambda phase: logs / f"{spec.name}-{rep}-{phase}.log"  # noqa: E731
    n = a.n

    def step(name: str, fn: Any) -> None:
        try:
            fn()
        except (StepFailed, subprocess.TimeoutExpired) as exc:
            res["errors"][name] = str(exc)[:800]
            log(f"  {spec.name}: {name} FAILED: {str(exc)[:300]}")

    try:
        store.reset()
        caps = driver(spec, store, "check", timeout=120)
        if spec.inproc:
            def inproc() -> None:
                out = str(tmp / f"{tag}-inproc")
                r = driver(spec, store, "inproc", "--n", str(n), "--batch", str(a.batch),
                           extra_env={"BENCH_OUT": out}, timeout=a.step_timeout, logfile=lg("inproc"))
                res["enqueue_single"] = {"rate": n / r["single_s"], "elapsed_s": r["single_s"]}
                res["enqueue_batch"] = {"rate": n / r["batch_s"], "elapsed_s": r["batch_s"]}
                res["drain"] = {
                    "rate": n / r["drain_first_to_last_s"],
                    "rate_incl_startup": n / r["drain_start_to_last_s"],
                    "worker_run_rate": n / r["drain_worker_run_s"],
                    "rss_kb": r["drain_rss_kb"], "raw": r,
                }
            step("inproc", inproc)
            return res

        def setup() -> None:
            driver(spec, store, "setup", timeout=120, logfile=lg("setup"))

        def enqueue(mode: str, count: int = n, cap: float = a.enqueue_cap,
                    expect_depth: int | None = None) -> dict[str, Any]:
            r = driver(spec, store, "enqueue", "--n", str(count), "--mode", mode, "--batch",
                       str(a.batch), "--max-seconds", str(cap), timeout=a.step_timeout,
                       logfile=lg(f"enqueue-{mode}-{count}"))
            want = r["n"] if expect_depth is None else expect_depth
            if r.get("depth") is not None and r["depth"] != want:
                raise StepFailed(f"{mode}: queue holds {r['depth']} jobs after sending {want}")
            if r["n"] < count:  # capped single sends: top up, untimed, for the drain
                r["capped"] = True
                fill = "batch" if caps.get("batch") else "single"
                enqueue(fill, count - r["n"], 0, expect_depth=count)
            return r

        setup()
        step("enqueue_single", lambda: res.__setitem__("enqueue_single", enqueue("single")))
        if caps.get("single_async"):
            store.reset()
            setup()
            step("enqueue_single_async",
                 lambda: res.__setitem__("enqueue_single_async", enqueue("single_async")))
        if caps.get("batch"):
            store.reset()
            setup()
            step("enqueue_batch", lambda: res.__setitem__("enqueue_batch", enqueue("batch")))
        if not ("enqueue_batch" in res or ("enqueue_single" in res and not caps.get("single_async"))):
            # the queue must hold exactly n jobs for the drain: refill by the fastest way
            store.reset()
            setup()
            enqueue("batch" if caps.get("batch") else "single")

        def drain() -> None:
            if spec.store == "pg":  # planner statistics for the freshly filled tables, as
                pg_analyze(store.db)  # autovacuum would soon give them: same for every PG system
            out = str(tmp / f"{tag}-drain")
            w = WorkerProc(spec, store, out, "drain", n, lg("drain-worker"))
            empty_checks = []

            def stalled() -> None:  # jobs that fail never count: stop waiting once none are left
                depth = driver(spec, store, "depth", timeout=60).get("depth")
                empty_checks.append(depth == 0)
                if empty_checks[-2:] == [True, True] and not os.path.exists(out + ".done"):
                    raise StepFailed("the queue is empty but not every job ran: see the worker log"
                                     f" {lg('drain-worker').name}")

            try:
                done = wait_file(out + ".done", a.step_timeout, w, stalled)
                tree = w.tree_rss_kb()
            finally:
                w.stop()
            res["drain"] = {
                "rate": n / (done["last"] - done["first"]),
                "rate_incl_startup": n / (done["last"] - w.spawned),
                "startup_s": done["first"] - w.spawned,
                "rss_kb": done["rss_kb"], "tree_rss_kb": tree, "threads": done["threads"],
            }

        step("drain", drain)

        if a.latency_seconds > 0:
            def latency() -> None:
                store.reset()
                setup()
                m = int(a.rate * a.latency_seconds)
                out = str(tmp / f"{tag}-lat")
                w = WorkerProc(spec, store, out, "latency", m, lg("latency-worker"))
                try:
                    prod = driver(spec, store, "produce", "--n", str(m), "--rate", str(a.rate),
                                  "--warmup", str(int(a.rate / 2)), "--ready-file", out + ".ready",
                                  "--ready-timeout", "90", timeout=a.step_timeout,
                                  logfile=lg("latency-producer"))
                    done = wait_file(out + ".done", 60, w)
                finally:
                    w.stop()
                lat = [x * 1000 for x in done["latencies"]]
                res["latency"] = {
                    "p50_ms": pct(lat, 50), "p90_ms": pct(lat, 90), "p99_ms": pct(lat, 99),
                    "max_ms": max(lat), "mean_ms": statistics.fmean(lat), "count": len(lat),
                    "offered_rate": a.rate, "achieved_rate": prod["achieved_rate"],
                    "late_sends": prod["late"], "mean_send_ms": prod["mean_send_ms"],
                }

            step("latency", latency)
    except (StepFailed, subprocess.TimeoutExpired) as exc:
        res["errors"]["system"] = str(exc)[:800]
        log(f"  {spec.name}: FAILED: {str(exc)[:300]}")
    finally:
        try:
            store.drop()
        except Exception as exc:  # cleanup must not end the run
            log(f"  {spec.name}: cleanup failed: {exc}")
    return res


# -- reporting -----------------------------------------------------------------------------
METRICS = [
    ("enqueue_single", "rate"), ("enqueue_single_async", "rate"), ("enqueue_batch", "rate"),
    ("drain", "rate"), ("drain", "rate_incl_startup"), ("drain", "rss_kb"),
    ("drain", "tree_rss_kb"), ("latency", "p50_ms"), ("latency", "p99_ms"),
    ("latency", "max_ms"), ("latency", "achieved_rate"),
]


def medians(reps: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for section, key in METRICS:
        vals = [r[section][key] for r in reps if section in r and key in r[section]]
        if vals:
            out[f"{section}.{key}"] = statistics.median(vals)
            out[f"{section}.{key}.n"] = len(vals)
            out[f"{section}.{key}.all"] = vals
    return out


def ratio(m: dict[str, dict[str, Any]], a: str, b: str, key: str = "drain.rate") -> float | None:
    x, y = m.get(a, {}).get(key), m.get(b, {}).get(key)
    return x / y if x and y else None


def fmt(v: Any, digits: int = 0) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def report(doc: dict[str, Any]) -> str:
    m: dict[str, dict[str, Any]] = doc["medians"]
    lines = [
        f"Run `{doc['run_id']}`, {doc['date']} — medians of {doc['params']['reps']} runs"
        f" ({doc['params']['n']:,} jobs, latency at {doc['params']['rate']:.0f} jobs/s for"
        f" {doc['params']['latency_seconds']:.0f} s), {doc['machine']['summary']}.",
        "",
        f"conveyor at commit `{doc['conveyor_source'].get('commit', '?')}`"
        + (" with uncommitted changes in src/" if doc["conveyor_source"].get("src_dirty") else "")
        + (" (**changed during the run**)" if doc["conveyor_source"].get("changed_during_run") else "")
        + f" (src sha256 `{doc['conveyor_source']['src_sha256']}`); run took"
        f" {doc['duration_s'] / 60:.0f} min.",
        "",
        "| system | enqueue single (jobs/s) | enqueue batch (jobs/s) | drain (jobs/s) |"
        " drain incl. startup (jobs/s) | latency p50 (ms) | latency p99 (ms) |"
        " worker RSS (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for spec in SYSTEMS:
        if spec.name not in m:
            continue
        r = m[spec.name]
        reps = doc["raw"].get(spec.name, [])

        def capped(section: str, reps: list[dict[str, Any]] = reps) -> str:
            return "*" if any(x.get(section, {}).get("capped") for x in reps) else ""

        single = fmt(r.get("enqueue_single.rate")) + capped("enqueue_single")
        if "enqueue_single_async.rate" in r:
            single += (f" (async {fmt(r['enqueue_single_async.rate'])}"
                       f"{capped('enqueue_single_async')})")
        rss = r.get("drain.rss_kb")
        tree = r.get("drain.tree_rss_kb")
        rss_s = "—" if rss is None else f"{rss / 1024:.0f}"
        if tree and rss and tree > rss * 1.2:
            rss_s += f" ({tree / 1024:.0f} with supervisor)"
        errs = doc["errors"].get(spec.name)
        name = spec.name + (" ⚠" if errs else "")
        lines.append(
            f"| {name} | {single} | {fmt(r.get('enqueue_batch.rate'))} | {fmt(r.get('drain.rate'))}"
            f" | {fmt(r.get('drain.rate_incl_startup'))} | {fmt(r.get('latency.p50_ms'), 2)}"
            f" | {fmt(r.get('latency.p99_ms'), 2)} | {rss_s} |"
        )
    if any(x.get(sec, {}).get("capped") for reps in doc["raw"].values() for x in reps
           for sec in ("enqueue_single", "enqueue_single_async")):
        lines += ["", f"\\* single sends stopped after {doc['params']['enqueue_cap']:.0f} s in at least one"
                  " run: the rate is over the jobs sent by then."]
    busy = doc.get("busy_before", [])
    if busy:
        lines += ["", f"Other processes kept the machine {statistics.median(busy):.0%} busy (median;"
                  f" max {max(busy):.0%}) in the second before each system's runs: see the JSON."]
    lines += ["", "Goals and ratios (drain = jobs/s from the first job's start to the last's):", ""]
    checks = doc["goals"]
    for c in checks:
        lines.append(f"- {c['text']}")
    if doc["errors"]:
        lines += ["", "Failures (⚠ above; see the JSON for details):", ""]
        for name, errs in doc["errors"].items():
            for e in errs:
                lines.append(f"- {name}: {e[:240]}")
    return "\n".join(lines)


def core_table(core: dict[str, Any]) -> str:
    src = core.get("conveyor_source", {})
    lines = [f"`core_throughput.py`, {core['date']}, conveyor `{src.get('commit', '?')}`"
             f"{' + local changes' if src.get('src_dirty') else ''}: {core['n']:,} no-op jobs sent in batches of"
             f" {core['batch']}, then one burst Worker (concurrency {core['concurrency']}) in the same"
             f" process; medians of {core['runs']} runs, each in a fresh process.", "",
             "| broker, job | enqueue (jobs/s) | drain (jobs/s) | end to end (jobs/s) | goal (e2e) |",
             "|---|---:|---:|---:|---|"]
    for key, c in core["summary"].items():
        broker, job = key.split(":")
        goal = f"≥ {c['goal']:,.0f}: {'met' if c['e2e_goal_met'] else 'NOT met'}" if "goal" in c else "—"
        lines.append(f"| {broker}, {'def' if job == 'sync' else 'async def'} | {c['enqueue_rate']:,.0f}"
                     f" | {c['drain_rate']:,.0f} | {c['e2e_rate']:,.0f} | {goal} |")
    return "\n".join(lines)


def goal_checks(m: dict[str, dict[str, Any]], core: dict[str, Any] | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(text: str, ok: bool | None, value: float | None) -> None:
        mark = "n/a" if ok is None else ("MET" if ok else "NOT MET")
        out.append({"text": f"{text}: **{mark}**", "ok": ok, "value": value})

    def drain(name: str) -> float | None:
        return m.get(name, {}).get("drain.rate")

    core_sum = (core or {}).get("summary", {})
    for broker, goal in (("memory", GOALS["memory_drain"]), ("sqlite", GOALS["sqlite_drain"])):
        for job in ("sync", "async"):
            c = core_sum.get(f"{broker}:{job}")
            if c:
                add(f"core_throughput {broker}, {'def' if job == 'sync' else 'async def'} job:"
                    f" drain {fmt(c['drain_rate'])} jobs/s, end to end {fmt(c['e2e_rate'])} jobs/s"
                    f" vs goal ≥ {goal:,.0f} end to end", c["e2e_rate"] >= goal, c["e2e_rate"])
        v = drain(f"conveyor-{broker}")
        add(f"conveyor-{broker} drain in this run {fmt(v)} jobs/s vs goal ≥ {goal:,.0f}",
            None if v is None else v >= goal, v)
    for a_, b_, goal in (("conveyor-redis", "dramatiq", GOALS["redis_vs_dramatiq"]),
                         ("conveyor-postgres", "procrastinate", GOALS["postgres_vs_procrastinate"])):
        r = ratio(m, a_, b_)
        add(f"{a_} / {b_} drain = {fmt(r, 2)}x vs goal ≥ {goal:.0f}x",
            None if r is None else r >= goal, r)
    for a_, b_ in (("conveyor-redis", "raw-redis"), ("conveyor-postgres", "raw-pg"),
                   ("conveyor-redis", "celery"), ("conveyor-redis", "arq"),
                   ("conveyor-redis", "taskiq")):
        r = ratio(m, a_, b_)
        if r is not None:
            out.append({"text": f"{a_} / {b_} drain = {fmt(r, 2)}x", "ok": None, "value": r})
    for name in ("conveyor-sqlite", "conveyor-redis", "conveyor-postgres"):
        v = m.get(name, {}).get("latency.p99_ms")
        add(f"{name} latency p99 {fmt(v, 2)} ms at 500 jobs/s vs goal ≤ {GOALS['p99_ms']:.0f} ms",
            None if v is None else v <= GOALS["p99_ms"], v)
    return out


def source_fingerprint() -> dict[str, Any]:
    """Which conveyor was measured: the commit, whether src/ had local changes, a content hash."""
    import hashlib

    out: dict[str, Any] = {}
    try:
        out["commit"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                       capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        out["src_dirty"] = bool(dirty)
    except Exception:
        pass
    h = hashlib.sha256()
    for p in sorted((ROOT / "src" / "conveyor").rglob("*.py")):
        h.update(str(p.relative_to(ROOT)).encode())
        h.update(p.read_bytes())
    out["src_sha256"] = h.hexdigest()[:12]
    return out


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"cpus": os.cpu_count(), "kernel": platform.release(),
                            "python": platform.python_version()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["mem_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
        info["loadavg_start"] = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        pass
    try:
        r = redis_client()
        info["redis"] = r.info("server")["redis_version"]
        r.close()
    except Exception as exc:
        info["redis"] = f"unavailable: {exc}"
    try:
        with pg_admin() as c:
            info["postgres"] = c.execute("SHOW server_version").fetchone()[0]
            info["pg_synchronous_commit"] = c.execute("SHOW synchronous_commit").fetchone()[0]
            info["pg_fsync"] = c.execute("SHOW fsync").fetchone()[0]
    except Exception as exc:
        info["postgres"] = f"unavailable: {exc}"
    info["summary"] = (f"{info.get('cpu', '?')} x {info['cpus']} cores, {info.get('mem_gib', '?')} GiB,"
                       f" Linux {info['kernel']}, Python {info['python']}, Redis {info.get('redis')},"
                       f" PostgreSQL {info.get('postgres')}")
    return info


def update_readme(table: str) -> None:
    readme = BENCH / "README.md"
    if not readme.exists():
        return
    text = readme.read_text()
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        readme.write_text(f"{head}{start}\n{table}\n{end}{tail}")


def cleanup_stale() -> None:
    """Remove what an interrupted earlier run of this benchmark left: only cvbench_* / cvbench-*."""
    try:
        n = redis_unlink("*cvbench-*")
        if n:
            log(f"removed {n} stale cvbench Redis keys")
    except Exception as exc:
        log(f"redis: {exc}")
    try:
        with pg_admin() as c:
            for (db,) in c.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE 'cvbench\\_%'"
            ).fetchall():
                pg_drop(db)
    except Exception as exc:
        log(f"postgres: {exc}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 run, 5,000 jobs, 3 s of latency")
    p.add_argument("--only", help="comma-separated systems: " + ",".join(BY_NAME))
    p.add_argument("--skip", help="comma-separated systems to leave out")
    p.add_argument("--reps", type=int)
    p.add_argument("--n", type=int, help="jobs for enqueue and drain (default 20000)")
    p.add_argument("--batch", type=int, default=1000, help="jobs per batch send")
    p.add_argument("--rate", type=float, default=500.0, help="offered rate for latency")
    p.add_argument("--latency-seconds", type=float, help="default 10 (0 skips the latency run)")
    p.add_argument("--step-timeout", type=float, default=300.0)
    p.add_argument("--enqueue-cap", type=float, default=15.0,
                   help="stop timing single sends after this many seconds (the rate is over the"
                   " jobs sent; the rest is sent untimed for the drain); 0 = no cap")
    p.add_argument("--conveyor-job", choices=["sync", "async"], default="sync",
                   help="conveyor's no-op job as a def (thread pool) or an async def")
    p.add_argument("--quiet-wait", type=float, help="seconds to wait for a quiet machine"
                   " before each system (default 15, quick 3)")
    p.add_argument("--quiet-threshold", type=float, default=0.25,
                   help="CPU busy fraction (all cores) counted as quiet")
    p.add_argument("--conveyor-patch", help="experiments only: monkeypatches from"
                   " bench/experiments/patches.py applied to conveyor's processes (never in make bench)")
    p.add_argument("--conveyor-prefetch", type=int, help="experiments only: conveyor worker"
                   " --prefetch (default: conveyor's own)")
    p.add_argument("--no-readme", action="store_true", help="do not rewrite bench/README.md")
    p.add_argument("--core", help="JSON from core_throughput.py to fold into the report")
    a = p.parse_args()
    a.reps = a.reps or (1 if a.quick else 3)
    a.n = a.n or (5000 if a.quick else 20000)
    if a.quiet_wait is None:
        a.quiet_wait = 3.0 if a.quick else 15.0
    if a.latency_seconds is None:
        a.latency_seconds = 3.0 if a.quick else 10.0
    names = [s.name for s in SYSTEMS]
    if a.only:
        names = [x.strip() for x in a.only.split(",") if x.strip()]
        unknown = [x for x in names if x not in BY_NAME]
        if unknown:
            p.error(f"unknown systems {unknown}; known: {', '.join(BY_NAME)}")
    if a.skip:
        names = [x for x in names if x not in {y.strip() for y in a.skip.split(",")}]
    for s in SYSTEMS:
        if s.module == "b_conveyor":
            s.env["BENCH_CONVEYOR_JOB"] = a.conveyor_job
            if a.conveyor_patch:
                s.env["BENCH_CONVEYOR_PATCH"] = a.conveyor_patch
            if a.conveyor_prefetch is not None:
                s.env["BENCH_CONVEYOR_PREFETCH"] = str(a.conveyor_prefetch)

    run_id = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:4]
    started = time.time()
    logs = RESULTS / "logs" / run_id
    logs.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="cvbench-"))
    cleanup_stale()
    info = machine()
    src = source_fingerprint()
    log(f"run {run_id}: {', '.join(names)}; {a.reps} reps, n={a.n}; {info['summary']}")

    # which systems can run at all (a conveyor broker module may not exist yet)
    available: list[Spec] = []
    skipped: dict[str, str] = {}
    versions: dict[str, Any] = {}
    for name in names:
        spec = BY_NAME[name]
        if not VENVS[spec.venv].exists():
            skipped[name] = f"no virtualenv {VENVS[spec.venv]} (run bench/venv.sh)"
            continue
        store = Store(spec, f"cvbench-{run_id}-check", tmp)
        try:
            driver(spec, store, "check", timeout=120)
            available.append(spec)
            if spec.venv not in versions:
                versions[spec.venv] = driver(spec, store, "versions", timeout=60)
        except (StepFailed, subprocess.TimeoutExpired) as exc:
            skipped[name] = str(exc)[:300]
            log(f"skipping {name}: {str(exc)[:200]}")

    raw: dict[str, list[dict[str, Any]]] = {s.name: [] for s in available}
    for rep in range(1, a.reps + 1):
        for spec in available:
            busy = wait_quiet(a.quiet_wait, a.quiet_threshold)
            t0 = time.time()
            log(f"rep {rep}/{a.reps}: {spec.name} (machine {busy:.0%} busy before)")
            r = run_system(spec, rep, a, run_id, tmp, logs)
            r["elapsed_s"] = time.time() - t0
            r["busy_before"] = busy
            raw[spec.name].append(r)
            brief = {k: round(v["rate"]) for k, v in r.items()
                     if isinstance(v, dict) and "rate" in v}
            if "latency" in r:
                brief["p99_ms"] = round(r["latency"]["p99_ms"], 2)
            log(f"  {spec.name} rep {rep}: {brief} ({r['elapsed_s']:.0f}s)")

    med = {name: medians(reps) for name, reps in raw.items()}
    errors = {name: [f"rep {r['rep']} {k}: {v}" for r in reps for k, v in r["errors"].items()]
              for name, reps in raw.items()}
    errors = {k: v for k, v in errors.items() if v}
    for name, why in skipped.items():
        errors.setdefault(name, []).append(f"not run: {why}")
    core = None
    if a.core and Path(a.core).exists():
        core = json.loads(Path(a.core).read_text())
    now = dt.datetime.now(dt.UTC)
    doc = {
        "run_id": run_id, "date": now.strftime("%Y-%m-%d %H:%M UTC"),
        "duration_s": round(time.time() - started), "machine": info, "versions": versions,
        "conveyor_source": src,
        "params": {"reps": a.reps, "n": a.n, "batch": a.batch, "rate": a.rate,
                   "latency_seconds": a.latency_seconds, "concurrency": 8,
                   "enqueue_cap": a.enqueue_cap,
                   "conveyor_job": a.conveyor_job, "conveyor_patch": a.conveyor_patch,
                   "conveyor_prefetch": a.conveyor_prefetch,
                   "quick": a.quick},
        "systems": {s.name: {"module": s.module, "store": s.store, "venv": s.venv, "note": s.note}
                    for s in available},
        "medians": med, "errors": errors, "raw": raw,
    }
    if source_fingerprint().get("src_sha256") != src.get("src_sha256"):
        src["changed_during_run"] = True
        log("warning: conveyor's source changed while the benchmark ran")
    doc["busy_before"] = [r["busy_before"] for reps in raw.values() for r in reps]
    doc["goals"] = goal_checks(med, core)
    table = report(doc)
    if core:
        table += "\n\n" + core_table(core)
    doc["table_md"] = table
    official = not (a.quick or a.only or a.skip or a.conveyor_patch or a.reps < 3 or a.n != 20000
                    or a.conveyor_prefetch is not None
                    or a.conveyor_job != "sync")
    folder = RESULTS if official else RESULTS / "scratch"  # partial runs: not committed
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"run-{run_id}.json"
    out.write_text(json.dumps(doc, indent=1))
    if official and not a.no_readme:
        shutil.copy(out, RESULTS / "latest-run.json")
        update_readme(table)
    shutil.rmtree(tmp, ignore_errors=True)
    print(table)
    log(f"wrote {out.relative_to(ROOT)} in {doc['duration_s']} s")


if __name__ == "__main__":
    main()
