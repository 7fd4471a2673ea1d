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
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(min=1), help="Most letters shown.")
@click.option("--after", metavar="CURSOR", help="Start after this cursor (printed when there are more).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def dlq_list(app_path: str, queue: str | None, limit: int, after: str | None, as_json: bool) -> None:
    """List dead letters, oldest first, with their whole id, reason and last error."""
    from ..render import dead_letter_dict, dlq_table

    app = load_app(app_path)
    try:
        page = app.dlq_page(queue, limit, after)
    finally:
        app.close()
    if as_json:
        click.echo(json.dumps([dead_letter_dict(d) for d in page.letters], indent=2))
    else:
        dlq_table(page.letters)
    if page.next is not None:
        click.echo(f"more dead letters: conveyor dlq list {app_path} --after {page.next}", err=True)


def _selector(ids: tuple[str, ...], all_: bool, queue: str | None) -> Selector:
    if all_ == bool(ids):
        raise click.UsageError("pass --all or one or more JOB_IDs (not both)")
    if queue and not all_:
        raise click.UsageError("--queue goes with --all")
    return Selector(ids=ids, all=all_, queue=queue)


def _count(n: int) -> str:
    return f"{n} dead letter{'s' if n != 1 else ''}"


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
    """Send dead letters back to their queues with fresh attempts.

    JOB_IDS are whole ids or unique prefixes; an unknown or ambiguous one is an
    error and nothing is retried.
    """
    from ..history import history_of

    if cluster is not None and (job_ids or all_ or queue):
        raise click.UsageError("--cluster goes alone: no --all, --queue or JOB_IDs with it")
    app = load_app(app_path)
    try:
        if cluster is None:
            retried = app.dlq_retry(_selector(job_ids, all_, queue), requested_by="cli")
        else:
            dead = history_of(app).store.dead_jobs_in_cluster(cluster)
            if not dead:
                raise click.ClickException(f"no dead job of cluster {cluster!r} in the history")
            retried = app.dlq_retry(Selector(ids=dead), requested_by="cli", missing_ok=True)
    finally:
        app.close()
    click.echo(f"retried {_count(len(retried))}" + (f" of cluster {cluster}" if cluster else ""))


@dlq.command("purge", epilog=APP_HELP)
@click.argument("app_path", metavar="APP")
@click.argument("job_ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every dead letter (of --queue, if given).")
@click.option("--queue", help="With --all: only this queue.")
def dlq_purge(app_path: str, job_ids: tuple[str, ...], all_: bool, queue: str | None) -> None:
    """Delete dead letters for good (JOB_IDS: whole ids or unique prefixes, as for retry)."""
    selector = _selector(job_ids, all_, queue)
    app = load_app(app_path)
    try:
        purged = app.dlq_purge(selector, requested_by="cli")
    finally:
        app.close()
    click.echo(f"purged {_count(len(purged))}")
