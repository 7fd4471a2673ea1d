"""The resource monitor: thresholds on a scripted process, and real per-job-type attribution."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest

from conveyor import App
from conveyor.monitor import JOB_RESOURCES, AlertManager, MonitorConfig, Notification, ResourceMonitor
from conveyor.testing import capture_signals, run_until_idle

MB = 1024 * 1024


class FakeProcess:
    """A psutil.Process stand-in whose RSS and CPU the test sets."""

    def __init__(self) -> None:
        self.rss = 100 * MB
        self.cpu = 0.0
        self.cpu_seconds = 0.0

    def memory_info(self) -> Any:
        return SimpleNamespace(rss=self.rss)

    def cpu_times(self) -> Any:
        return SimpleNamespace(user=self.cpu_seconds, system=0.0)

    def cpu_percent(self, interval: float | None = None) -> float:
        return self.cpu


class Recorder:
    def __init__(self) -> None:
        self.got: list[Notification] = []

    def send(self, notification: Notification) -> None:
        self.got.append(notification)

    def of(self, name: str) -> list[str]:
        return [f"{n.kind}:{n.alert.severity}" for n in self.got if n.alert.name == name]


def monitor(**config: Any) -> tuple[ResourceMonitor, FakeProcess, Recorder]:
    proc, rec = FakeProcess(), Recorder()
    cfg = MonitorConfig(**{"resource_window": 4, "cooldown": 60, **config})
    mon = ResourceMonitor(cfg, AlertManager([rec], cooldown=cfg.cooldown), process=proc)  # type: ignore[arg-type]
    mon.worker_id = "w1"
    return mon, proc, rec


def test_rss_over_thresholds_fires_once_escalates_and_resolves() -> None:
    mon, proc, rec = monitor(rss_warning_mb=200, rss_critical_mb=400, rss_growth_mb=10_000)
    for _ in range(4):
        mon.check()
    assert rec.of("worker_memory") == []
    proc.rss = 300 * MB
    for _ in range(4):  # the rolling average crosses 200 MiB, then stays there
        mon.check()
    assert rec.of("worker_memory") == ["fired:warning"]
    assert rec.got[0].alert.labels == {"worker": "w1"}
    proc.rss = 500 * MB
    for _ in range(4):
        mon.check()
    assert rec.of("worker_memory") == ["fired:warning", "fired:critical"]
    proc.rss = 50 * MB
    for _ in range(4):  # the average falls back through the warning band (no notification), then clears
        mon.check()
    assert rec.of("worker_memory") == ["fired:warning", "fired:critical", "resolved:warning"]


def test_steady_rss_growth_is_a_warning_until_it_stops() -> None:
    mon, proc, rec = monitor(rss_growth_mb=30)
    for _ in range(4):
        proc.rss += 20 * MB
        mon.check()
    assert rec.of("worker_memory_growing") == ["fired:warning"]
    assert rec.got[0].alert.value == pytest.approx(60.0)
    for _ in range(2):
        proc.rss += 20 * MB
        mon.check()
    assert rec.of("worker_memory_growing") == ["fired:warning"]  # still growing: no repeat within the cooldown
    mon.check()  # flat: the growth is no longer steady
    assert rec.of("worker_memory_growing") == ["fired:warning", "resolved:warning"]


def test_high_average_cpu_is_a_warning() -> None:
    mon, proc, rec = monitor(cpu_warning_percent=80)
    proc.cpu = 95.0
    for _ in range(3):
        mon.check()
    assert rec.of("worker_cpu") == ["fired:warning"]
    proc.cpu = 5.0
    for _ in range(4):
        mon.check()
    assert rec.of("worker_cpu") == ["fired:warning", "resolved:warning"]


def test_memory_and_cpu_are_attributed_to_job_types(app: App) -> None:
    kept: list[bytearray] = []
    mon = ResourceMonitor(MonitorConfig(), AlertManager([]))
    mon.attach(app.bus)

    @app.job(name="hog")
    def hog() -> None:
        block = bytearray(40 * MB)
        for i in range(0, len(block), 4096):  # touch every page so it is resident
            block[i] = 1
        kept.append(block)

    @app.job(name="spin")
    def spin() -> None:
        end = time.process_time() + 0.2
        while time.process_time() < end:
            pass

    @app.job(name="light")
    def light() -> None:
        pass

    with capture_signals(app, [JOB_RESOURCES]) as events:
        hog.send()
        spin.send()
        light.send()
        run_until_idle(app, concurrency=1)
    usage = mon.usage
    assert usage["hog"].runs == 1 and usage["hog"].rss_retained >= 30 * MB
    assert usage["hog"].rss_peak_growth >= 30 * MB
    assert usage["spin"].cpu_time >= 0.15
    assert usage["light"].rss_retained < 5 * MB
    assert mon.top_consumers(1)[0][0] == "hog"
    by_type = {e.attrs["job_type"]: e.attrs for e in events}
    assert set(by_type) == {"hog", "spin", "light"} and by_type["hog"]["rss_retained_bytes"] >= 30 * MB
    mon.samples.append(mon.sample())
    assert "hog kept" in mon._blame()
    kept.clear()
