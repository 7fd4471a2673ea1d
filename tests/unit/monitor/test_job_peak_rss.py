"""Per-job peak RSS: a short spike inside a job is its peak (Linux high-water mark), else sampled RSS."""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

import pytest

from conveyor import App
from conveyor.monitor import JOB_RESOURCES, AlertManager, MonitorConfig, ResourceMonitor
from conveyor.testing import capture_signals, run_until_idle

MB = 1024 * 1024
linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the exact peak needs Linux /proc")


def spike(mb: int) -> None:
    """Allocate ``mb`` MiB, touch every page so it is resident, and free it."""
    block = bytearray(mb * MB)
    for i in range(0, len(block), 4096):
        block[i] = 1
    del block


@linux
def test_a_short_memory_spike_inside_a_job_is_its_peak(app: App) -> None:
    mon = ResourceMonitor(MonitorConfig(), AlertManager([]))
    mon.attach(app.bus)

    @app.job(name="spike")
    def spiky() -> None:
        spike(200)

    with capture_signals(app, [JOB_RESOURCES]) as events:
        spiky.send()
        run_until_idle(app, concurrency=1)
    [event] = events
    assert event.attrs["rss_peak_growth_bytes"] >= 150 * MB
    assert event.attrs["rss_retained_bytes"] < 50 * MB  # it was freed
    assert (event.attrs["rss_peak_exact"], event.attrs["concurrent_jobs"]) == (True, 1)
    assert mon.usage["spike"].rss_peak_growth >= 150 * MB


@linux
def test_jobs_running_together_share_the_peak_of_the_set(app: App) -> None:
    mon = ResourceMonitor(MonitorConfig(), AlertManager([]))
    mon.attach(app.bus)
    both_running = threading.Barrier(2, timeout=30)

    @app.job(name="spike")
    def spiky() -> None:
        both_running.wait()
        spike(200)

    @app.job(name="light")
    def light() -> None:
        both_running.wait()

    with capture_signals(app, [JOB_RESOURCES]) as events:
        spiky.send()
        light.send()
        run_until_idle(app, concurrency=2)
    by_type = {e.attrs["job_type"]: e.attrs for e in events}
    assert by_type["spike"]["rss_peak_growth_bytes"] >= 150 * MB
    assert by_type["spike"]["concurrent_jobs"] == by_type["light"]["concurrent_jobs"] == 2


def test_without_the_high_water_mark_the_peak_falls_back_to_samples(
    app: App, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from conveyor.monitor.peak import PeakRss

    peak = PeakRss(tmp_path / "no-proc")  # as on a system without /proc/self/clear_refs
    mon = ResourceMonitor(MonitorConfig(), AlertManager([]), peak=peak)
    mon.attach(app.bus)
    kept: list[bytearray] = []

    @app.job(name="hog")
    def hog() -> None:
        block = bytearray(40 * MB)
        for i in range(0, len(block), 4096):
            block[i] = 1
        kept.append(block)

    with caplog.at_level(logging.INFO, "conveyor.monitor.resources"), capture_signals(app, [JOB_RESOURCES]) as events:
        hog.send()
        hog.send()
        run_until_idle(app, concurrency=1)
    assert [e.attrs["rss_peak_exact"] for e in events] == [False, False]
    assert events[0].attrs["rss_peak_growth_bytes"] >= 30 * MB  # RSS at its end, still held
    fallbacks = [r for r in caplog.records if "falls back to sampled RSS" in r.getMessage()]
    assert len(fallbacks) == 1  # said once, not per job
    kept.clear()
