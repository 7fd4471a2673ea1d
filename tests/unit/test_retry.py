from __future__ import annotations

import pytest

from conveyor import Backoff, JobTimeout, NonRetryable, Retry, RetryPolicy


def test_backoff_ceiling_grows_exponentially_up_to_the_cap() -> None:
    b = Backoff(base=1, factor=2, maximum=10)
    assert [b.ceiling(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert b.ceiling(10_000) == 10


def test_full_jitter_draws_between_zero_and_the_ceiling() -> None:
    b = Backoff(base=1, factor=2, maximum=100)
    seen = [b.delay(4) for _ in range(500)]
    assert all(0 <= d <= 8 for d in seen)
    assert min(seen) < 2 and max(seen) > 6  # spread over the whole range


def test_no_jitter_returns_the_ceiling() -> None:
    assert Backoff(base=0.5, jitter=False).delay(3) == 2.0


def test_invalid_backoff_is_rejected() -> None:
    with pytest.raises(ValueError):
        Backoff(factor=0.5)


def test_decisions() -> None:
    p = RetryPolicy(max_attempts=3, backoff=Backoff(base=1, jitter=False), retry_on=(OSError,))
    assert p.decide(OSError(), 1).retry and p.decide(OSError(), 1).delay == 1
    assert p.decide(OSError(), 3).reason == "max_attempts_exceeded"
    assert p.decide(KeyError(), 1).reason == "non_retryable"
    assert p.decide(NonRetryable(), 1).reason == "non_retryable"
    assert p.decide(Retry(delay=7), 1).delay == 7
    assert p.decide(Retry(), 2).delay == 2
    assert p.decide(Retry(), 3).reason == "max_attempts_exceeded"
    assert p.decide(JobTimeout(), 1).retry
    assert p.decide(JobTimeout(), 3).reason == "timeout"


def test_callable_backoff() -> None:
    p = RetryPolicy(backoff=lambda n: n * 10.0)
    assert p.decide(ValueError(), 2).delay == 20


def test_max_attempts_must_be_positive() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
