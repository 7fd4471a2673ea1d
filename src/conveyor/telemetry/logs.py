"""Structured logs: a JSON formatter, job context on every record, and a signal log sink.

One JSON object per line::

    {"timestamp": "2025-01-01T12:00:00.123Z", "severity": "ERROR", "body": "...",
     "logger": "conveyor.events", "signal": "job.failed", "job_id": "...",
     "job_type": "email", "queue": "default", "attempt": 1, "worker_id": "...",
     "error": {"type": "...", "message": "...", "traceback": "..."},
     "attributes": {"duration": 0.01, "will_retry": false}}
"""

from __future__ import annotations

import logging
import sys
import time
from typing import IO, Any

import msgspec

from ..context import current_job
from ..signals import ErrorInfo, Event, Signal
from .redact import DEFAULT_REDACT, REDACTED, Redactor, plain
from .spec import Logs

JOB_FIELDS = ("job_id", "job_type", "queue", "attempt", "worker_id")
"""Fields lifted to the top level of a JSON line, from the running job or a signal."""
SIGNAL_ATTR = "conveyor_signal"
ATTRS_ATTR = "conveyor_attrs"
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "taskName", SIGNAL_ATTR, ATTRS_ATTR, *JOB_FIELDS,
}
_encoder = msgspec.json.Encoder(enc_hook=repr)
_HANDLER_MARK = "_conveyor_handler"


def job_fields() -> dict[str, Any] | None:
    """job_id, job_type, queue, attempt and worker_id of the running job, or None."""
    ctx = current_job()
    if ctx is None:
        return None
    job = ctx.job
    return {"job_id": job.id, "job_type": job.type, "queue": job.queue,
            "attempt": job.attempts, "worker_id": ctx.worker_id}


