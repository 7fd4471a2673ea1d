"""Records as JSON-ready dicts, shared by the HTML pages and the JSON API.

Payloads are decoded from the message body and redacted: keyword arguments and
headers by field name, positional arguments by the name of the handler's
parameter they bind to. The raw body is never returned.
"""

from __future__ import annotations

import inspect
import json
import re
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import msgspec

from ..app import App
from ..brokers import DeadLetter, QueueStats
from ..history import render as history_render
from ..history.store import WorkerRecord
from ..job import decode
from ..telemetry.redact import DEFAULT_REDACT, REDACTED, Redactor

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
_MAX_RAW = 4096


def redactor_for(app: App) -> Redactor:
    """The app's telemetry redactor, or one for the default sensitive names."""
    found = getattr(app.telemetry, "redactor", None)
    return found if isinstance(found, Redactor) else Redactor(DEFAULT_REDACT)


def trace_id(headers: Mapping[str, str]) -> str:
    """The trace id of a W3C ``traceparent`` header, or ``""``."""
    m = _TRACEPARENT.match(headers.get("traceparent", "").strip().lower())
    return m[1] if m and m[1] != "0" * 32 else ""


def check_trace_url(template: str | None) -> str | None:
    """Validate a trace URL template: http(s) and containing ``{trace_id}``."""
    if template is None:
        return None
    if not template.startswith(("http://", "https://")) or "{trace_id}" not in template:
        raise ValueError("the trace URL template must be an http(s) URL containing {trace_id}")
    return template


def trace_link(template: str | None, tid: str) -> str:
    """The trace URL for ``tid``, or ``""`` without a template or trace id."""
    return template.replace("{trace_id}", quote(tid, safe="")) if template and tid else ""


def _param_names(app: App, job_type: str) -> list[str]:
    """Names of the positional parameters of the job type's handler, in order."""
    definition = app.registry.get(job_type)
    if definition is None:
        return []
    try:
        params = list(inspect.signature(definition.fn).parameters.values())
    except (TypeError, ValueError):
        return []
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names: list[str] = []
    for p in params:
        if p.kind not in positional:
            break
        names.append(p.name)
    return names


def _positional(app: App, job_type: str, args: list[Any], redactor: Redactor) -> list[Any]:
    """``args`` with the values of sensitively named parameters replaced."""
    names = _param_names(app, job_type)
    return [
        REDACTED if i < len(names) and redactor.sensitive(names[i]) else redactor.value(v)
        for i, v in enumerate(args)
    ]


def payload(app: App, body: bytes, redactor: Redactor) -> dict[str, Any]:
    """The redacted payload of a message body: args, kwargs, headers and trace id."""
    try:
        job = decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        try:
            data = json.loads(body)
        except ValueError:
            text = body[:_MAX_RAW].decode("utf-8", "replace")
            return {"decoded": False, "raw": text, "truncated": len(body) > _MAX_RAW}
        return {"decoded": False, "raw": json.dumps(redactor.value(data), indent=2)[:_MAX_RAW], "truncated": False}
    return {
        "decoded": True,
        "args": _positional(app, job.type, job.args, redactor),
        "kwargs": dict(redactor.mapping(job.kwargs)),
        "headers": dict(redactor.mapping(job.headers)),
        "trace_id": trace_id(job.headers),
        "max_attempts": job.max_attempts,
        "priority": job.priority,
        "scheduled_at": job.scheduled_at,
    }


def queue_dict(name: str, s: QueueStats) -> dict[str, Any]:
    return {"queue": name, **s.to_dict()}


def dead_letter_dict(app: App, d: DeadLetter, redactor: Redactor, trace_url: str | None) -> dict[str, Any]:
    """A dead letter with its redacted payload and trace link (times in ISO 8601 UTC)."""
    data = payload(app, d.body, redactor)
    tid = str(data.get("trace_id", ""))
    return {
        "id": d.id,
        "queue": d.queue,
        "type": d.type,
        "reason": d.reason,
        "attempts": d.attempts,
        "error_type": d.error_type,
        "error_message": d.error_message,
        "traceback": d.traceback,
        "dead_at": history_render.iso(d.dead_at or None),
        "created_at": history_render.iso(d.created_at or None),
        "payload": data,
        "trace_id": tid,
        "trace_url": trace_link(trace_url, tid),
    }


def worker_dict(worker: WorkerRecord, heartbeat_timeout: float | None, now: float | None = None) -> dict[str, Any]:
    """A worker as the history CLI shows it, flagged ``stalled`` when its heartbeat is late.

    Late means older than ``heartbeat_timeout`` (the monitor's setting) or, without
    one, three heartbeat intervals. Each current job gets ``running_for`` seconds.
    """
    now = time.time() if now is None else now
    data = history_render.worker_dict(worker, now)
    limit = 3 * worker.heartbeat_interval if heartbeat_timeout is None else heartbeat_timeout
    data["stalled"] = worker.stopped_at is None and worker.heartbeat_age(now) > limit
    for job, record in zip(data["jobs"], worker.jobs, strict=True):
        job["running_for"] = round(max(0.0, now - record.since), 3)
    return data


def rate(completed: int, failures: int) -> dict[str, Any]:
    """Success and failure rates of finished attempts."""
    total = completed + failures
    return {
        "attempts": total,
        "completed": completed,
        "failures": failures,
        "success_rate": round(completed / total, 4) if total else None,
        "failure_rate": round(failures / total, 4) if total else None,
    }
