"""Producer/consumer spans, W3C propagation, retry links and signal-correlated spans."""

from __future__ import annotations

import threading

from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.trace import SpanKind, StatusCode

from conveyor import App, NonRetryable, Signal, StringKey, current_job
from conveyor import signals as sig
from conveyor.telemetry import REDACTED, Span, Telemetry
from conveyor.telemetry.tracing import PREVIOUS_ATTEMPT_HEADER, parse_traceparent, traceparent
from conveyor.testing import run_until_idle

from .conftest import Spans

LOGIN = Signal("user.login", "A login.", [StringKey("user"), StringKey("token")])
LOGOUT = Signal("user.logout", "A logout.", [StringKey("user")])


def traced_app(spans: Spans, **options: object) -> App:
    telemetry = Telemetry(tracer_provider=spans.provider, logs=None, metrics=[], **options)  # type: ignore[arg-type]
    return App("memory://", telemetry=telemetry)


def test_process_span_is_a_child_of_the_producer_span(spans: Spans) -> None:
    app = traced_app(spans)

    @app.job(name="work")
    async def work() -> None:
        pass

    job_id = work.send()
    run_until_idle(app)
    [publish] = spans.finished("publish default")
    [process] = spans.finished("process default")
    assert publish.kind is SpanKind.PRODUCER and process.kind is SpanKind.CONSUMER
    assert process.context.trace_id == publish.context.trace_id
    assert process.parent is not None and process.parent.span_id == publish.context.span_id
    assert dict(process.attributes or {}) == {
        "messaging.system": "conveyor",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": "default",
        "messaging.message.id": job_id,
        "conveyor.job_type": "work",
        "conveyor.attempt": 1,
        "conveyor.worker_id": process.attributes["conveyor.worker_id"],  # type: ignore[index]
    }
    assert publish.attributes is not None
    assert publish.attributes["messaging.operation.type"] == "publish"
    assert publish.attributes["messaging.message.id"] == job_id


def test_trace_started_by_the_producer_continues_in_the_worker(spans: Spans) -> None:
    app = traced_app(spans)
    seen: dict[str, object] = {}

    @app.job(name="work")
    def work() -> None:
        seen["trace_id"] = trace.get_current_span().get_span_context().trace_id
        seen["thread"] = threading.current_thread().name
        seen["baggage"] = baggage.get_baggage("tenant")

    tracer = spans.provider.get_tracer("test")
    with tracer.start_as_current_span("http request") as request:
        token = otel_context.attach(baggage.set_baggage("tenant", "acme"))
        try:
            work.send()
        finally:
            otel_context.detach(token)
    run_until_idle(app)
    [publish] = spans.finished("publish default")
    [process] = spans.finished("process default")
    trace_id = request.get_span_context().trace_id
    assert publish.parent is not None and publish.parent.span_id == request.get_span_context().span_id
    assert process.context.trace_id == trace_id
    assert seen == {"trace_id": trace_id, "thread": seen["thread"], "baggage": "acme"}
    assert str(seen["thread"]).startswith("conveyor-job")


def test_w3c_headers_are_injected(spans: Spans) -> None:
    app = traced_app(spans)

    @app.job(name="work")
    def work() -> None:
        pass

    tracer = spans.provider.get_tracer("test")
    with tracer.start_as_current_span("request"):
        token = otel_context.attach(baggage.set_baggage("tenant", "acme"))
        try:
            job = work.message()
        finally:
            otel_context.detach(token)
    [publish] = spans.finished("publish default")
    assert job.headers["traceparent"] == traceparent(publish.context)
    assert job.headers["baggage"] == "tenant=acme"


def test_exceptions_are_recorded_with_error_status(spans: Spans) -> None:
    app = traced_app(spans)

    @app.job(name="work", max_attempts=1)
    async def work() -> None:
        raise NonRetryable("bad input")

    work.send()
    run_until_idle(app)
    [process] = spans.finished("process default")
    assert process.status.status_code is StatusCode.ERROR
    assert process.status.description == "NonRetryable: bad input"
    [event] = process.events
    assert event.name == "exception"
    assert event.attributes is not None
    assert str(event.attributes["exception.type"]).endswith("NonRetryable")


def test_a_retry_is_a_new_span_linked_to_the_previous_attempt(spans: Spans) -> None:
    app = traced_app(spans)

    @app.job(name="work", max_attempts=3, backoff=lambda n: 0.0)
    def work() -> None:
        ctx = current_job()
        assert ctx is not None
        if ctx.attempt < 3:
            raise ValueError(f"attempt {ctx.attempt}")

    work.send()
    run_until_idle(app)
    first, second, third = sorted(
        spans.finished("process default"),
        key=lambda s: int(str((s.attributes or {})["conveyor.attempt"])),
    )
    [publish] = spans.finished("publish default")
    for attempt in (first, second, third):
        assert attempt.parent is not None and attempt.parent.span_id == publish.context.span_id
    assert first.links == ()
    [link2] = second.links
    assert link2.context.span_id == first.context.span_id
    assert dict(link2.attributes or {}) == {"conveyor.link": "previous_attempt", "conveyor.attempt": 1}
    [link3] = third.links
    assert link3.context.span_id == second.context.span_id
    assert third.status.status_code is StatusCode.UNSET


