"""The worker runtime."""

from .executor import Counters
from .runtime import Worker, WorkerConfig, WorkerResult

__all__ = ["Counters", "Worker", "WorkerConfig", "WorkerResult"]
