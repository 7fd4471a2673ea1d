"""What every benchmark job calls: an in-process counter, no I/O until the end.

Configured by environment variables that the harness sets on the worker:

* ``BENCH_OUT``     path prefix for the files this writes
* ``BENCH_MODE``    ``drain`` or ``latency``
* ``BENCH_EXPECT``  how many (non warm-up) jobs to wait for

Drain mode: the first job records its start time, the ``BENCH_EXPECT``-th job
records its time and this process's RSS and writes ``BENCH_OUT.done`` (JSON).
Latency mode: a job whose ``ts`` is negative is a warm-up and only creates
``BENCH_OUT.ready``; every other job records ``time.time() - ts`` in memory,
and the ``BENCH_EXPECT``-th one writes them all to ``BENCH_OUT.done``.

The job body is this function and nothing else, for every system alike: a
lock, a counter, a ``time.time()``, and one file write at the very end.
Standard library only: it is imported by workers in every bench virtualenv.
"""

from __future__ import annotations

import json
import os
import threading
import time

_lock = threading.Lock()
_out = os.environ.get("BENCH_OUT", "")
_mode = os.environ.get("BENCH_MODE", "drain")
_expect = int(os.environ.get("BENCH_EXPECT", "0") or 0)
_count = 0
_first = 0.0
_lat: list[float] = []
_ready = False


def rss_kb(pid: int | str = "self") -> int:
    """Resident set size of a process in KiB, from /proc."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _write(suffix: str, data: dict) -> None:
    if not _out:
        return
    tmp = f"{_out}{suffix}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, _out + suffix)


def hit(ts: float = 0.0) -> None:
    """Record one job. ``ts`` is the sender's ``time.time()`` (latency mode)."""
    global _count, _first, _ready
    now = time.time()
    if ts < 0:
        if not _ready:
            with _lock:
                if not _ready:
                    _ready = True
                    _write(".ready", {"t": now, "pid": os.getpid()})
        return
    with _lock:
        _count += 1
        n = _count
        if n == 1:
            _first = now
        if _mode == "latency":
            _lat.append(now - ts)
        if n != _expect:
            return
    data = {
        "first": _first, "last": now, "count": n, "pid": os.getpid(), "rss_kb": rss_kb(),
        "threads": threading.active_count(),
    }
    if _mode == "latency":
        data["latencies"] = _lat
    _write(".done", data)


def reset(out: str, mode: str, expect: int) -> None:
    """Re-arm the recorder (for in-process runs)."""
    global _out, _mode, _expect, _count, _first, _lat, _ready
    with _lock:
        _out, _mode, _expect = out, mode, expect
        _count, _first, _lat, _ready = 0, 0.0, [], False
