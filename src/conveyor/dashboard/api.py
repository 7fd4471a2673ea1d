"""The JSON API under ``/api``: everything the pages show, and the DLQ actions.

Errors are ``{"error": ..., "detail": ...}``: 400 for a bad query or body (or an
ambiguous id prefix), 404
for an unknown job, 501 when the app lacks the extension a route needs.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ..errors import ConveyorError
from .query import BadRequest, JobQuery, json_ids, limit, window
from .sources import Disabled, Sources

Handler = Callable[[Request], Awaitable[Any]]


def sources_of(request: Request) -> Sources:
    found: Sources = request.app.state.sources
    return found


class SafeJSON(JSONResponse):
    """JSON with ``<``, ``>`` and ``&`` escaped, so no body can be read as markup."""

    def render(self, content: Any) -> bytes:
        text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


def error(status: int, code: str, detail: str) -> JSONResponse:
    return SafeJSON({"error": code, "detail": detail}, status_code=status)


def endpoint(fn: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Turn a handler returning data into a JSON endpoint with the API's errors."""

    @wraps(fn)
    async def run(request: Request) -> Response:
        try:
            result = await fn(request)
        except (BadRequest, ConveyorError) as exc:  # ConveyorError: e.g. an ambiguous id prefix
            return error(400, "bad_request", str(exc))
        except Disabled as exc:
            return error(501, "not_enabled", str(exc))
        return result if isinstance(result, Response) else SafeJSON(result)

    return run


@endpoint
async def session(request: Request) -> Any:
    """The CSRF token to send as ``X-CSRF-Token`` with POST and DELETE requests."""
    return {"csrf_token": request.scope["state"]["csrf_token"], "features": sources_of(request).features()}


@endpoint
async def overview(request: Request) -> Any:
    return await sources_of(request).overview()


@endpoint
async def queues(request: Request) -> Any:
    stats = await sources_of(request).queue_stats()
    return [{"queue": name, **s.to_dict()} for name, s in stats.items()]


@endpoint
async def throughput(request: Request) -> Any:
    return await sources_of(request).throughput()


@endpoint
async def alerts(request: Request) -> Any:
    return await sources_of(request).alerts()


@endpoint
async def health(request: Request) -> Any:
    return await sources_of(request).health()


@endpoint
async def workers(request: Request) -> Any:
    return await sources_of(request).workers()


@endpoint
async def jobs(request: Request) -> Any:
    query = JobQuery.parse(request.query_params)
    return await sources_of(request).jobs(**query.kwargs())


@endpoint
async def job(request: Request) -> Any:
    found = await sources_of(request).job(request.path_params["job_id"])
    return found if found is not None else error(404, "not_found", "no job with that id in history")


@endpoint
async def dead_letters(request: Request) -> Any:
    """Dead letters, oldest first; the ``X-Next-Cursor`` header, when present, is the ``after`` of the next page."""
    params = request.query_params
    page = await sources_of(request).dead_letters(params.get("queue") or None, limit(params), params.get("after"))
    response = SafeJSON(page["letters"])
    if page["next"] is not None:
        response.headers["X-Next-Cursor"] = page["next"]
    return response


@endpoint
async def dead_letter(request: Request) -> Any:
    found = await sources_of(request).dead_letter(request.path_params["job_id"])
    return found if found is not None else error(404, "not_found", "no dead letter with that id")


@endpoint
async def retry(request: Request) -> Any:
    ids = json_ids(await request.body())
    return {"retried": await sources_of(request).retry(ids), "requested": len(ids)}


@endpoint
async def delete(request: Request) -> Any:
    ids = json_ids(await request.body())
    return {"deleted": await sources_of(request).delete(ids), "requested": len(ids)}


@endpoint
async def delete_one(request: Request) -> Any:
    n = await sources_of(request).delete([request.path_params["job_id"]])
    return {"deleted": n} if n else error(404, "not_found", "no dead letter with that id")


@endpoint
async def clusters(request: Request) -> Any:
    return await sources_of(request).clusters(window(request.query_params))


@endpoint
async def retry_cluster(request: Request) -> Any:
    retried, dead = await sources_of(request).retry_cluster(request.path_params["fingerprint"])
    return {"retried": retried, "dead_in_cluster": dead}


@endpoint
async def retry_loops(request: Request) -> Any:
    params = request.query_params
    sources = sources_of(request)
    raw = params.get("min_attempts", "") or str(sources.loop_attempts())
    if not raw.isdigit() or not 2 <= int(raw) <= 1000:
        raise BadRequest("min_attempts must be a whole number from 2 to 1000")
    return await sources.retry_loops(int(raw), window(params))


def routes() -> list[BaseRoute]:
    return [
        Route("/api/session", session),
        Route("/api/overview", overview),
        Route("/api/queues", queues),
        Route("/api/throughput", throughput),
        Route("/api/alerts", alerts),
        Route("/api/health", health),
        Route("/api/workers", workers),
        Route("/api/jobs", jobs),
        Route("/api/jobs/{job_id}", job),
        Route("/api/dead-letters", dead_letters),
        Route("/api/dead-letters/retry", retry, methods=["POST"]),
        Route("/api/dead-letters/delete", delete, methods=["POST"]),
        Route("/api/dead-letters/{job_id}", dead_letter),
        Route("/api/dead-letters/{job_id}", delete_one, methods=["DELETE"]),
        Route("/api/clusters", clusters),
        Route("/api/clusters/{fingerprint}/retry", retry_cluster, methods=["POST"]),
        Route("/api/retry-loops", retry_loops),
    ]
