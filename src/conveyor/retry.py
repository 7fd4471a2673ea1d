"""Retry decisions: exponential backoff with full jitter, and which errors retry."""

from __future__ import annotations

import math
import numbers
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from .errors import JobTimeout, NonRetryable, Retry


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter and a cap.

    The delay before retry ``n`` (1-based) is drawn uniformly from
    ``[0, min(maximum, base * factor ** (n - 1))]``; with ``jitter=False`` it is
    that upper bound itself.
    """

    base: float = 1.0
    factor: float = 2.0
    maximum: float = 300.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if self.base < 0 or self.factor < 1 or self.maximum < 0:
            raise ValueError("Backoff needs base >= 0, factor >= 1 and maximum >= 0")

    def ceiling(self, attempt: int) -> float:
        """The largest delay for retry number ``attempt``."""
        exponent = max(attempt - 1, 0)
        try:
            raw = self.base * self.factor**exponent
        except OverflowError:
            return self.maximum
        return min(self.maximum, raw)

    def delay(self, attempt: int, rng: Callable[[float, float], float] = random.uniform) -> float:
        """The delay in seconds before retry number ``attempt``."""
        ceiling = self.ceiling(attempt)
        return rng(0.0, ceiling) if self.jitter else ceiling


BackoffLike = Backoff | Callable[[int], float]

DEFAULT_BACKOFF = Backoff()
"""The fallback when a job's own backoff raises or returns something that is not a delay."""


def checked_delay(value: Any, source: str) -> float:
    """``value`` as seconds: a finite real number >= 0 or a ``timedelta``; ``ValueError`` otherwise."""
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, numbers.Real) and not isinstance(seconds, bool):
        seconds = float(seconds)
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    raise ValueError(f"{source} gave {value!r}, which is not a delay (a finite number of seconds >= 0)")


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do after a failed attempt: retry after ``delay``, or dead-letter for ``reason``.

    ``backoff_error`` is set when a delay was unusable (it raised, or was not a finite number
    of seconds >= 0) and ``delay`` is a fallback: the job's backoff instead of a bad
    ``Retry(delay=...)``, :data:`DEFAULT_BACKOFF` instead of a bad backoff.
    """

    retry: bool
    delay: float = 0.0
    reason: str = ""
    backoff_error: Exception | None = None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Decides whether a failed attempt is retried, and when.

    ``retry_on`` lists the exception types worth retrying; anything else, and
    any :class:`NonRetryable`, goes to the dead-letter queue at once.
    """

    max_attempts: int = 3
    backoff: BackoffLike = field(default_factory=Backoff)
    retry_on: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        bad = [c for c in self.retry_on if not (isinstance(c, type) and issubclass(c, BaseException))]
        if bad:
            raise ValueError(f"retry_on takes exception classes, got {', '.join(map(repr, bad))}")

    def delay_for(self, attempt: int) -> float:
        """The backoff before retry number ``attempt``; raises when the backoff is unusable."""
        if isinstance(self.backoff, Backoff):
            return self.backoff.delay(attempt)
        return checked_delay(self.backoff(attempt), f"backoff({attempt})")

    def decide(self, error: BaseException, attempt: int, max_attempts: int | None = None) -> Decision:
        """Decide the fate of a job whose attempt number ``attempt`` raised ``error``.

        ``max_attempts`` is the job's own limit (set per send); it defaults to the policy's.
        """
        if isinstance(error, NonRetryable):
            return Decision(False, reason="non_retryable")
        exhausted = attempt >= (self.max_attempts if max_attempts is None else max_attempts)
        if isinstance(error, Retry):
            if exhausted:
                return Decision(False, reason="max_attempts_exceeded")
            if error.delay is None:
                return self._retry(attempt)
            try:
                return Decision(True, delay=checked_delay(error.delay, "Retry(delay=...)"))
            except ValueError as exc:
                return self._retry(attempt, exc)
        if isinstance(error, JobTimeout):
            if exhausted:
                return Decision(False, reason="timeout")
            return self._retry(attempt)
        if not isinstance(error, self.retry_on):
            return Decision(False, reason="non_retryable")
        if exhausted:
            return Decision(False, reason="max_attempts_exceeded")
        return self._retry(attempt)

    def _retry(self, attempt: int, bad_delay: Exception | None = None) -> Decision:
        """Retry after the backoff; when it raises or is no delay, after :data:`DEFAULT_BACKOFF`'s."""
        try:
            delay = self.delay_for(attempt)
        except Exception as exc:
            return Decision(True, delay=DEFAULT_BACKOFF.delay(attempt), backoff_error=exc)
        return Decision(True, delay=delay, backoff_error=bad_delay)