def test_without_memory_the_retry_links_to_the_producer(spans: Spans) -> None:
    telemetry = Telemetry(tracer_provider=spans.provider, logs=None, metrics=[])
    telemetry.middleware()._memory = 0  # forget attempt 1, as if another process ran it
    app = App("memory://", telemetry=telemetry)

    @app.job(name="work", max_attempts=2, backoff=lambda n: 0.0)
    def work() -> None:
        ctx = current_job()
        assert ctx is not None
        if ctx.attempt == 1:
            raise ValueError("once")

    work.send()
    run_until_idle(app)
    [publish] = spans.finished("publish default")
    retry = next(s for s in spans.finished("process default") if s.links)
    [link] = retry.links
    assert link.context.span_id == publish.context.span_id
    assert dict(link.attributes or {}) == {"conveyor.link": "producer", "conveyor.previous_attempt": 1}


def test_previous_attempt_header_round_trips() -> None:
    ctx = trace.SpanContext(0xABC, 0xDEF, is_remote=False, trace_flags=trace.TraceFlags(1))
    parsed = parse_traceparent(traceparent(ctx))
    assert parsed is not None and (parsed.trace_id, parsed.span_id) == (0xABC, 0xDEF)
    assert parse_traceparent("garbage") is None
    assert PREVIOUS_ATTEMPT_HEADER == "conveyor-previous-attempt"


def test_signal_span_pairs_are_correlated_by_key(spans: Spans) -> None:
    app = traced_app(spans, traces=[
        Span(sig.JOB_STARTED, [sig.JOB_COMPLETED, sig.JOB_FAILED], "job_id", name="job_processing"),
    ])

    @app.job(name="work", max_attempts=1)
    async def work(fail: bool) -> None:
        if fail:
            raise RuntimeError("boom")

    ok, bad = work.send(False), work.send(True)
    run_until_idle(app)
    by_id = {s.attributes["job_id"]: s for s in spans.finished("job_processing")}  # type: ignore[index]
    assert set(by_id) == {ok, bad}
    good, failed = by_id[ok], by_id[bad]
    assert good.attributes is not None and failed.attributes is not None
    assert (good.attributes["job_type"], good.attributes["queue"]) == ("work", "default")
    assert good.status.status_code is StatusCode.UNSET
    assert "duration" in good.attributes
    assert failed.status.status_code is StatusCode.ERROR
    assert (failed.attributes["error.type"], failed.attributes["error.message"]) == (
        "RuntimeError", "boom")
    assert failed.events[0].name == "exception"
    assert good.end_time is not None and good.start_time is not None
    assert good.end_time >= good.start_time


def test_signal_spans_redact_sensitive_keys_and_end_unfinished_on_close(spans: Spans) -> None:
    telemetry = Telemetry(tracer_provider=spans.provider, logs=None, metrics=[], tracing=False,
                          traces=[Span(LOGIN, LOGOUT, "user", name="session")])
    app = App("memory://", telemetry=telemetry)
    app.emit(LOGIN, user="ann", token="s3cret")
    app.emit(LOGOUT, user="ann")
    app.emit(LOGIN, user="bob", token="other")
    telemetry.close()
    ann, bob = spans.finished("session")
    assert ann.attributes is not None and bob.attributes is not None
    assert ann.attributes["token"] == REDACTED
    assert "conveyor.span.unfinished" not in ann.attributes
    assert bob.attributes["conveyor.span.unfinished"] is True


def test_include_args_attaches_redacted_arguments(spans: Spans) -> None:
    app = traced_app(spans, include_args=True)

    @app.job(name="login")
    def login(user: str, creds: dict[str, str]) -> None:
        pass

    login.send("ann", creds={"password": "hunter2", "realm": "corp"})
    run_until_idle(app)
    [process] = spans.finished("process default")
    assert process.attributes is not None
    assert process.attributes["conveyor.args"] == '["ann"]'
    assert process.attributes["conveyor.kwargs"] == (
        '{"creds":{"password":"[REDACTED]","realm":"corp"}}')


def test_with_the_global_noop_tracer_jobs_still_run() -> None:
    app = App("memory://", telemetry=Telemetry(logs=None, metrics=[]))
    ran: list[str] = []

    @app.job(name="work")
    def work() -> None:
        ran.append(trace.get_current_span().__class__.__name__)

    job = work.message()
    app.send_jobs([job])
    run_until_idle(app)
    assert len(ran) == 1
    assert "traceparent" not in job.headers


def test_a_timed_out_attempt_ends_its_span_with_error(spans: Spans) -> None:
    import asyncio

    app = traced_app(spans)

    @app.job(name="slow", max_attempts=1, timeout=0.05)
    async def slow() -> None:
        await asyncio.sleep(5)

    slow.send()
    result = run_until_idle(app)
    assert result.counters.dead == 1
    [process] = spans.finished("process default")
    assert process.status.status_code is StatusCode.ERROR
    assert process.status.description == "cancelled (timeout or shutdown)"
