"""The history scenarios (see scenarios.py) on the SQLite store, in the broker's own file."""

from __future__ import annotations

from . import scenarios as s


def test_timeline_after_retries_then_success(make_app: s.MakeApp) -> None:
    s.timeline_after_retries_then_success(make_app)


def test_dead_job_with_error_and_fingerprint(make_app: s.MakeApp) -> None:
    s.dead_job_with_error_and_fingerprint(make_app)


def test_manual_retry_is_recorded(make_app: s.MakeApp) -> None:
    s.manual_retry_is_recorded(make_app)


def test_manual_retry_seen_by_the_worker(make_app: s.MakeApp) -> None:
    s.manual_retry_seen_by_the_worker(make_app)


def test_manual_retry_recorded_at_once_is_not_recorded_again_by_the_worker(make_app: s.MakeApp) -> None:
    s.manual_retry_recorded_at_once_is_not_recorded_again_by_the_worker(make_app)


def test_lease_expiry_is_recorded(make_app: s.MakeApp) -> None:
    s.lease_expiry_is_recorded(make_app)


def test_retention_prunes_old_jobs(make_app: s.MakeApp) -> None:
    s.retention_prunes_old_jobs(make_app)


def test_failure_clusters_and_retry_loops(make_app: s.MakeApp) -> None:
    s.failure_clusters_and_retry_loops(make_app)


def test_worker_registry_heartbeats(make_app: s.MakeApp) -> None:
    s.worker_registry_heartbeats(make_app)


def test_silent_worker_marked_lost_until_it_heartbeats(make_app: s.MakeApp) -> None:
    s.silent_worker_marked_lost_until_it_heartbeats(make_app)


def test_attempt_over_from_history(make_app: s.MakeApp) -> None:
    s.attempt_over_from_history(make_app)
