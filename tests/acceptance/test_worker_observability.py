"""The seed scenario of examples/worker_observability: 100 email jobs, 5 failing for good.

Checked twice: in-process (real Prometheus HTTP server on a free port, JSON logs,
spans in an in-memory exporter) and through the ``conveyor worker`` CLI.
"""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client.parser import text_string_to_metric_families

from conveyor.telemetry import JobContextFilter, JsonFormatter, serve_metrics
from conveyor.testing import run_until_idle

pytestmark = pytest.mark.acceptance

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "worker_observability"
COMPLETED = 'jobs_completed_total{job_type="email",queue="default"}'
FAILED = 'jobs_failed_total{job_type="email",queue="default"}'


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("worker_observability_app", EXAMPLE / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def exact_sample(text: str, series: str) -> float:
    """The value of the one exposition line for ``series`` (name plus labels, as printed)."""
    lines = [line for line in text.splitlines() if line.startswith(series + " ")]
    assert len(lines) == 1, f"expected one line for {series}, got {lines}"
    value = lines[0][len(series) + 1:]
    assert re.fullmatch(r"\d+(\.0)?", value), lines[0]
    return float(value)


def assert_seed_metrics(text: str) -> None:
    assert exact_sample(text, COMPLETED) == 95
    assert exact_sample(text, FAILED) == 5
    names = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    assert {"jobs_completed_total", "jobs_failed_total", "job_duration_ms_count",
            "queue_depth"} <= names
    assert "job_id" not in text


def assert_failure_logs(lines: list[dict[str, Any]], failing_ids: set[str]) -> None:
    failed = [x for x in lines if x.get("signal") == "job.failed"]
    assert {x["job_id"] for x in failed} == failing_ids
    for line in failed:
        assert (line["job_type"], line["queue"], line["severity"]) == ("email", "default", "ERROR")
        assert line["error"]["type"] == "NonRetryable"
        assert "does not exist" in line["error"]["message"]
        assert "Traceback" in line["error"]["traceback"]


@pytest.fixture
def json_log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(JobContextFilter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def test_seed_scenario_in_process(json_log_stream: io.StringIO) -> None:
    example = load_example()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = example.build_app("memory://", tracer_provider=provider)
    server = serve_metrics(app.telemetry.registry, "127.0.0.1", 0)
    try:
        ids = example.enqueue_all(app)
        result = run_until_idle(app, concurrency=10)
        text = scrape(server.port)
    finally:
        server.close()
    assert (result.counters.completed, result.counters.dead) == (95, 5)
    failing_ids = {ids[n] for n in example.FAILING}
    assert len(failing_ids) == 5

    # Metrics, over HTTP from the real prometheus_client server.
    assert_seed_metrics(text)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    duration = {s.name: s.value for s in families["job_duration_ms"].samples if "le" not in s.labels}
    assert duration["job_duration_ms_count"] == 100
    assert duration["job_duration_ms_sum"] >= 100  # each attempt sleeps >= 1 ms

    # JSON logs: every failure, with job context and the error; user lines carry context too.
    lines = [json.loads(x) for x in json_log_stream.getvalue().splitlines()]
    assert_failure_logs(lines, failing_ids)
    user_lines = [x for x in lines if x["logger"] == "examples.email"]
    assert len(user_lines) == 100
    assert {x["job_id"] for x in user_lines} == set(ids)
    assert all(x["attributes"]["smtp_password"] == "[REDACTED]" for x in user_lines)

    # Spans: one job_processing span per job, with its attributes; errors on the failures.
    spans = exporter.get_finished_spans()
    processing = [s for s in spans if s.name == "job_processing"]
    per_job = Counter(attr(s, "job_id") for s in processing)
    assert per_job == Counter(set(ids))
    for span in processing:
        assert (attr(span, "job_type"), attr(span, "queue")) == ("email", "default")
        failed = attr(span, "job_id") in failing_ids
        assert (span.status.status_code is StatusCode.ERROR) == failed
        if failed:
            assert attr(span, "error.type") == "NonRetryable"

    # The producer's trace continues in the worker: same trace, parent = publish span.
    publish = {attr(s, "messaging.message.id"): s for s in spans if s.kind is SpanKind.PRODUCER}
    process = {attr(s, "messaging.message.id"): s for s in spans if s.kind is SpanKind.CONSUMER}
    assert set(publish) == set(process) == set(ids)
    for job_id, consumer in process.items():
        producer = publish[job_id]
        assert consumer.context.trace_id == producer.context.trace_id
        assert consumer.parent is not None and consumer.parent.span_id == producer.context.span_id
    provider.shutdown()


def attr(span: ReadableSpan, key: str) -> Any:
    assert span.attributes is not None
    return span.attributes[key]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_seed_scenario_through_the_cli(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/jobs.db"
    example = load_example()
    sender = example.build_app(url)
    ids = example.enqueue_all(sender)
    sender.close()
    failing_ids = {ids[n] for n in example.FAILING}

    port = free_port()
    exe = Path(sys.executable).with_name("conveyor")
    cli = [str(exe)] if exe.exists() else [sys.executable, "-m", "conveyor"]
    env = {**os.environ, "CONVEYOR_BROKER_URL": url}
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    log_path = tmp_path / "worker.log"  # a file, not a pipe nobody drains while it runs
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [*cli, "worker", "app:app", "--concurrency", "10", "--log-format", "json",
             "--metrics-port", str(port)],
            cwd=EXAMPLE, env=env, stdout=subprocess.DEVNULL, stderr=log_file,
        )
    text = ""
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, "worker exited early"
            try:
                text = scrape(port)
            except OSError:
                time.sleep(0.1)
                continue
            if COMPLETED + " 95.0" in text and FAILED + " 5.0" in text:
                break
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    err = log_path.read_text()
    assert proc.returncode == 0, err
    assert_seed_metrics(text)
    lines = [json.loads(x) for x in err.splitlines() if x.startswith("{")]
    assert_failure_logs(lines, failing_ids)
