"""Telemetry overhead: no-op async jobs on the memory broker through one worker.

    .venv/bin/python bench/telemetry_overhead.py [--jobs 20000] [--runs 7] [--concurrency 8]

Each run enqueues ``--jobs`` no-op async jobs (not timed) and times one burst
worker draining them. Configurations, interleaved run by run so machine noise
spreads evenly, are reported as median jobs per wall-clock second and per CPU
second of this process (the latter is robust to other load on the machine), and
as ratios to ``off``:

* ``off``: no telemetry.
* ``metrics``: the standard Prometheus metric set only.
* ``metrics+logs``: plus the signal log sink, JSON lines to a file (INFO: one
  ``job.completed`` line per job).
* ``traces``: a process span per job (the tracing middleware), OpenTelemetry
  SDK with a BatchSpanProcessor and a no-op exporter, every span sampled.
* ``all``: metrics, JSON logs and traces together: what ``Telemetry()`` turns on.
* ``all+job_span``: plus a ``job_processing`` span built from signals (as in
  examples/worker_observability), a second span per job.
* ``all@10%``: ``all`` with spans sampled at 10% (``ParentBased(TraceIdRatioBased)``).

``--job-ms`` gives every job that many milliseconds of CPU work, to see the
overhead against jobs that do something. Like ``conveyor worker``, each run
freezes the objects alive at start (``gc.freeze()``).
"""

from __future__ import annotations

import argparse
import gc
import logging
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from conveyor import App
from conveyor import signals as sig
from conveyor.telemetry import JobContextFilter, JsonFormatter, Logs, Span, Telemetry
from conveyor.testing import run_until_idle


class NoopExporter(SpanExporter):
    """Accepts spans and drops them."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class Setup:
    """One configuration's app plus what must be shut down after the run."""

    def __init__(self, name: str, log_dir: Path, *, metrics: bool, logs: bool, traces: bool,
                 sample: float = 1.0, job_span: bool = False) -> None:
        self.name = name
        self.provider: TracerProvider | None = None
        self.handler: logging.Handler | None = None
        if not (metrics or logs or traces):
            self.app = App("memory://")
            return
        if traces:
            sampler = ParentBased(TraceIdRatioBased(sample))
            self.provider = TracerProvider(sampler=sampler)
            self.provider.add_span_processor(BatchSpanProcessor(NoopExporter()))
        if logs:
            self.handler = logging.FileHandler(log_dir / f"{name}.jsonl")
            self.handler.setFormatter(JsonFormatter())
            self.handler.addFilter(JobContextFilter())
            root = logging.getLogger()
            root.addHandler(self.handler)
            root.setLevel(logging.INFO)
        telemetry = Telemetry(
            metrics=None if metrics else [],
            logs=Logs() if logs else None,
            tracing=traces,
            tracer_provider=self.provider,
            traces=[Span(sig.JOB_STARTED, [sig.JOB_COMPLETED, sig.JOB_FAILED], "job_id",
                         name="job_processing")] if job_span else [],
        )
        self.app = App("memory://", telemetry=telemetry)

    def close(self) -> None:
        self.app.close()
        if self.provider is not None:
            self.provider.shutdown()
        if self.handler is not None:
            logging.getLogger().removeHandler(self.handler)
            self.handler.close()


CONFIGS: dict[str, dict[str, Any]] = {
    "off": {"metrics": False, "logs": False, "traces": False},
    "metrics": {"metrics": True, "logs": False, "traces": False},
    "metrics+logs": {"metrics": True, "logs": True, "traces": False},
    "traces": {"metrics": False, "logs": False, "traces": True},
    "all": {"metrics": True, "logs": True, "traces": True},
    "all+job_span": {"metrics": True, "logs": True, "traces": True, "job_span": True},
    "all@10%": {"metrics": True, "logs": True, "traces": True, "sample": 0.1},
}


def one_run(name: str, jobs: int, concurrency: int, log_dir: Path, job_ms: float = 0.0) -> tuple[float, float]:
    """Jobs per wall-clock second and per CPU second of one burst worker draining ``jobs``."""
    setup = Setup(name, log_dir, **CONFIGS[name])
    app = setup.app
    work = job_ms / 1000

    @app.job(name="noop")
    async def noop(i: int) -> None:
        if work:
            until = time.process_time() + work
            while time.process_time() < until:
                pass

    try:
        for start in range(0, jobs, 1000):
            app.send_batch([noop.message(i) for i in range(start, min(start + 1000, jobs))])
        gc.collect()
        gc.freeze()
        t0, c0 = time.perf_counter(), time.process_time()
        result = run_until_idle(app, concurrency=concurrency)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        gc.unfreeze()
        assert result.counters.completed == jobs, result
    finally:
        setup.close()
    return jobs / elapsed, jobs / cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--job-ms", type=float, default=0.0, help="CPU milliseconds of work per job")
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help=f"comma-separated, from {', '.join(CONFIGS)}")
    args = parser.parse_args()
    names = [n for n in args.configs.split(",") if n]
    if "off" not in names:
        names.insert(0, "off")
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        for n in names:  # warm-up: imports, first-use caches
            one_run(n, min(2000, args.jobs), args.concurrency, Path(tmp), args.job_ms)
        for run in range(args.runs):
            for n in rotate(names, run):
                w, c = one_run(n, args.jobs, args.concurrency, Path(tmp), args.job_ms)
                wall[n].append(w)
                cpu[n].append(c)
    kind = f"{args.job_ms:g} ms CPU" if args.job_ms else "no-op"
    print(f"{args.jobs} {kind} async jobs, memory broker, one worker at concurrency "
          f"{args.concurrency}, {args.runs} runs each (medians)")
    report("jobs per wall-clock second", wall)
    report("jobs per CPU second (this process; robust to other load on the machine)", cpu)


def rotate(names: list[str], k: int) -> list[str]:
    k %= len(names)
    return names[k:] + names[:k]


def report(title: str, results: dict[str, list[float]]) -> None:
    """Median jobs/s per config, the ratio to ``off`` and the added microseconds per job."""
    base = statistics.median(results["off"])
    print(f"\n{title}")
    print(f"{'config':<14}{'median':>10}{'min':>10}{'max':>10}{'ratio':>8}{'us/job':>9}{'added':>8}")
    for name, values in results.items():
        med = statistics.median(values)
        per_job, added = 1e6 / med, 1e6 / med - 1e6 / base
        print(f"{name:<14}{med:>10,.0f}{min(values):>10,.0f}{max(values):>10,.0f}"
              f"{med / base:>8.2f}{per_job:>9.1f}{added:>+8.1f}")


if __name__ == "__main__":
    main()
