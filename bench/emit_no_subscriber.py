"""Cost of ``Bus.emit`` when nothing subscribes: nanoseconds per emit.

    .venv/bin/python bench/emit_no_subscriber.py [--emits 200000] [--runs 7]

Emitting validates the attributes whether or not a sink listens, so a wrong key
or value type fails the same way in tests and in production. This measures what
that costs on the path with no subscriber, for:

* ``builtin``: ``job.completed`` with the six attributes the worker passes;
* ``user``: a user signal with two attributes (``app.emit(EMAIL_SENT, ...)``);
* ``wants``: the ``bus.wants(signal)`` check conveyor's own hot emits make first
  (they skip building their attributes when nothing listens).

Each run times ``--emits`` calls in a loop; the report is the median of
``--runs`` runs (and the min and max), in CPU nanoseconds per call (process
time, robust to other load on the machine). The cost of the call itself (an
empty function taking the same six keyword arguments) is shown separately, not
subtracted.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from conveyor import Bus, IntKey, Signal, StringKey
from conveyor import signals as sig

EMAIL_SENT = Signal("email.sent", "An email left the building.", [StringKey("to"), IntKey("bytes")])


def _builtin(bus: Bus, n: int) -> float:
    emit, signal = bus.emit, sig.JOB_COMPLETED
    start = time.process_time_ns()
    for _ in range(n):
        emit(signal, job_id="j", job_type="t", queue="q", attempt=1, worker_id="w", duration=0.5)
    return (time.process_time_ns() - start) / n


def _user(bus: Bus, n: int) -> float:
    emit, signal = bus.emit, EMAIL_SENT
    start = time.process_time_ns()
    for _ in range(n):
        emit(signal, to="ada@example.com", bytes=1234)
    return (time.process_time_ns() - start) / n


def _wants(bus: Bus, n: int) -> float:
    wants, signal = bus.wants, sig.JOB_COMPLETED
    start = time.process_time_ns()
    for _ in range(n):
        if wants(signal):
            raise AssertionError("nothing subscribes")
    return (time.process_time_ns() - start) / n


def _empty(bus: Bus, n: int) -> float:
    def emit(signal: Signal, /, **attrs: object) -> None:
        return None

    signal = sig.JOB_COMPLETED
    start = time.process_time_ns()
    for _ in range(n):
        emit(signal, job_id="j", job_type="t", queue="q", attempt=1, worker_id="w", duration=0.5)
    return (time.process_time_ns() - start) / n


CASES: dict[str, Callable[[Bus, int], float]] = {
    "builtin": _builtin,
    "user": _user,
    "wants": _wants,
    "empty call (6 kwargs)": _empty,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emits", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    bus = Bus()
    results: dict[str, list[float]] = {name: [] for name in CASES}
    for case in CASES.values():
        case(bus, 10_000)  # warm up
    for _ in range(args.runs):  # interleaved, so machine noise spreads over every case
        for name, case in CASES.items():
            results[name].append(case(bus, args.emits))
    print(f"ns per call, no subscriber ({args.runs} runs of {args.emits:,} calls)")
    print(f"{'case':<24}{'median':>8}{'min':>8}{'max':>8}")
    for name, values in results.items():
        print(f"{name:<24}{statistics.median(values):>8.0f}{min(values):>8.0f}{max(values):>8.0f}")


if __name__ == "__main__":
    main()
