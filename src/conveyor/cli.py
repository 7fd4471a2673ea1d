"""The ``conveyor`` command line."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import json
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

import click

from .app import App
from .errors import ConveyorError, ServiceUnavailable
from .worker import Worker, WorkerConfig, WorkerResult
from .worker.cancel import cancel_all

T = TypeVar("T")

#: Seconds :func:`run_to_end` gives tasks still running when the worker has returned.
LEFT_TASKS_TIMEOUT = 1.0

APP_HELP = "APP is module:attribute, e.g. myproject.tasks:app (importable from the current directory)."

#: Exit codes: 0 done, 1 an error (bad APP, configuration, unknown job; ``health``: unhealthy),
#: 2 a usage error (click's), 69 a service that cannot be reached (EX_UNAVAILABLE in sysexits.h).
EXIT_UNAVAILABLE = 69


class Unavailable(click.ClickException):
    """A broker or history database that cannot be reached: one line, exit code 69."""

    exit_code = EXIT_UNAVAILABLE


def load_app(path: str) -> App:
    """Import ``module:attribute`` and return the :class:`App` it names."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise click.UsageError(f"APP must look like module:attribute, got {path!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise click.ClickException(f"cannot import module {module_name!r} (APP {path!r})") from exc
        raise click.ClickException(f"importing {module_name!r} failed: {exc}") from exc
    except ConveyorError as exc:
        raise click.ClickException(f"{module_name}: {exc}") from exc
    except Exception as exc:
        raise click.ClickException(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from exc
    app = module
    for part in attr.split("."):
        try:
            app = getattr(app, part)
        except AttributeError:
            raise click.ClickException(f"module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(app, App):
        raise click.ClickException(f"{path} is a {type(app).__name__}, not a conveyor.App")
    return app


def _json_arg(text: str | None, kind: type, what: str) -> Any:
    if text is None:
        return kind()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON ({exc.msg} at column {exc.colno})", param_hint=what) from None
    if not isinstance(value, kind):
        raise click.BadParameter(f"must be a JSON {'list' if kind is list else 'object'}", param_hint=what)
    return value


class _Group(click.Group):
    """Turns conveyor's own errors into one line and a non-zero exit, and loads
    the subcommands of :mod:`conveyor.commands` on first use."""

    _loaded = False

    def _load(self) -> None:
        if _Group._loaded:
            return
        _Group._loaded = True
        import pkgutil

        from . import commands

        for info in pkgutil.iter_modules(commands.__path__):
            importlib.import_module(f"{commands.__name__}.{info.name}").register(self)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self._load()
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ServiceUnavailable as exc:
            raise Unavailable(str(exc)) from exc
        except (ConveyorError, ValueError) as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=_Group, help="conveyor: background jobs in which every job is observable.")
@click.version_option(package_name="conveyor")
def main() -> None:
    pass


@main.command(epilog=APP_HELP)
@click.argument("app_path", metavar="APP")
@click.option(
    "-q", "--queue", "queues", multiple=True, help="Queue to consume (repeatable); default: the app's queues."
)
@click.option("-c", "--concurrency", default=8, show_default=True, type=click.IntRange(min=1), help="Jobs run at once.")
@click.option("--prefetch", type=click.IntRange(min=0), help="Extra jobs leased ahead; default: concurrency.")
@click.option("--burst", is_flag=True, help="Exit once no ready job and no retry of this worker remains.")
@click.option(
    "--shutdown-timeout",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds running jobs get to finish on SIGTERM/SIGINT.",
)
@click.option(
    "--visibility-timeout",
    default=60.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Lease length; heartbeats renew it.",
)
@click.option(
    "--poll-interval",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0.001),
    help="Longest wait between polls when idle.",
)
@click.option(
    "--log-level", default="INFO", show_default=True, type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"])
)
@click.option(
    "--log-format",
    default="text",
    show_default=True,
    type=click.Choice(["text", "json"]),
    help="json: one object per line, with job context.",
)
@click.option("--metrics-port", type=click.IntRange(0, 65535), help="Serve Prometheus /metrics on this port.")
@click.option("--metrics-host", default="127.0.0.1", show_default=True, help="Address for --metrics-port.")
@click.option(
    "--processes", default=1, show_default=True, type=click.IntRange(min=1), help="Worker processes to supervise."
)
def worker(
    app_path: str,
    queues: tuple[str, ...],
    concurrency: int,
    prefetch: int | None,
    burst: bool,
    shutdown_timeout: float,
    visibility_timeout: float,
    poll_interval: float,
    log_level: str,
    log_format: str,
    metrics_port: int | None,
    metrics_host: str,
    processes: int,
) -> None:
    """Run a worker until SIGTERM/SIGINT (twice to requeue running jobs and exit at once)."""
    if processes > 1:
        _supervise(app_path, processes, burst, log_level, metrics_host, metrics_port)
        return
    app = load_app(app_path)
    if log_format == "json" or metrics_port is not None or os.environ.get("CONVEYOR_METRICS_MULTIPROC"):
        from .telemetry.cli import setup_worker_telemetry

        setup_worker_telemetry(
            app, log_format=log_format, log_level=log_level, metrics_host=metrics_host, metrics_port=metrics_port
        )
    elif not logging.getLogger().handlers:
        logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = WorkerConfig(
        queues=queues,
        concurrency=concurrency,
        prefetch=prefetch,
        burst=burst,
        shutdown_timeout=shutdown_timeout,
        visibility_timeout=visibility_timeout,
        poll_interval=poll_interval,
    )
    result = run_worker(app, config)
    c = result.counters
    extra = "".join(
        f", {n} {what}"
        for n, what in ((c.ack_refused, "acks refused (lease lost)"), (result.abandoned, "requeued at shutdown"))
        if n
    )
    click.echo(
        f"worker {result.worker_id} stopped ({result.reason}): {c.completed} completed,"
        f" {c.failed} failed attempts, {c.retried} retried, {c.dead} dead{extra}",
        err=True,
    )


def _supervise(
    app_path: str, processes: int, burst: bool, log_level: str, metrics_host: str, metrics_port: int | None
) -> None:
    from .supervisor import Supervisor, child_argv, without_option

    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = load_app(app_path)  # fail here, once, on a bad APP or an unreachable broker rather than in every child
    try:
        app.run(_connected)
    finally:
        app.close()
    argv = child_argv(sys.argv[1:])
    env = dict(os.environ)
    if metrics_port is not None:
        from .telemetry.cli import prepare_multiprocess_metrics

        argv = without_option(argv, "--metrics-port")
        prepare_multiprocess_metrics(env, metrics_host, metrics_port)
    status = Supervisor(argv, processes, burst=burst, env=env).run()
    raise SystemExit(status)


async def _connected(broker: Any) -> None:
    """Nothing: ``app.run`` has connected to the broker (or raised ``BrokerUnavailable``)."""


def run_worker(app: App, config: WorkerConfig) -> WorkerResult:
    """Run ``Worker(app, config)`` with SIGINT/SIGTERM wired to graceful, then forced, stop."""

    # Everything alive now (modules, the app) lives as long as the process: keep the
    # cyclic garbage collector from scanning it again and again.
    gc.collect()
    gc.freeze()

    async def go() -> WorkerResult:
        w = Worker(app, config)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, w.request_stop, signal.Signals(signum).name)
        try:
            return await w.run()
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)

    return run_to_end(go())


