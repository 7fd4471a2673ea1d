"""``conveyor health APP`` (a probe) and ``conveyor monitor APP`` (the standalone health monitor)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import signal
import sys
from typing import TYPE_CHECKING

import click

from ..cli import APP_HELP, load_app
from ..monitor.alerts import CRITICAL, WARNING, AlertManager, AlertSink
from ..monitor.config import MonitorConfig
from ..monitor.extension import monitor_of
from ..monitor.health import HealthMonitor, HealthReport, check_health, monitor_loop, standalone_owner
from ..monitor.sinks import BusSink, JsonLinesSink, LogSink, WebhookSink

if TYPE_CHECKING:
    from ..app import App

EXIT_UNHEALTHY = 1


def _config(app: App, interval: float | None = None) -> MonitorConfig:
    found = monitor_of(app)
    config = found.config if found is not None else MonitorConfig()
    if interval is not None:
        ttl = config.lock_ttl if config.lock_ttl is not None and config.lock_ttl > interval else None
        config = dataclasses.replace(config, interval=interval, lock_ttl=ttl)
    return config


def _close(app: App) -> None:
    from ..history.extension import HistoryNotInstalled, history_of

    with contextlib.suppress(HistoryNotInstalled):
        history_of(app).close()
    found = monitor_of(app)
    if found is not None:
        found.close()
    app.close()


def _print(report: HealthReport, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    from ..monitor.render import report_tables

    report_tables(report)


def _exit_code(report: HealthReport, fail_on: str) -> int:
    bad = {CRITICAL} if fail_on == CRITICAL else {CRITICAL, WARNING}
    return EXIT_UNHEALTHY if report.status in bad else 0


@click.command(epilog=APP_HELP)
@click.argument("app_path", metavar="APP")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--fail-on",
    type=click.Choice([CRITICAL, WARNING]),
    default=CRITICAL,
    show_default=True,
    help="Exit 1 when any check is at least this bad.",
)
def health(app_path: str, as_json: bool, fail_on: str) -> None:
    """Print the status of every check and the queue forecasts; exit 1 when a check is critical.

    Usable as a liveness/readiness probe. Thresholds come from the app's Monitor
    extension (or the defaults); trend checks need samples and report ok here.
    """
    app = load_app(app_path)
    try:
        config = _config(app)
        report: HealthReport = app.run(lambda _broker: check_health(app, config))
    finally:
        _close(app)
    _print(report, as_json)
    sys.exit(_exit_code(report, fail_on))


@click.command(epilog=APP_HELP)
@click.argument("app_path", metavar="APP")
@click.option("--interval", type=click.FloatRange(min=0.1), help="Seconds between evaluations; default: the config's.")
@click.option("--once", is_flag=True, help="Evaluate once, send alerts, print the report and exit (1 if critical).")
@click.option("--webhook", "webhooks", multiple=True, metavar="URL", help="Also POST alerts here (repeatable).")
@click.option("--alert-log", type=click.Path(dir_okay=False), help="Also append alerts to this JSON-lines file.")
@click.option("--json", "as_json", is_flag=True, help="With --once: print the report as JSON.")
@click.option(
    "--log-level", default="INFO", show_default=True, type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"])
)
def monitor(
    app_path: str,
    interval: float | None,
    once: bool,
    webhooks: tuple[str, ...],
    alert_log: str | None,
    as_json: bool,
    log_level: str,
) -> None:
    """Run the health monitor outside workers until SIGTERM/SIGINT.

    It takes the same leader lock as the monitor inside workers, so only one of
    them evaluates and alerts at a time.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = load_app(app_path)
    found = monitor_of(app)
    config = _config(app, interval)
    extra: list[AlertSink] = [WebhookSink(url) for url in webhooks]
    if alert_log:
        extra.append(JsonLinesSink(alert_log))
    if found is not None:
        alerts = found.alerts
        for sink in extra:
            alerts.add_sink(sink)
    else:
        alerts = AlertManager([LogSink(), BusSink(app.bus), *extra], cooldown=config.cooldown)
    health_monitor = HealthMonitor(app, config, alerts)
    try:
        if once:
            report: HealthReport = app.run(lambda _broker: health_monitor.evaluate(alert=True))
            _print(report, as_json)
            code = _exit_code(report, CRITICAL)
        else:
            asyncio.run(_forever(health_monitor))
            code = 0
    finally:
        if found is None:
            alerts.close()
        _close(app)
    sys.exit(code)


async def _forever(health_monitor: HealthMonitor) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    owner = standalone_owner()
    interval = health_monitor.config.interval
    logging.getLogger("conveyor.monitor").info("monitor %s: evaluating every %gs", owner, interval)
    task = asyncio.create_task(monitor_loop(health_monitor, owner))
    await stop.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await health_monitor.app.aclose()


def register(group: click.Group) -> None:
    """Add ``health`` and ``monitor`` to the ``conveyor`` command group."""
    group.add_command(health)
    group.add_command(monitor)
