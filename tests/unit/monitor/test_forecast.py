"""Drain ETA and Little's law."""

from __future__ import annotations

import math

import pytest

from conveyor.monitor.forecast import forecast, slope


def test_slope_is_least_squares_per_second() -> None:
    assert slope([(0.0, 10.0), (10.0, 30.0), (20.0, 50.0)]) == pytest.approx(2.0)
    assert slope([(5.0, 1.0)]) is None and slope([(5.0, 1.0), (5.0, 2.0)]) is None


def test_empty_queue_has_no_eta_and_needs_workers_for_its_arrivals() -> None:
    f = forecast("q", ready=0, completed=600, window=60, mean_duration=0.4, size_slope=0.0,
                 concurrency=4, drain_target=300)  # fmt: skip
    assert f.drain_eta == 0 and f.eta_text() == "empty"
    # Little's law: 10 jobs/s * 0.4 s = 4 busy slots = 1 worker of 4
    assert (f.arrival_rate, f.recommended_workers) == (10.0, 1)


def test_growing_backlog_never_drains_and_asks_for_more_workers() -> None:
    f = forecast("q", ready=1000, completed=600, window=60, mean_duration=2.0, size_slope=5.0,
                 concurrency=8, drain_target=100)  # fmt: skip
    assert f.arrival_rate == pytest.approx(15.0) and math.isinf(f.drain_eta) and f.eta_text() == "not draining"
    # (15/s + 1000/100s) * 2 s / 8 = 6.25 -> 7 workers
    assert f.recommended_workers == 7
    assert f.to_dict()["drain_eta_s"] is None


def test_shrinking_backlog_eta_uses_the_net_rate() -> None:
    f = forecast("q", ready=300, completed=600, window=60, mean_duration=0.1, size_slope=-5.0,
                 concurrency=8, drain_target=300)  # fmt: skip
    assert f.drain_eta == pytest.approx(60.0) and f.eta_text() == "60s"


def test_without_samples_the_eta_ignores_new_arrivals() -> None:
    f = forecast("q", ready=120, completed=60, window=60, mean_duration=None, size_slope=None,
                 concurrency=8, drain_target=300)  # fmt: skip
    assert not f.sampled and f.arrival_rate == 1.0 and f.drain_eta == pytest.approx(120.0)
    assert f.recommended_workers == 1  # no duration known: at least one worker for a backlog
    stuck = forecast("q", ready=5, completed=0, window=60, mean_duration=None, size_slope=None,
                     concurrency=8, drain_target=300)  # fmt: skip
    assert math.isinf(stuck.drain_eta)
