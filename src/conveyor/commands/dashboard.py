"""``conveyor dashboard APP``: the web dashboard (needs ``pip install 'conveyor[dashboard]'``)."""

from __future__ import annotations

import asyncio
import signal

import click

from ..cli import APP_HELP, load_app


@click.command(epilog=APP_HELP)
@click.argument("app_path", metavar="APP")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port.")
@click.option(
    "--token",
    envvar="CONVEYOR_DASHBOARD_TOKEN",
    show_envvar=True,
    help="Access token (16+ characters); default: a new random one, printed at start-up.",
)
@click.option(
    "--trace-url",
    metavar="TEMPLATE",
    help="Link trace ids to your tracing UI, e.g. 'http://jaeger:16686/trace/{trace_id}'.",
)
@click.option("--metrics", is_flag=True, help="Also serve Prometheus /metrics (needs the token too).")
@click.option(
    "--log-level", default="warning", show_default=True, type=click.Choice(["debug", "info", "warning", "error"])
)
def dashboard(
    app_path: str, host: str, port: int, token: str | None, trace_url: str | None, metrics: bool, log_level: str
) -> None:
    """Serve the web dashboard of APP until Ctrl-C."""
    try:
        from ..dashboard.server import DashboardServer
    except ImportError as exc:
        raise click.ClickException(f"the dashboard needs its extra: pip install 'conveyor[dashboard]' ({exc})") from exc
    app = load_app(app_path)
    server = DashboardServer(
        app, host=host, port=port, token=token, trace_url=trace_url, metrics=metrics, close_app=True,
        log_level=log_level,
    )  # fmt: skip

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            url = await server.start()
        except OSError as exc:
            raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        click.echo(f"conveyor dashboard for {app_path}: {url}", err=True)
        if server.generated_token:
            click.echo("(a new token was generated; set CONVEYOR_DASHBOARD_TOKEN or --token to keep one)", err=True)
        if host not in ("127.0.0.1", "localhost", "::1"):
            click.echo(f"warning: listening on {host}, reachable beyond this machine; use HTTPS in front", err=True)
        await server.serve_until(stop)

    try:
        asyncio.run(run())
    finally:
        app.close()


def register(group: click.Group) -> None:
    group.add_command(dashboard)
