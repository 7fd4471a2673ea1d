"""Brokers and the factory that picks one from a URL."""

from .base import (
    LEASE_EXPIRED,
    MANUAL_RETRY,
    MAX_REFUNDED_INTERRUPTIONS,
    WORKER_SHUTDOWN,
    Broker,
    DeadLetter,
    Delivery,
    DlqPosition,
    Failure,
    Message,
    QueueStats,
    Selector,
    position,
)
from .factory import open_broker

__all__ = [
    "LEASE_EXPIRED",
    "MANUAL_RETRY",
    "MAX_REFUNDED_INTERRUPTIONS",
    "WORKER_SHUTDOWN",
    "Broker",
    "DeadLetter",
    "Delivery",
    "DlqPosition",
    "Failure",
    "Message",
    "QueueStats",
    "Selector",
    "open_broker",
    "position",
]
