"""conveyor: background jobs in which every job is observable."""

from .app import App
from .brokers import Broker, DeadLetter, Delivery, Message, QueueStats, Selector
from .context import JobContext, current_job
from .errors import (
    BrokerUnavailable,
    ConfigError,
    ConveyorError,
    JobCancelled,
    JobTimeout,
    MessageTooLarge,
    NonRetryable,
    PayloadError,
    Retry,
    ServiceUnavailable,
    UnknownJob,
)
from .job import Job
from .middleware import Middleware
from .retry import Backoff, RetryPolicy
from .signals import (
    BoolKey,
    Bus,
    DurationKey,
    ErrorInfo,
    ErrorKey,
    Event,
    FloatKey,
    IntKey,
    Signal,
    StringKey,
)
from .worker import Worker, WorkerConfig, WorkerResult

__all__ = [
    "App",
    "Backoff",
    "BoolKey",
    "Broker",
    "BrokerUnavailable",
    "Bus",
    "ConfigError",
    "ConveyorError",
    "DeadLetter",
    "Delivery",
    "DurationKey",
    "ErrorInfo",
    "ErrorKey",
    "Event",
    "FloatKey",
    "IntKey",
    "Job",
    "JobCancelled",
    "JobContext",
    "JobTimeout",
    "Message",
    "MessageTooLarge",
    "Middleware",
    "NonRetryable",
    "PayloadError",
    "QueueStats",
    "Retry",
    "RetryPolicy",
    "Selector",
    "ServiceUnavailable",
    "Signal",
    "StringKey",
    "UnknownJob",
    "Worker",
    "WorkerConfig",
    "WorkerResult",
    "current_job",
]
