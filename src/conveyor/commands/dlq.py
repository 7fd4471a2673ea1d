"""``conveyor dlq list|retry|purge``: inspect, retry and purge dead letters."""

from __future__ import annotations

import json

import click

from ..brokers import Selector
from ..cli import APP_HELP, load_app


def register(group: click.Group) -> None:
    group.add_command(dlq)


@click.group()
def dlq() -> None:
    """Inspect, retry and purge dead letters."""


@dlq.command("list", epilog=APP_HELP)
@click.argument("app_path", metavar="APP")
@click.option("--queue", help="Only this queue.")
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def dlq_list(app_path: str, queue: str | None, limit: int, as_json: bool) -> None:
    """List dead letters with their reason and last error."""
    from ..render import dead_letter_dict, dlq_table

    app = load_app(app_path)
    try:
        letters = app.dlq_list(queue, limit)
    finally:
        app.close()
    if as_json:
        click.echo(json.dumps([dead_letter_dict(d) for d in letters], indent=2))
    else:
        dlq_table(letters)


def _selector(ids: tuple[str, ...], all_: bool, queue: str | None) -> Selector:
    if all_ == bool(ids):
        raise click.UsageError("pass --all or one or more JOB_IDs (not both)")
    if queue and not all_:
        raise click.UsageError("--queue goes with --all")
    return Selector(ids=ids, all=all_, queue=queue)


@dlq.command("retry", epilog=APP_HELP)
@click.argument("app_path", metavar="APP")
@click.argument("job_ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every dead letter (of --queue, if given).")
@click.option("--queue", help="With --all: only this queue.")
@click.option(
    "--cluster",
    metavar="FINGERPRINT",
    help="The dead jobs whose last failure is in this cluster (see `conveyor failures`; needs History).",
)
def dlq_retry(app_path: str, job_ids: tuple[str, ...], all_: bool, queue: str | None, cluster: str | None) -> None:
    """Send dead letters back to their queues with fresh attempts."""
    from ..history import HistoryNotInstalled, history_of

    if cluster is not None and (job_ids or all_ or queue):
        raise click.UsageError("--cluster goes alone: no --all, --queue or JOB_IDs with it")
    selector = None if cluster is not None else _selector(job_ids, all_, queue)
    app = load_app(app_path)
    try:
        try:
            history = history_of(app)
        except HistoryNotInstalled:
            if cluster is not None:
                raise
            history = None
        if cluster is not None:
            assert history is not None
            ids = history.store.dead_jobs_in_cluster(cluster)
            if not ids:
                raise click.ClickException(f"no dead job of cluster {cluster!r} in the history")
            job_ids = tuple(ids)
            selector = Selector(ids=job_ids)
        assert selector is not None
        n = app.dlq_retry(selector)
        if history is not None and job_ids and n:
            history.record_manual_retry(job_ids)
    finally:
        app.close()
    click.echo(f"retried {n} dead letter{'s' if n != 1 else ''}" + (f" of cluster {cluster}" if cluster else ""))
    if job_ids and n < len(set(job_ids)):
        raise click.ClickException(f"{len(set(job_ids)) - n} of the given ids are not in the DLQ")


@dlq.command("purge", epilog=APP_HELP)
@click.argument("app_path", metavar="APP")
@click.argument("job_ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every dead letter (of --queue, if given).")
@click.option("--queue", help="With --all: only this queue.")
def dlq_purge(app_path: str, job_ids: tuple[str, ...], all_: bool, queue: str | None) -> None:
    """Delete dead letters for good."""
    selector = _selector(job_ids, all_, queue)
    app = load_app(app_path)
    try:
        n = app.dlq_purge(selector)
    finally:
        app.close()
    click.echo(f"purged {n} dead letter{'s' if n != 1 else ''}")
    if job_ids and n < len(set(job_ids)):
        raise click.ClickException(f"{len(set(job_ids)) - n} of the given ids are not in the DLQ")