def run_to_end(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coro)``, except that a task ignoring cancellation cannot keep the process alive.

    ``asyncio.run`` cancels the tasks left at the end and waits for them without
    limit; here they get :data:`LEFT_TASKS_TIMEOUT` seconds (the worker has already
    re-cancelled its own for a while), then the loop's async generators (the app's
    connections) and executor are shut down as usual and the loop is closed.
    """
    loop = asyncio.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        result = loop.run_until_complete(coro)
        loop.run_until_complete(cancel_all(asyncio.all_tasks(loop), LEFT_TASKS_TIMEOUT))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        return result
    finally:
        asyncio.set_event_loop(None)
        loop.close()


@main.command(epilog=APP_HELP)
@click.argument("app_path", metavar="APP")
@click.argument("job")
@click.option("--args", "args_json", metavar="JSON_LIST", help="Positional arguments, e.g. '[1, \"a\"]'.")
@click.option("--kwargs", "kwargs_json", metavar="JSON_OBJECT", help='Keyword arguments, e.g. \'{"to": "a@b"}\'.')
@click.option("--delay", type=click.FloatRange(min=0), help="Seconds before the job is due.")
@click.option("--queue", help="Queue to send to; default: the job's.")
@click.option("--priority", type=int, help="Higher runs first; default: the job's.")
def enqueue(
    app_path: str,
    job: str,
    args_json: str | None,
    kwargs_json: str | None,
    delay: float | None,
    queue: str | None,
    priority: int | None,
) -> None:
    """Send one JOB and print its id."""
    args = _json_arg(args_json, list, "--args")
    kwargs = _json_arg(kwargs_json, dict, "--kwargs")
    app = load_app(app_path)
    try:
        built = app.message(job, args, kwargs, delay=delay, queue=queue, priority=priority)
        [job_id] = app.send_jobs([built])
    finally:
        app.close()
    click.echo(job_id)


@main.command(epilog=APP_HELP)
@click.argument("app_path", metavar="APP")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object keyed by queue.")
def stats(app_path: str, as_json: bool) -> None:
    """Show ready, delayed, in-flight and dead counts per queue, and its live consumers.

    Live consumers come from the worker registry of the History extension;
    without it they are shown as unknown.
    """
    from .brokers.display import display_url
    from .history import HistoryNotInstalled, HistoryUnavailable, history_of, live_consumers

    app = load_app(app_path)
    consumers: dict[str, int] | None = None
    unknown_because = ""
    try:
        found = app.stats()
        try:
            consumers = live_consumers(app, found)
        except HistoryNotInstalled:
            unknown_because = "the worker registry needs App(..., extensions=[conveyor.history.History()])"
        except HistoryUnavailable as exc:
            unknown_because = str(exc)
    finally:
        app.close()
        with contextlib.suppress(HistoryNotInstalled):
            history_of(app).close()
    if as_json:
        data = {q: {**s.to_dict(), "consumers": None if consumers is None else consumers[q]} for q, s in found.items()}
        click.echo(json.dumps(data, indent=2))
        return
    from .render import stats_table

    stats_table(found, consumers=consumers, unknown_because=unknown_because, broker=display_url(app.url))


@main.command(epilog=APP_HELP)
@click.argument("app_path", metavar="APP")
def migrate(app_path: str) -> None:
    """Create or upgrade the broker's schema (PostgreSQL; a no-op elsewhere)."""
    app = load_app(app_path)

    async def go(broker: Any) -> bool:
        step = getattr(broker, "migrate", None)
        if step is None:
            return False
        await step()
        return True

    try:
        done = app.run(go)
    finally:
        app.close()
    click.echo("schema is up to date" if done else f"nothing to migrate for {app.url.split(':')[0]}")


@main.command()
@click.option("--duration", default=60.0, show_default=True, type=click.FloatRange(min=1), help="Seconds to run.")
@click.option("--forever", is_flag=True, help="Run until Ctrl-C.")
@click.option("--db", default="conveyor-demo.db", show_default=True, help="SQLite file to use.")
@click.option("--concurrency", default=8, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--dashboard-port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="0: any free port."
)
@click.option("--no-dashboard", is_flag=True, help="Do not serve the dashboard.")
def demo(duration: float, forever: bool, db: str, concurrency: int, dashboard_port: int, no_dashboard: bool) -> None:
    """Run a live demo: a mixed workload on a local SQLite file, with progress and the dashboard."""
    from .demo.runner import run_demo

    run_demo(
        db=db,
        duration=None if forever else duration,
        concurrency=concurrency,
        dashboard_port=None if no_dashboard else dashboard_port,
    )


if __name__ == "__main__":
    main()