class JobContextFilter(logging.Filter):
    """Adds the running job's fields to every record passing through (never drops one).

    Attach it to a handler: records logged inside a job, by any logger, in an
    async handler or a sync handler's thread, then carry ``job_id`` & co.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = current_job()
        if ctx is not None and "job_id" not in record.__dict__:
            job = ctx.job
            record.job_id, record.job_type, record.queue = job.id, job.type, job.queue
            record.attempt, record.worker_id = job.attempts, ctx.worker_id
        return True


def install_record_factory() -> None:
    """Make every new LogRecord carry the running job's fields (process-wide, idempotent).

    Use this instead of :class:`JobContextFilter` when records reach handlers you
    do not control, or to use ``%(job_id)s`` in text formats.
    """
    previous = logging.getLogRecordFactory()
    if getattr(previous, _HANDLER_MARK, False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        fields = job_fields()
        if fields is not None:
            record.__dict__.update(fields)
        return record

    setattr(factory, _HANDLER_MARK, True)
    logging.setLogRecordFactory(factory)


class JsonFormatter(logging.Formatter):
    """One JSON object per record; sensitive fields are redacted.

    ``extra=`` values of a record go under ``attributes`` (redacted recursively);
    records of the signal log sink carry the signal name and its attributes.
    When OpenTelemetry is in use, ``trace_id`` and ``span_id`` of the current
    span are added.
    """

    def __init__(self, redact: Redactor | list[str] | tuple[str, ...] = DEFAULT_REDACT) -> None:
        super().__init__()
        self.redactor = redact if isinstance(redact, Redactor) else Redactor(redact)
        self._second: tuple[int, str] = (-1, "")

    def _timestamp(self, created: float) -> str:
        second = int(created)
        cached = self._second  # one tuple, so threads sharing the formatter never mix fields
        if cached[0] != second:
            cached = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
            self._second = cached
        return f"{cached[1]}.{int((created - second) * 1000):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        d = record.__dict__
        out: dict[str, Any] = {
            "timestamp": self._timestamp(record.created),
            "severity": record.levelname,
            "body": record.getMessage(),
            "logger": record.name,
        }
        signal = d.get(SIGNAL_ATTR)
        attrs: dict[str, Any] = {}
        if signal is not None:
            out["signal"] = signal
            sensitive = self.redactor.sensitive
            for key, value in d[ATTRS_ATTR].items():  # signal values are scalars or errors
                if sensitive(key):
                    attrs[key] = REDACTED
                elif key in JOB_FIELDS:
                    out[key] = value
                elif key == "error":
                    out["error"] = plain(value)
                else:
                    attrs[key] = plain(value)
        for key in JOB_FIELDS:
            if key in d and key not in out:
                out[key] = d[key]
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            if not record.exc_text:
                record.exc_text = self.formatException(record.exc_info)
            out["error"] = {"type": type(exc).__qualname__, "message": str(exc),
                            "traceback": record.exc_text}
        if record.stack_info:
            out["stack"] = record.stack_info
        if signal is None:
            for key, value in d.items():
                if key not in _STANDARD and not key.startswith("_"):
                    attrs[key] = plain(value)
            if attrs:
                attrs = dict(self.redactor.mapping(attrs))
        if attrs:
            out["attributes"] = attrs
        _add_trace(out)
        try:
            return _encoder.encode(out).decode()
        except (TypeError, msgspec.EncodeError):
            return _encoder.encode({k: v if isinstance(v, str) else repr(v)
                                    for k, v in out.items()}).decode()


def _add_trace(out: dict[str, Any]) -> None:
    module = sys.modules.get("opentelemetry.trace")
    if module is None:
        return
    ctx = module.get_current_span().get_span_context()
    if ctx.is_valid:
        out["trace_id"] = f"{ctx.trace_id:032x}"
        out["span_id"] = f"{ctx.span_id:016x}"


def summary(event: Event) -> str:
    """A one-line message for an event: name, job type and id, and the error if any."""
    attrs = event.attrs
    text = " ".join([event.name, *(str(attrs[k]) for k in ("job_type", "job_id") if k in attrs)])
    error = attrs.get("error")
    if isinstance(error, ErrorInfo):
        text += f": {error.type}: {error.message}"
    return text


class SignalLogSink:
    """A bus sink logging each event as a record of ``logs.logger``.

    The record's level comes from ``logs.level_of`` (``job.failed`` is ERROR
    when it will not be retried); its message is :func:`summary`; the event's
    attributes (redacted) ride on the record for :class:`JsonFormatter`.
    """

    def __init__(self, logs: Logs, redactor: Redactor) -> None:
        self.logs = logs
        self.logger = logging.getLogger(logs.logger)
        self.redactor = redactor.merged(logs.redact) if logs.redact else redactor
        self._levels = logs.level_of
        self._sensitive: dict[Signal, frozenset[str]] = {}

    def __call__(self, event: Event) -> None:
        name = event.name
        level = self._levels.get(name, logging.INFO)
        if name == "job.failed" and not event.attrs.get("will_retry", True):
            level = max(level, logging.ERROR)
        logger = self.logger
        if not logger.isEnabledFor(level):
            return
        attrs = event.attrs
        hidden = self._sensitive.get(event.signal)
        if hidden is None:
            hidden = frozenset(k for k in event.signal.keys if self.redactor.sensitive(k))
            self._sensitive[event.signal] = hidden
        if hidden:
            attrs = {k: REDACTED if k in hidden else v for k, v in attrs.items()}
        record = logger.makeRecord(
            logger.name, level, "conveyor.signals", 0, summary(event), (), None,
            extra={SIGNAL_ATTR: name, ATTRS_ATTR: attrs},
        )
        logger.handle(record)


def configure_logging(
    level: str | int = "INFO",
    fmt: str = "json",
    *,
    stream: IO[str] | None = None,
    redact: Redactor | list[str] | tuple[str, ...] = DEFAULT_REDACT,
) -> logging.Handler:
    """Send the root logger's records to ``stream`` (stderr) as JSON or text, with job context.

    Idempotent: a handler installed earlier by this function is reused.
    """
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, _HANDLER_MARK, False)), None)
    if handler is None:
        handler = logging.StreamHandler(stream or sys.stderr)
        setattr(handler, _HANDLER_MARK, True)
        handler.addFilter(JobContextFilter())
        root.addHandler(handler)
    formatter: logging.Formatter
    if fmt == "json":
        formatter = JsonFormatter(redact)
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    root.setLevel(level)
    return handler

