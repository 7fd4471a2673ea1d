"""The worker runtime."""

from .executor import Counters
from .runtime import RunningJob, Worker, WorkerConfig, WorkerResult, WorkerService

__all__ = ["Counters", "RunningJob", "Worker", "WorkerConfig", "WorkerResult", "WorkerService"]
