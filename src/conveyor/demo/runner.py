"""Runs the demo: a producer, a worker and a live view, all in one process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import shlex
import signal
import sys
import time
from collections import deque
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from .. import signals as sig
from ..app import App
from ..brokers import QueueStats
from ..signals import Event
from ..worker import Worker, WorkerConfig
from .jobs import DEFAULT_URL, URL_ENV, make_app


class Tally:
    """Counts signals for the live view; a sink, so it only observes."""

    def __init__(self) -> None:
        self.counts = {"enqueued": 0, "completed": 0, "failed": 0, "retrying": 0, "dead": 0}
        self.done_times: deque[float] = deque()
        self.dead_reasons: dict[str, int] = {}

    def __call__(self, event: Event) -> None:
        key = event.name.split(".", 1)[1]
        self.counts[key] = self.counts.get(key, 0) + 1
        if event.name == "job.completed":
            self.done_times.append(event.timestamp)
        elif event.name == "job.dead":
            reason = event.attrs["reason"]
            self.dead_reasons[reason] = self.dead_reasons.get(reason, 0) + 1

    def throughput(self, window: float = 5.0) -> float:
        cutoff = time.time() - window
        while self.done_times and self.done_times[0] < cutoff:
            self.done_times.popleft()
        return len(self.done_times) / window


async def produce(app: App, stop: asyncio.Event) -> None:
    """Send a mixed workload in bursts until ``stop``."""
    send_email, build_report, process_data = app.demo_jobs  # type: ignore[attr-defined]
    n = 0
    while not stop.is_set():
        batch = []
        for _ in range(random.randint(5, 25)):
            n += 1
            kind = random.random()
            if kind < 0.5:
                batch.append(send_email.message(f"user{n}@example.com", "Welcome!"))
            elif kind < 0.7:
                opts = build_report.options(priority=5) if n % 10 == 0 else build_report
                batch.append(opts.message(n, random.randint(1000, 20000)))
            elif kind < 0.95:
                batch.append(process_data.message(n, random.randint(100, 5000)))
            else:
                batch.append(
                    send_email.options(delay=random.uniform(1, 5)).message(
                        f"user{n}@example.com", "Your trial ends soon"
                    )
                )
        await app.send_jobs_async(batch)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), random.uniform(0.2, 0.6))


def view(stats: dict[str, QueueStats], tally: Tally, started: float, remaining: float | None) -> Group:
    queues = Table(title="queues", expand=False)
    for col in ("queue", "ready", "delayed", "in flight", "dead", "oldest (s)"):
        queues.add_column(col, justify="left" if col == "queue" else "right")
    for name, s in stats.items():
        queues.add_row(name, str(s.ready), str(s.delayed), str(s.in_flight), str(s.dead), f"{s.oldest_age_s:.1f}")
    c = tally.counts
    left = "until Ctrl-C" if remaining is None else f"{max(remaining, 0):.0f}s left"
    totals = (
        f"[bold]enqueued[/] {c['enqueued']}   [green]completed[/] {c['completed']}   "
        f"[yellow]failed attempts[/] {c['failed']}   [cyan]retries[/] {c['retrying']}   "
        f"[red]dead[/] {c['dead']}\n"
        f"throughput {tally.throughput():.1f} jobs/s   running {time.time() - started:.0f}s ({left})"
    )
    return Group(queues, Panel(totals, title="conveyor demo"))


def summary(stats: dict[str, QueueStats], tally: Tally, elapsed: float) -> Group:
    c = tally.counts
    table = Table(title="summary")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in (
        ("elapsed (s)", f"{elapsed:.1f}"),
        ("jobs enqueued", c["enqueued"]),
        ("jobs completed", c["completed"]),
        ("failed attempts", c["failed"]),
        ("retries scheduled", c["retrying"]),
        ("dead letters", c["dead"]),
        ("mean throughput (jobs/s)", f"{c['completed'] / max(elapsed, 1e-9):.1f}"),
    ):
        table.add_row(name, str(value))
    for reason, n in sorted(tally.dead_reasons.items()):
        table.add_row(f"  dead: {reason}", str(n))
    left = sum(s.ready + s.delayed + s.in_flight for s in stats.values())
    table.add_row("left in queues (kept in the database)", str(left))
    return Group(table)


def inspect_hint(url: str) -> str:
    """The closing lines: how to look at the demo's database (``url``) afterwards."""
    env = "" if url == DEFAULT_URL else f"{URL_ENV}={shlex.quote(url)} "
    return (
        "The database is kept until the next run. Inspect it with\n"
        f"  {env}conveyor stats conveyor.demo.app:app\n"
        f"  {env}conveyor dlq list conveyor.demo.app:app"
    )


