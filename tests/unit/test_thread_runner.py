"""ThreadRunner: timeouts from a call's start, stuck threads replaced up to the cap, then retired."""

from __future__ import annotations

import asyncio
import threading

import pytest

from conveyor.worker.threads import CallTimedOut, StuckThread, ThreadRunner


async def test_a_stuck_call_is_replaced_its_result_discarded_and_the_extra_thread_retires() -> None:
    loop = asyncio.get_running_loop()
    stuck: list[StuckThread[str]] = []
    returned = asyncio.Event()
    runner = ThreadRunner[str](loop, 1, on_stuck=stuck.append, on_returned=lambda s: returned.set())
    release = threading.Event()
    try:
        with pytest.raises(CallTimedOut):
            await runner.call(lambda: release.wait(30) and "late result", timeout=0.05, tag="a")
        assert [(s.tag, s.replaced, s.stuck, s.short) for s in stuck] == [("a", True, 1, 0)]
        assert runner.threads == 2
        assert await runner.call(lambda: "served", tag="b") == "served"  # by the replacement
        release.set()
        await asyncio.wait_for(returned.wait(), 30)
        for _ in range(500):
            if runner.threads == 1:
                break
            await asyncio.sleep(0.01)
        assert runner.threads == 1 and runner.stuck() == []
        assert await runner.call(lambda: "still serving", tag="c") == "still serving"
    finally:
        release.set()
        runner.stop()


async def test_a_call_cancelled_while_waiting_for_a_thread_never_starts() -> None:
    loop = asyncio.get_running_loop()
    runner = ThreadRunner[str](loop, 1, spare=0)
    release = threading.Event()
    ran: list[str] = []
    try:
        busy = asyncio.ensure_future(runner.call(lambda: release.wait(30), tag="busy"))
        waiting = asyncio.ensure_future(runner.call(lambda: ran.append("waiting"), tag="waiting"))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        release.set()
        await busy
        assert await runner.call(lambda: "next", tag="next") == "next"
        assert ran == []
    finally:
        release.set()
        runner.stop()


async def test_a_report_callback_that_raises_loses_no_result(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()

    def broken(report: StuckThread[str]) -> None:
        raise RuntimeError("reporting bug")

    runner = ThreadRunner[str](loop, 2, on_stuck=broken, on_returned=broken)
    release = threading.Event()
    try:
        with pytest.raises(CallTimedOut):
            await runner.call(lambda: release.wait(30) and "late", timeout=0.05, tag="stuck")
        # The stuck call returns in the same batch as calls finishing on the other threads.
        quick = [asyncio.ensure_future(runner.call(lambda n=n: release.wait(30) and n, tag=f"q{n}")) for n in range(2)]
        await asyncio.sleep(0.05)
        release.set()
        assert await asyncio.wait_for(asyncio.gather(*quick), 10) == [0, 1]
        assert any("reporting a stuck thread failed" in r.getMessage() for r in caplog.records)
    finally:
        release.set()
        runner.stop()
