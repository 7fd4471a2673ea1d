"""The HTML pages and the htmx partials they poll (``/partials/...``).

Every page works without JavaScript: forms post normally and are answered by
a redirect. With htmx, the same forms swap a partial in place.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.templating import Jinja2Templates

from ..errors import ConveyorError
from ..history.store import STATES
from .filters import safe_url
from .query import BadRequest, JobQuery, check_ids, form
from .sources import Disabled, Sources

POLL = "every 2s"
DLQ_PAGE = 500
"""Dead letters listed on the page (the oldest first)."""
Endpoint = Callable[[Request], Awaitable[Response]]
Loader = Callable[[Request], Awaitable[dict[str, Any]]]


def _sources(request: Request) -> Sources:
    found: Sources = request.app.state.sources
    return found


def render(request: Request, name: str, status: int = 200, **context: Any) -> Response:
    """Render ``name`` with the context every template can use."""
    sources = _sources(request)
    templates: Jinja2Templates = request.app.state.templates
    base = {
        "csrf_token": request.scope["state"]["csrf_token"],
        "root": request.scope.get("root_path", ""),
        "features": sources.features(),
        "broker_url": safe_url(sources.app.url),
        "poll": POLL,
        "flash": "",
        "error": "",
    }
    return templates.TemplateResponse(request, name, {**base, **context}, status_code=status)


def redirect(request: Request, path: str) -> Response:
    return RedirectResponse(request.scope.get("root_path", "") + path, 303)


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def _flash(request: Request) -> str:
    """A message after a redirect: ``?retried=N`` or ``?deleted=N``."""
    for key, verb in (("retried", "Retried"), ("deleted", "Deleted")):
        raw = request.query_params.get(key, "")
        if raw.isdigit():
            n = int(raw)
            return f"{verb} {n} dead letter{'s' if n != 1 else ''}."
    return ""


def page(template: str, partial: str, load: Loader) -> tuple[Endpoint, Endpoint]:
    """A full page and its polled partial, both fed by ``load``; Disabled shows how to enable."""

    async def full(request: Request) -> Response:
        try:
            data = await load(request)
        except Disabled as exc:
            return render(request, template, disabled=str(exc), flash=_flash(request))
        return render(request, template, disabled="", flash=_flash(request), **data)

    async def part(request: Request) -> Response:
        try:
            data = await load(request)
        except (Disabled, ConveyorError, BadRequest) as exc:
            return render(request, "_message.html", message=str(exc))
        return render(request, partial, disabled="", **data)

    return full, part


async def _overview(request: Request) -> dict[str, Any]:
    return {"o": await _sources(request).overview()}


async def _workers(request: Request) -> dict[str, Any]:
    return {"workers": await _sources(request).workers()}


async def _jobs(request: Request) -> dict[str, Any]:
    query = JobQuery.parse(request.query_params)
    return {"jobs": await _sources(request).jobs(**query.kwargs())}


async def _dead_letters(request: Request) -> dict[str, Any]:
    queue = request.query_params.get("queue") or None
    after = request.query_params.get("after") or None
    page = await _sources(request).dead_letters(queue, DLQ_PAGE, after)
    return {**page, "after": after or "", "queue": queue or "", "limit": DLQ_PAGE}


async def _clusters(request: Request) -> dict[str, Any]:
    sources = _sources(request)
    return {"clusters": await sources.clusters(), "loops": await sources.retry_loops()}


overview, overview_part = page("overview.html", "_overview.html", _overview)
workers, workers_part = page("workers.html", "_workers.html", _workers)
_, jobs_part = page("jobs.html", "_jobs.html", _jobs)
dead_letters, dead_letters_part = page("dead_letters.html", "_dead_letters.html", _dead_letters)
clusters, clusters_part = page("clusters.html", "_clusters.html", _clusters)


async def jobs(request: Request) -> Response:
    """Job search; without history, the id box opens a dead letter's page."""
    sources = _sources(request)
    params = request.query_params
    if sources.history_ext is None:
        if params.get("id", "").strip():
            return redirect(request, f"/jobs/{quote(params['id'].strip(), safe='')}")
        return render(request, "jobs.html", disabled=sources.features()["history_help"])
    context: dict[str, Any] = {"disabled": "", "query": dict(params), "states": STATES, "jobs": []}
    try:
        context.update(await _jobs(request))
    except (BadRequest, ConveyorError) as exc:
        return render(request, "jobs.html", 400, error=str(exc), **context)
    return render(request, "jobs.html", **context)


