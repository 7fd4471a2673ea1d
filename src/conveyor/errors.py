"""Exceptions raised by conveyor and the ones handlers raise to steer retries."""

from __future__ import annotations


class ConveyorError(Exception):
    """Base class of every error conveyor raises on its own."""


class ConfigError(ConveyorError):
    """Invalid configuration: a bad broker URL, option or argument."""


class PayloadError(ConveyorError, TypeError):
    """Job arguments that cannot be encoded as JSON."""


class MessageTooLarge(PayloadError):
    """An encoded message larger than the app's ``max_message_size``."""


class UnknownJob(ConveyorError, LookupError):
    """A job type that is not registered with the app."""


class JobTimeout(ConveyorError):
    """A handler ran past its ``timeout``."""


class JobCancelled(ConveyorError):
    """A handler raised ``asyncio.CancelledError`` the worker did not ask for.

    Typically an awaited future or task was cancelled under the handler. It is a
    failure of the attempt like any other error, retried per the job's policy; the
    original ``CancelledError`` is its ``__cause__``.
    """


class Retry(Exception):
    """Raise from a handler to retry the job after ``delay`` seconds.

    The attempt still counts towards ``max_attempts``.
    """

    def __init__(self, delay: float | None = None, message: str = "") -> None:
        super().__init__(message or f"retry requested (delay={delay})")
        self.delay = delay


class NonRetryable(Exception):
    """Raise (or subclass) to send a job to the dead-letter queue at once."""
