"""User errors: one clear line, a non-zero exit and no traceback; API payload errors raise."""

from __future__ import annotations

import subprocess

import pytest

from conveyor import MessageTooLarge, PayloadError
from conveyor.job import DEFAULT_MAX_MESSAGE_SIZE

from .conftest import APP, Core

pytestmark = pytest.mark.acceptance

# Besides its one "Error: ..." line, click prints a usage hint for usage errors
# ("Usage: ..." and "Try '... --help' for help."); nothing else may appear.
USAGE_HINT = ("Usage: ", "Try '")


def assert_user_error(r: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert r.returncode not in (0, None), f"exit code {r.returncode}; stderr:\n{r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stdout == "", f"nothing belongs on stdout, got {r.stdout!r}"
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1, f"expected exactly one 'Error: ' line:\n{r.stderr}"
    others = [line for line in lines if not line.startswith(("Error: ", *USAGE_HINT))]
    assert not others, f"unexpected stderr lines {others}:\n{r.stderr}"
    for fragment in fragments:
        assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"
    return errors[0]


CASES = {
    "app-without-colon": (["stats", "core_jobs"], ["APP must look like module:attribute", "'core_jobs'"]),
    "app-missing-module": (["stats", "no_such_module_xyz:app"], ["cannot import module 'no_such_module_xyz'"]),
    "app-missing-attribute": (["enqueue", "core_jobs:nope", "core.record"], ["no attribute 'nope'"]),
    "app-not-an-app": (["dlq", "list", "core_jobs:not_an_app"], ["core_jobs:not_an_app is a dict", "conveyor.App"]),
    "worker-bad-app": (["worker", "no_such_module_xyz:app", "--burst"], ["cannot import module"]),
    "args-bad-json": (["enqueue", APP, "core.record", "--args", "[1,"], ["--args", "not valid JSON"]),
    "args-not-a-list": (["enqueue", APP, "core.record", "--args", '{"label": "x"}'], ["--args", "JSON list"]),
    "kwargs-not-an-object": (["enqueue", APP, "core.record", "--kwargs", '["x"]'], ["--kwargs", "JSON object"]),
    "unknown-job": (["enqueue", APP, "core.nope", "--args", '["x"]'], ["unknown job 'core.nope'", "core.record"]),
    "dlq-retry-without-selection": (["dlq", "retry", APP], ["--all", "JOB_ID"]),
    "dlq-purge-without-selection": (["dlq", "purge", APP], ["--all", "JOB_ID"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_core_cli_errors(core: Core, case: str) -> None:
    args, fragments = CASES[case]
    assert_user_error(core.cli(*args), *fragments)
    # A failed command enqueued nothing.
    assert sum(s.ready + s.delayed for s in core.app.stats().values()) == 0


def test_core_api_payload_errors(core: Core) -> None:
    record = core.jobs.record
    for bad in (object(), {1: "int key"}, float("nan"), b"bytes", {"nested": {1, 2}}):
        with pytest.raises(PayloadError):
            record.send(bad)
    with pytest.raises(MessageTooLarge, match="over the limit"):
        record.send("x" * DEFAULT_MAX_MESSAGE_SIZE)
    # A batch holding one oversized job is refused as a whole.
    with pytest.raises(MessageTooLarge):
        core.app.send_jobs([record.message("ok"), record.message("x" * DEFAULT_MAX_MESSAGE_SIZE)])
    assert issubclass(MessageTooLarge, PayloadError)
    assert sum(s.ready + s.delayed for s in core.app.stats().values()) == 0
