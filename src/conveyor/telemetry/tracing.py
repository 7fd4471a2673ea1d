"""OpenTelemetry tracing: producer/consumer spans around jobs, and spans built from signals.

:class:`TracingMiddleware` injects the W3C trace context (``traceparent``,
``tracestate``, ``baggage``) into ``job.headers`` under a ``publish`` span
(kind PRODUCER) and runs the handler inside a ``process`` span (kind CONSUMER)
whose parent is the producer's span. Attributes follow the OpenTelemetry
messaging conventions. :class:`SignalSpans` turns configured
:class:`~conveyor.telemetry.Span` pairs of signals into spans.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import msgspec
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util.types import AttributeValue

from ..context import JobContext
from ..job import Job
from ..middleware import CallNext, Middleware
from ..signals import Bus, ErrorInfo, Event, Subscription
from .redact import REDACTED, Redactor
from .spec import Span

PREVIOUS_ATTEMPT_HEADER = "conveyor-previous-attempt"
"""Header holding the ``traceparent`` of a failed attempt's span (see :class:`TracingMiddleware`)."""
SYSTEM = "conveyor"
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_encode = msgspec.json.Encoder(enc_hook=repr).encode
_MISSING = object()


def _tracer(provider: trace.TracerProvider | None, name: str) -> trace.Tracer:
    return trace.get_tracer(name, tracer_provider=provider)


def traceparent(ctx: SpanContext) -> str:
    """The W3C ``traceparent`` value of ``ctx``."""
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def parse_traceparent(value: str) -> SpanContext | None:
    """The span context of a ``traceparent`` value, or None when it is malformed."""
    m = _TRACEPARENT.match(value.strip().lower())
    if m is None:
        return None
    ctx = SpanContext(int(m[1], 16), int(m[2], 16), is_remote=True,
                      trace_flags=TraceFlags(int(m[3], 16)))
    return ctx if ctx.is_valid else None


def describe(exc: BaseException) -> str:
    return f"{type(exc).__qualname__}: {exc}"


class TracingMiddleware(Middleware):
    """Producer and consumer spans for every job, linked across processes by headers.

    Retries: a retry attempt is a new ``process`` span, a sibling of the earlier
    attempts under the same producer span, with a Link to the previous attempt's
    span when this process ran it (remembered for up to ``memory`` jobs) or when
    the ``conveyor-previous-attempt`` header carries it; otherwise the Link
    points at the producer span and says which attempt came before.
    """

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        redactor: Redactor | None = None,
        *,
        include_args: bool = False,
        memory: int = 10_000,
    ) -> None:
        self._tracer = _tracer(tracer_provider, "conveyor")
        self._redactor = redactor or Redactor()
        self._include_args = include_args
        self._memory = memory
        self._previous: dict[str, SpanContext] = {}

    def before_send(self, job: Job) -> None:
        span = self._tracer.start_span(
            f"publish {job.queue}", kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.type": "publish",
                "messaging.operation.name": "publish",
                "messaging.destination.name": job.queue,
                "messaging.message.id": job.id,
                "conveyor.job_type": job.type,
            },
        )
        try:
            propagate.inject(job.headers, context=trace.set_span_in_context(span))
        finally:
            span.end()

    async def around(self, ctx: JobContext, call_next: CallNext) -> Any:
        job = ctx.job
        parent = propagate.extract(job.headers) if job.headers else None
        span = self._tracer.start_span(
            f"process {job.queue}", context=parent, kind=SpanKind.CONSUMER,
            attributes=self._attributes(ctx), links=self._links(job, parent),
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        try:
            result = await call_next()
        except asyncio.CancelledError:
            span.set_status(Status(StatusCode.ERROR, "cancelled (timeout or shutdown)"))
            self._remember(job, span.get_span_context())
            raise
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, describe(exc)))
            self._remember(job, span.get_span_context())
            raise
        finally:
            otel_context.detach(token)
            span.end()
        if self._previous:
            self._previous.pop(job.id, None)
        return result

    def _attributes(self, ctx: JobContext) -> dict[str, AttributeValue]:
        job = ctx.job
        attrs: dict[str, AttributeValue] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": job.queue,
            "messaging.message.id": job.id,
            "conveyor.job_type": job.type,
            "conveyor.attempt": job.attempts,
            "conveyor.worker_id": ctx.worker_id,
        }
        if ctx.redelivery:
            attrs["conveyor.redelivery"] = ctx.redelivery
        if self._include_args:
            attrs["conveyor.args"] = _encode(self._redactor.value(job.args)).decode()
            attrs["conveyor.kwargs"] = _encode(self._redactor.value(job.kwargs)).decode()
        return attrs

    def _links(self, job: Job, parent: otel_context.Context | None) -> list[Link] | None:
        if job.attempts <= 1:
            return None
        previous = self._previous.pop(job.id, None)
        if previous is None and PREVIOUS_ATTEMPT_HEADER in job.headers:
            previous = parse_traceparent(job.headers[PREVIOUS_ATTEMPT_HEADER])
        if previous is not None:
            return [Link(previous, {"conveyor.link": "previous_attempt",
                                    "conveyor.attempt": job.attempts - 1})]
        producer = trace.get_current_span(parent).get_span_context() if parent else None
        if producer is not None and producer.is_valid:
            return [Link(producer, {"conveyor.link": "producer",
                                    "conveyor.previous_attempt": job.attempts - 1})]
        return None

    def _remember(self, job: Job, span_ctx: SpanContext) -> None:
        if not span_ctx.is_valid:
            return
        # Kept in job.headers too: effective once the executor re-encodes headers on retry.
        job.headers[PREVIOUS_ATTEMPT_HEADER] = traceparent(span_ctx)
        self._previous.pop(job.id, None)
        self._previous[job.id] = span_ctx
        if len(self._previous) > self._memory:
            del self._previous[next(iter(self._previous))]