async def job(request: Request) -> Response:
    """A job's timeline from history; without history, its dead letter if it has one."""
    sources = _sources(request)
    job_id = request.path_params["job_id"]
    try:
        if sources.history_ext is None:
            letter = await sources.dead_letter(job_id)
            help_text = sources.features()["history_help"]
            if letter is None:
                return render(request, "message.html", 404, title="Job not found", message=help_text)
            return render(request, "dead_letter.html", letter=letter, note=help_text)
        found = await sources.job(job_id)
        if found is None:
            letter = await sources.dead_letter(job_id)
            if letter is not None:
                return render(request, "dead_letter.html", letter=letter, note="This job is not in history (yet).")
            return render(request, "message.html", 404, title="Job not found", message=f"No job {job_id!r} in history.")
    except ConveyorError as exc:  # an ambiguous id prefix
        return render(request, "message.html", 400, title="Which job?", message=str(exc))
    return render(request, "job.html", job=found)


async def dead_letter(request: Request) -> Response:
    """A dead letter by id or unique id prefix."""
    try:
        letter = await _sources(request).dead_letter(request.path_params["job_id"])
    except ConveyorError as exc:  # an ambiguous id prefix
        return render(request, "message.html", 400, title="Which dead letter?", message=str(exc))
    if letter is None:
        return render(request, "message.html", 404, title="Not in the DLQ", message="No dead letter with that id.")
    return render(request, "dead_letter.html", letter=letter, note="")


async def dead_letter_action(request: Request) -> Response:
    """Retry or delete the dead letters of the list form (one row, or the checked ones)."""
    fields = form(await request.body())
    sources = _sources(request)
    op = next((name for name in ("retry", "delete") if fields.get(name) or f"{name}_selected" in fields), "")
    ids = fields[op][:1] if op and fields.get(op) else fields.get("ids", [])
    try:
        ids = check_ids(ids)
    except BadRequest as exc:
        return render(request, "_message.html", 400, message=str(exc))
    if not op or not ids:
        n, flash = 0, "Select at least one dead letter first."
    else:
        try:
            n = await (sources.retry(ids) if op == "retry" else sources.delete(ids))
        except ConveyorError as exc:  # an ambiguous id prefix
            return render(request, "_message.html", 400, message=str(exc))
        verb = "Retried" if op == "retry" else "Deleted"
        flash = f"{verb} {n} dead letter{'s' if n != 1 else ''}."
    if not is_htmx(request):
        return redirect(request, f"/dead-letters?{'retried' if op == 'retry' else 'deleted'}={n}")
    return render(request, "_dead_letters.html", flash=flash, **await _dead_letters(request))


async def dead_letter_one(request: Request) -> Response:
    """Retry or delete one dead letter from its own page."""
    job_id, op = request.path_params["job_id"], request.path_params["op"]
    if op not in ("retry", "delete"):
        return render(request, "message.html", 404, title="Not found", message="Dead letters are retried or deleted.")
    sources = _sources(request)
    try:
        n = await (sources.retry([job_id]) if op == "retry" else sources.delete([job_id]))
    except ConveyorError as exc:  # an ambiguous id prefix
        return render(request, "message.html", 400, title="Which dead letter?", message=str(exc))
    if not is_htmx(request):
        return redirect(request, f"/dead-letters?{'retried' if op == 'retry' else 'deleted'}={n}")
    return render(request, "_dead_letter_done.html", op=op, n=n, job_id=job_id)


async def cluster_retry(request: Request) -> Response:
    sources = _sources(request)
    try:
        retried, dead = await sources.retry_cluster(request.path_params["fingerprint"])
    except Disabled as exc:
        return render(request, "_message.html", 501, message=str(exc))
    except ConveyorError as exc:  # an ambiguous fingerprint prefix
        return render(request, "_message.html", 400, message=str(exc))
    if not is_htmx(request):
        return redirect(request, f"/clusters?retried={retried}")
    flash = f"Retried {retried} of {dead} dead job{'s' if dead != 1 else ''} in the cluster."
    return render(request, "_clusters.html", flash=flash, **await _clusters(request))


def routes() -> list[BaseRoute]:
    return [
        Route("/", overview),
        Route("/partials/overview", overview_part),
        Route("/workers", workers),
        Route("/partials/workers", workers_part),
        Route("/jobs", jobs),
        Route("/partials/jobs", jobs_part),
        Route("/jobs/{job_id}", job),
        Route("/dead-letters", dead_letters),
        Route("/partials/dead-letters", dead_letters_part),
        Route("/dead-letters/action", dead_letter_action, methods=["POST"]),
        Route("/dead-letters/{job_id}", dead_letter),
        Route("/dead-letters/{job_id}/{op:str}", dead_letter_one, methods=["POST"]),
        Route("/clusters", clusters),
        Route("/partials/clusters", clusters_part),
        Route("/clusters/{fingerprint}/retry", cluster_retry, methods=["POST"]),
    ]

