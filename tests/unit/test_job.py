from __future__ import annotations

import datetime as dt
import math
import uuid

import msgspec
import pytest

from conveyor import Job, MessageTooLarge, PayloadError
from conveyor.job import check_json, decode, encode, new_id


def test_new_id_is_uuid7_and_time_ordered() -> None:
    a, b = new_id(), new_id()
    assert uuid.UUID(a).version == 7
    assert a < b


@pytest.mark.parametrize("value", [1, 1.5, "s", None, True, [1, [2]], {"a": {"b": [None]}}, (1, 2)])
def test_plain_json_is_accepted(value: object) -> None:
    check_json(value)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (dt.datetime(2026, 1, 1), "args.when is a datetime.datetime"),
        ({1: "x"}, "int key"),
        (math.nan, "nan"),
        ({1, 2}, "builtins.set"),
        (b"bytes", "builtins.bytes"),
        (object(), "builtins.object"),
    ],
)
def test_non_json_raises_a_clear_payload_error(value: object, fragment: str) -> None:
    path = "args.when" if isinstance(value, dt.datetime) else "args"
    with pytest.raises(PayloadError) as info:
        check_json(value, path)
    assert fragment in str(info.value)


def test_payload_error_is_a_type_error() -> None:
    assert issubclass(PayloadError, TypeError)


def test_encode_round_trips_every_field() -> None:
    job = Job(
        id=new_id(),
        type="t",
        queue="q",
        args=[1, "a"],
        kwargs={"k": [True]},
        max_attempts=5,
        priority=3,
        created_at=1.5,
        scheduled_at=2.5,
        headers={"traceparent": "00-abc"},
    )
    assert decode(encode(job)) == job


def test_encode_enforces_the_size_limit() -> None:
    job = Job(id=new_id(), type="t", args=["x" * 2000])
    with pytest.raises(MessageTooLarge, match="over the limit of 1000 bytes"):
        encode(job, max_size=1000)
    assert len(encode(job, max_size=3000)) < 3000


@pytest.mark.parametrize("body", [b"\xff not json", b'{"args": []}', b'{"id": 1, "type": "t"}'])
def test_decode_rejects_malformed_bodies(body: bytes) -> None:
    with pytest.raises((msgspec.DecodeError, msgspec.ValidationError)):
        decode(body)
