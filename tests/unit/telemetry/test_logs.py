"""JSON log lines, job context on every record, and the signal log sink."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from conveyor import App, NonRetryable, Signal, StringKey, current_job
from conveyor import signals as sig
from conveyor.telemetry import JsonFormatter, Logs, Telemetry, configure_logging, install_record_factory
from conveyor.testing import run_until_idle

from .conftest import JsonLines, Spans

user_log = logging.getLogger("myproject.tasks")
SIGNUP = Signal("user.signup", "A user signed up.", [StringKey("email"), StringKey("api_token")])
JOB_FIELDS = ("job_id", "job_type", "queue", "attempt", "worker_id")


def app_with(**options: object) -> App:
    options.setdefault("tracing", False)
    options.setdefault("metrics", [])
    return App("memory://", telemetry=Telemetry(**options))  # type: ignore[arg-type]


def test_a_line_is_one_json_object_with_the_base_fields(json_logs: JsonLines) -> None:
    user_log.warning("disk at %d%%", 91)
    [line] = json_logs.logger("myproject.tasks")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["timestamp"])
    assert (line["severity"], line["body"], line["logger"]) == ("WARNING", "disk at 91%", "myproject.tasks")
    assert not set(JOB_FIELDS) & set(line)


def test_users_own_logger_gets_job_context_in_a_sync_handler(json_logs: JsonLines) -> None:
    app = app_with(logs=None)

    @app.job(name="sync_job")
    def sync_job() -> None:
        user_log.info("inside sync")

    job_id = sync_job.send()
    run_until_idle(app)
    [line] = json_logs.logger("myproject.tasks")
    assert line["body"] == "inside sync"
    assert (line["job_id"], line["job_type"], line["queue"], line["attempt"]) == (
        job_id, "sync_job", "default", 1)
    assert line["worker_id"]


def test_users_own_logger_gets_job_context_in_an_async_handler(json_logs: JsonLines) -> None:
    app = app_with(logs=None)

    @app.job(name="async_job", max_attempts=2, backoff=lambda n: 0.0)
    async def async_job() -> None:
        ctx = current_job()
        assert ctx is not None
        user_log.info("inside async")
        if ctx.attempt == 1:
            raise ValueError("again")

    job_id = async_job.send()
    run_until_idle(app)
    lines = json_logs.logger("myproject.tasks")
    assert [(x["job_id"], x["job_type"], x["attempt"]) for x in lines] == [
        (job_id, "async_job", 1), (job_id, "async_job", 2)]


def test_failed_job_logs_signal_fields_and_error(json_logs: JsonLines) -> None:
    app = app_with()

    @app.job(name="email", max_attempts=1)
    def email() -> None:
        raise NonRetryable("mailbox full")

    job_id = email.send()
    run_until_idle(app)
    [line] = json_logs.signal("job.failed")
    assert line["severity"] == "ERROR"
    assert line["logger"] == "conveyor.events"
    assert (line["job_id"], line["job_type"], line["queue"], line["attempt"]) == (
        job_id, "email", "default", 1)
    assert line["error"]["type"] == "NonRetryable"
    assert line["error"]["message"] == "mailbox full"
    assert "Traceback" in line["error"]["traceback"]
    assert line["attributes"]["will_retry"] is False
    assert line["body"] == f"job.failed email {job_id}: NonRetryable: mailbox full"


def test_a_failure_that_will_be_retried_is_a_warning(json_logs: JsonLines) -> None:
    app = app_with()

    @app.job(name="flaky", max_attempts=2, backoff=lambda n: 0.0)
    def flaky() -> None:
        ctx = current_job()
        if ctx is not None and ctx.attempt == 1:
            raise ValueError("once")

    flaky.send()
    run_until_idle(app)
    [failed] = json_logs.signal("job.failed")
    assert failed["severity"] == "WARNING" and failed["attributes"]["will_retry"] is True
    assert [x["severity"] for x in json_logs.signal("job.retrying")] == ["WARNING"]


def test_whitelist_limits_logged_signals(json_logs: JsonLines) -> None:
    app = app_with(logs=Logs(whitelist=[sig.JOB_COMPLETED]))

    @app.job(name="work")
    def work() -> None:
        pass

    work.send()
    run_until_idle(app)
    signals = {x["signal"] for x in json_logs.lines() if "signal" in x}
    assert signals == {"job.completed"}


def test_levels_can_be_overridden(json_logs: JsonLines) -> None:
    app = app_with(logs=Logs(whitelist=["job.completed"], levels={"job.completed": "DEBUG"}))
    logging.getLogger("conveyor.events").setLevel(logging.INFO)
    try:
        @app.job(name="work")
        def work() -> None:
            pass

        work.send()
        run_until_idle(app)
    finally:
        logging.getLogger("conveyor.events").setLevel(logging.NOTSET)
    assert json_logs.signal("job.completed") == []


def test_sensitive_fields_are_redacted_in_extras_and_nested_args(json_logs: JsonLines) -> None:
    app = app_with(logs=None)

    @app.job(name="login")
    def login(user: str, password: str) -> None:
        user_log.info("login", extra={"call_args": [user, {"password": password}],
                                      "call_kwargs": {"user": user, "auth": {"Token": "t0k"}}})

    login.send("ann", password="hunter2")
    run_until_idle(app)
    [line] = json_logs.logger("myproject.tasks")
    assert line["attributes"] == {
        "call_args": ["ann", {"password": "[REDACTED]"}],
        "call_kwargs": {"user": "ann", "auth": {"Token": "[REDACTED]"}},
    }
    assert "hunter2" not in json.dumps(json_logs.lines())


def test_signal_attributes_are_redacted_with_telemetry_and_logs_lists(json_logs: JsonLines) -> None:
    app = app_with(redact=["api_token"], logs=Logs(whitelist=[SIGNUP], redact=["email"]))
    app.emit(SIGNUP, email="ann@example.com", api_token="abc")
    [line] = json_logs.signal("user.signup")
    assert line["attributes"] == {"email": "[REDACTED]", "api_token": "[REDACTED]"}
    assert line["severity"] == "INFO"


def test_exceptions_logged_by_users_become_the_error_field(json_logs: JsonLines) -> None:
    try:
        raise KeyError("missing")
    except KeyError:
        user_log.exception("lookup failed")
    [line] = json_logs.logger("myproject.tasks")
    assert line["error"]["type"] == "KeyError"
    assert line["body"] == "lookup failed"
    assert "Traceback" in line["error"]["traceback"]


def test_trace_ids_are_added_inside_a_traced_job(json_logs: JsonLines, spans: Spans) -> None:
    app = App("memory://", telemetry=Telemetry(tracer_provider=spans.provider, logs=None,
                                               metrics=[]))

    @app.job(name="work")
    async def work() -> None:
        user_log.info("traced")

    work.send()
    run_until_idle(app)
    [line] = json_logs.logger("myproject.tasks")
    [process] = spans.finished("process default")
    assert line["trace_id"] == f"{process.context.trace_id:032x}"
    assert line["span_id"] == f"{process.context.span_id:016x}"


@pytest.fixture
def restore_factory() -> Iterator[None]:
    factory = logging.getLogRecordFactory()
    yield
    logging.setLogRecordFactory(factory)


def test_record_factory_puts_job_fields_on_every_record(restore_factory: None) -> None:
    install_record_factory()
    install_record_factory()  # idempotent
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(job_type)s %(attempt)s %(message)s"))
    user_log.addHandler(handler)
    user_log.setLevel(logging.INFO)
    app = app_with(logs=None)

    @app.job(name="plain")
    def plain() -> None:
        user_log.info("hello")

    try:
        plain.send()
        run_until_idle(app)
    finally:
        user_log.removeHandler(handler)
        user_log.setLevel(logging.NOTSET)
    assert stream.getvalue() == "plain 1 hello\n"


def test_configure_logging_is_idempotent() -> None:
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    stream = io.StringIO()
    try:
        first = configure_logging("INFO", "json", stream=stream)
        second = configure_logging("WARNING", "json", stream=stream)
        assert first is second
        assert [h for h in root.handlers if h not in before] == [first]
        assert isinstance(first.formatter, JsonFormatter)
        assert root.level == logging.WARNING
    finally:
        for h in root.handlers[:]:
            if h not in before:
                root.removeHandler(h)
        root.setLevel(level)