class SignalSpans:
    """Spans from start signals to end signals, correlated by a key's value.

    Attributes are set once the span is known to be sampled (samplers see none).
    """

    def __init__(
        self,
        specs: Sequence[Span],
        tracer_provider: trace.TracerProvider | None = None,
        redactor: Redactor | None = None,
    ) -> None:
        self.specs = tuple(specs)
        self._tracer = _tracer(tracer_provider, "conveyor.signals")
        self._redactor = redactor or Redactor()
        self._open: dict[tuple[int, Any], tuple[trace.Span, dict[str, AttributeValue]]] = {}
        self._lock = threading.Lock()

    def attach(self, bus: Bus) -> list[Subscription]:
        subs = []
        for i, spec in enumerate(self.specs):
            subs.append(bus.subscribe(partial(self._start, i, spec), [spec.start_signal]))
            subs.append(bus.subscribe(partial(self._end, i, spec), spec.end_signals))
        return subs

    def _start(self, index: int, spec: Span, event: Event) -> None:
        value = event.attrs.get(spec.correlation_key)
        if value is None:
            return
        span = self._tracer.start_span(spec.name, start_time=int(event.timestamp * 1e9))
        if not span.is_recording():  # not sampled: nothing to fill in or to end later
            return
        attrs, _ = self._attributes(event.attrs)
        span.set_attributes(attrs)
        with self._lock:
            stale = self._open.pop((index, value), None)
            self._open[(index, value)] = (span, attrs)
            evicted = None
            if len(self._open) > spec.max_open:
                evicted = self._open.pop(next(iter(self._open)))
        for old in (stale, evicted):
            if old is not None:
                old[0].set_attribute("conveyor.span.abandoned", True)
                old[0].end()

    def _end(self, index: int, spec: Span, event: Event) -> None:
        value = event.attrs.get(spec.correlation_key)
        with self._lock:
            found = self._open.pop((index, value), None)
        if found is None:
            return
        span, started = found
        attrs, errors = self._attributes(event.attrs)
        # Only what the end event adds or changes: each attribute costs a validation.
        span.set_attributes({k: v for k, v in attrs.items() if started.get(k, _MISSING) != v})
        for key, err in errors:
            span.add_event("exception", {
                "exception.type": err.type, "exception.message": err.message,
                "exception.stacktrace": err.traceback, "conveyor.key": key,
            })
        if errors:
            span.set_status(Status(StatusCode.ERROR, f"{errors[0][1].type}: {errors[0][1].message}"))
        span.end(end_time=int(event.timestamp * 1e9))

    def _attributes(
        self, values: Mapping[str, Any]
    ) -> tuple[dict[str, AttributeValue], list[tuple[str, ErrorInfo]]]:
        attrs: dict[str, AttributeValue] = {}
        errors: list[tuple[str, ErrorInfo]] = []
        sensitive = self._redactor.sensitive
        for key, value in values.items():
            if sensitive(key):
                attrs[key] = REDACTED
            elif isinstance(value, ErrorInfo):
                attrs[f"{key}.type"] = value.type
                attrs[f"{key}.message"] = value.message
                errors.append((key, value))
            elif isinstance(value, str | bool | int | float):
                attrs[key] = value
            else:
                attrs[key] = str(value)
        return attrs, errors

    def close(self) -> None:
        """End spans still waiting for their end signal."""
        with self._lock:
            spans, self._open = [span for span, _ in self._open.values()], {}
        for span in spans:
            span.set_attribute("conveyor.span.unfinished", True)
            span.end()
