"""Retry decisions: exponential backoff with full jitter, and which errors retry."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

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


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do after a failed attempt: retry after ``delay``, or dead-letter for ``reason``."""

    retry: bool
    delay: float = 0.0
    reason: str = ""


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

    def delay_for(self, attempt: int) -> float:
        if isinstance(self.backoff, Backoff):
            return self.backoff.delay(attempt)
        return max(0.0, float(self.backoff(attempt)))

    def decide(self, error: BaseException, attempt: int) -> Decision:
        """Decide the fate of a job whose attempt number ``attempt`` raised ``error``."""
        if isinstance(error, NonRetryable):
            return Decision(False, reason="non_retryable")
        exhausted = attempt >= self.max_attempts
        if isinstance(error, Retry):
            if exhausted:
                return Decision(False, reason="max_attempts_exceeded")
            delay = self.delay_for(attempt) if error.delay is None else max(0.0, error.delay)
            return Decision(True, delay=delay)
        if isinstance(error, JobTimeout):
            if exhausted:
                return Decision(False, reason="timeout")
            return Decision(True, delay=self.delay_for(attempt))
        if not isinstance(error, self.retry_on):
            return Decision(False, reason="non_retryable")
        if exhausted:
            return Decision(False, reason="max_attempts_exceeded")
        return Decision(True, delay=self.delay_for(attempt))
