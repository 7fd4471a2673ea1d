"""Failure fingerprints: message normalization, top application frame, stability."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import conveyor
from conveyor.history.fingerprint import fingerprint, frames, normalize_message, top_frame
from conveyor.signals import ErrorInfo


def load_user(user: int) -> None:
    raise LookupError(f"user {user} not found")


def load_account(user: int) -> None:
    raise LookupError(f"user {user} not found")


def parse(text: str) -> object:
    return json.loads(text)  # the error is raised inside the stdlib


def error_of(fn: object, *args: object) -> ErrorInfo:
    try:
        fn(*args)  # type: ignore[operator]
    except Exception as exc:
        return ErrorInfo.from_exception(exc)
    raise AssertionError("no error")


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("user 42 not found", "user <n> not found"),
        ("timeout after 1.5s on attempt 3", "timeout after <n>s on attempt <n>"),
        ("order 3f2a9c1e-1111-2222-3333-444455556666 missing", "order <uuid> missing"),
        ("mail to alice.b+x@example.co.uk bounced", "mail to <email> bounced"),
        ("KeyError 'user_id' in \"payload\"", "KeyError <str> in <str>"),
        ("can't open /var/data/2024/export.csv: denied", "can't open <path>: denied"),
        ("object at 0x7f3a2b1c and blob deadbeefcafe01", "object at <hex> and blob <hex>"),
        ("  spaces\n and\tlines  ", "spaces and lines"),
    ],
)
def test_normalize_message_replaces_variable_parts(message: str, expected: str) -> None:
    assert normalize_message(message) == expected


def test_same_cluster_for_messages_differing_in_numbers() -> None:
    a, b = error_of(load_user, 42), error_of(load_user, 97)
    assert a.message != b.message
    assert fingerprint(a.type, a.message, a.traceback, "app.sync") == fingerprint(
        b.type, b.message, b.traceback, "app.sync"
    )
    assert len(fingerprint(a.type, a.message, a.traceback, "app.sync")) == 12


def test_different_top_frames_make_different_clusters() -> None:
    a, b = error_of(load_user, 42), error_of(load_account, 42)
    assert (a.type, a.message) == (b.type, b.message)
    assert top_frame(a.traceback).label == "test_fingerprint.py:load_user"  # type: ignore[union-attr]
    assert top_frame(b.traceback).label == "test_fingerprint.py:load_account"  # type: ignore[union-attr]
    assert fingerprint(a.type, a.message, a.traceback, "j") != fingerprint(b.type, b.message, b.traceback, "j")


def test_job_type_and_error_type_are_part_of_the_fingerprint() -> None:
    a = error_of(load_user, 1)
    assert fingerprint(a.type, a.message, a.traceback, "x") != fingerprint(a.type, a.message, a.traceback, "y")
    assert fingerprint("KeyError", a.message, a.traceback, "x") != fingerprint(a.type, a.message, a.traceback, "x")


EXECUTOR = Path(conveyor.__file__).parent / "worker" / "executor.py"


def test_top_frame_skips_the_standard_library_and_conveyor() -> None:
    err = error_of(parse, "{not json")
    assert any("json" in f.file and "decoder" in f.file for f in frames(err.traceback))
    assert top_frame(err.traceback).label == "test_fingerprint.py:parse"  # type: ignore[union-attr]
    fake = (
        "Traceback (most recent call last):\n"
        '  File "/srv/app/jobs.py", line 3, in handler\n'
        '  File "/usr/lib/python3/site-packages/requests/api.py", line 9, in get\n'
        f'  File "{EXECUTOR}", line 1, in _call\n'
        "ValueError: x\n"
    )
    assert top_frame(fake).label == "jobs.py:handler"  # type: ignore[union-attr]


def test_chained_exceptions_use_the_last_traceback() -> None:
    text = (
        "Traceback (most recent call last):\n"
        '  File "/srv/app/a.py", line 1, in first\n'
        "KeyError: 1\n\nDuring handling of the above exception, another exception occurred:\n\n"
        "Traceback (most recent call last):\n"
        '  File "/srv/app/b.py", line 2, in second\n'
        "ValueError: 2\n"
    )
    assert top_frame(text).label == "b.py:second"  # type: ignore[union-attr]


def test_fingerprint_without_traceback_is_stable() -> None:
    assert top_frame("") is None
    unknown = "UnknownJob"
    assert fingerprint(unknown, "no job type 'x'", "", "x") == fingerprint(unknown, "no job type 'y'", "", "x")
