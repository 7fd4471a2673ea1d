"""Exceptions raised by conveyor and the ones handlers raise to steer retries."""

from __future__ import annotations

import os


class ConveyorError(Exception):
    """Base class of every error conveyor raises on its own."""


class ConfigError(ConveyorError):
    """Invalid configuration: a bad broker URL, option or argument."""


class ServiceUnavailable(ConveyorError):
    """A service conveyor needs (the broker, the history database) cannot be reached or
    refused the connection. The CLI prints its one-line message and exits with code 69."""


class BrokerUnavailable(ServiceUnavailable):
    """The broker cannot be reached or refused the connection: server down, unknown
    database or role, bad password, unreadable file. The message names the broker (its
    URL without the password) and the driver's reason, on one line."""

    @classmethod
    def connecting(cls, broker: str, url: str, reason: BaseException | str) -> BrokerUnavailable:
        """The error for a failed connection to ``broker`` (``"Redis"``...) at ``url``."""
        from .brokers.display import display_url

        detail = " ".join(str(reason).split()) or type(reason).__name__
        os_error = _os_error(reason)
        if os_error is not None and os_error.lower() not in detail.lower():
            detail += f" ({os_error})"
        return cls(f"cannot connect to the {broker} broker at {display_url(url)}: {detail}")


def _os_error(reason: BaseException | str) -> str | None:
    """The system's wording of the OS error behind ``reason`` ("Connection refused"...), if any."""
    seen: BaseException | None = reason if isinstance(reason, BaseException) else None
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno:
            return os.strerror(seen.errno)
        seen = seen.__cause__ or seen.__context__
    return None


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
