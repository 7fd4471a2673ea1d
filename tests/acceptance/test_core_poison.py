"""Poison messages go to the DLQ with a reason; the worker keeps running good jobs."""

from __future__ import annotations

import pytest

from conveyor import Job, Message
from conveyor.job import encode, new_id

from .conftest import Core

pytestmark = pytest.mark.acceptance


def test_core_poison(core: Core) -> None:
    record = core.jobs.record
    before = [record.send(f"before{i}") for i in range(3)]
    # Stored straight through the broker contract, as a buggy or foreign producer might.
    not_json = Message(new_id(), "default", "core.record", b"\xff not json")
    missing_fields = Message(new_id(), "default", "core.record", b'{"queue": "default"}')
    unknown_id = new_id()
    unknown = Message(unknown_id, "default", "core.nope", encode(Job(id=unknown_id, type="core.nope")))
    core.app.run(lambda b: b.enqueue([not_json, missing_fields, unknown]))
    after = [record.send(f"after{i}") for i in range(3)]

    # One consumer, so the poison is handled between good jobs in the same slot.
    w = core.start_worker("-c", "1")
    core.wait_for(lambda: set(core.count("done")) == {*before, *after}, 10, "the good jobs to complete")
    dlq = core.wait_for(lambda: len(core.dlq()) == 3 and core.dlq(), 10, "3 dead letters")

    # Still alive: a job sent now runs too.
    assert w.poll() is None, core.output(w)
    later = record.send("later")
    core.wait_for(lambda: later in core.count("done"), 10, "a job sent after the poison")
    assert core.stop(w) == 0, core.output(w)

    by_id = {d["id"]: d for d in dlq}
    assert set(by_id) == {not_json.id, missing_fields.id, unknown.id}
    assert by_id[not_json.id]["reason"] == "undecodable"
    assert by_id[missing_fields.id]["reason"] == "undecodable"
    assert by_id[unknown.id]["reason"] == "unknown_job_type"
    for d in dlq:
        assert d["error_type"] and d["error_message"], d
        assert d["attempts"] == 1, d
    assert "core.nope" in by_id[unknown.id]["error_message"]
    assert "missing required field `id`" in by_id[missing_fields.id]["error_message"]

    assert core.count("done") == {i: 1 for i in [*before, *after, later]}
    s = core.stats()["default"]
    assert (s["ready"], s["delayed"], s["in_flight"], s["dead"]) == (0, 0, 0, 3)


def test_core_poison_burst_survives(core: Core) -> None:
    """The same poison in a burst run: the worker exits 0 after every good job ran."""
    record = core.jobs.record
    good = [record.send("a")]
    core.app.run(lambda b: b.enqueue([Message(new_id(), "default", "core.record", b"\xff")]))
    good.append(record.send("b"))
    proc = core.burst("-c", "1")
    assert core.count("done") == {i: 1 for i in good}
    assert [d["reason"] for d in core.dlq()] == ["undecodable"]
    assert "1 dead" in core.output(proc)