def port_hint(port: int, error: OSError) -> str:
    """What the demo says when it cannot serve the dashboard on ``port``."""
    other = 8001 if port == 8000 else 8000
    return (
        f"dashboard: cannot listen on port {port}: {error.strerror or error}. The demo runs without it;"
        f" choose another port with `conveyor demo --dashboard-port {other}` (`make demo PORT={other}`),"
        " or 0 for any free port."
    )


def run_demo(db: str, duration: float | None, concurrency: int, dashboard_port: int | None = 8000) -> None:
    """Run the demo for ``duration`` seconds (None: until Ctrl-C), serving the dashboard
    on ``dashboard_port`` (None: no dashboard)."""
    logging.basicConfig(level=logging.ERROR)
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(db + suffix)
    url = f"sqlite:///{db}"
    app = make_app(url)
    tally = Tally()
    app.bus.subscribe(tally, [sig.JOB_ENQUEUED, sig.JOB_COMPLETED, sig.JOB_FAILED, sig.JOB_RETRYING, sig.JOB_DEAD])
    console = Console()
    console.print(f"[bold]conveyor demo[/]: broker {url}, concurrency {concurrency}. Ctrl-C stops it gracefully.")
    asyncio.run(_main(app, tally, console, duration, concurrency, dashboard_port))
    console.print(inspect_hint(url), markup=False, highlight=False, soft_wrap=True)


async def _start_dashboard(app: App, console: Console, port: int) -> Any:
    try:
        from ..dashboard import DashboardServer
    except ImportError:
        console.print("dashboard: not installed (pip install 'conveyor[dashboard]')", markup=False)
        return None
    server = DashboardServer(app, port=port)
    try:
        url = await server.start()
    except OSError as exc:
        console.print(port_hint(port, exc), markup=False, highlight=False, soft_wrap=True)
        return None
    console.print(f"[bold]dashboard[/]: {url}")
    return server


async def _main(
    app: App, tally: Tally, console: Console, duration: float | None, concurrency: int, dashboard_port: int | None
) -> None:
    worker = Worker(
        app, WorkerConfig(concurrency=concurrency, shutdown_timeout=5.0, stats_interval=1.0, poll_interval=0.2)
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    dashboard = None if dashboard_port is None else await _start_dashboard(app, console, dashboard_port)
    started = time.time()
    producer = asyncio.create_task(produce(app, stop))
    running = asyncio.create_task(worker.run())
    broker = await app.broker()
    stats: dict[str, Any] = {}
    last_plain = 0.0
    with Live(console=console, refresh_per_second=4, transient=False) as live:
        while not stop.is_set():
            stats = await broker.stats(worker.queues)
            remaining = None if duration is None else duration - (time.time() - started)
            live.update(view(stats, tally, started, remaining))
            if not console.is_terminal and time.time() - last_plain >= 5:
                last_plain = time.time()
                c = tally.counts
                print(
                    f"[{time.time() - started:4.0f}s] completed={c['completed']} "
                    f"retries={c['retrying']} dead={c['dead']} "
                    f"throughput={tally.throughput():.1f}/s",
                    file=sys.stderr,
                    flush=True,
                )
            if remaining is not None and remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
    stop.set()
    await producer
    worker.request_stop("demo_finished")
    await running
    if dashboard is not None:
        await dashboard.stop()
    stats = await (await app.broker()).stats(worker.queues)
    console.print()
    console.print(summary(stats, tally, time.time() - started))
