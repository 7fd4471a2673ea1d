"""Thresholds and intervals of the health and resource monitors, with sane defaults."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..errors import ConfigError


@dataclass(frozen=True, slots=True)
class QueueThresholds:
    """Per-queue limits; ``None`` falls back to the :class:`MonitorConfig` default."""

    latency_warning: float | None = None
    latency_critical: float | None = None
    size_warning: int | None = None
    size_critical: int | None = None


@dataclass(frozen=True, slots=True)
class MonitorConfig:
    """Everything the monitor checks, and when a value becomes a warning or critical.

    Times are seconds, sizes are counts, rates are fractions (0.2 = 20%), memory
    is MiB. A ``*_critical`` of ``None`` means that check never goes critical.
    """

    # -- the monitor loop ---------------------------------------------------
    interval: float = 15.0
    """Seconds between evaluations."""
    lock_ttl: float | None = None
    """Leader lock TTL; default three intervals."""
    cooldown: float = 300.0
    """The same alert (name and labels) is not sent again within this many seconds."""

    # -- queues -------------------------------------------------------------
    latency_warning: float = 60.0
    """Age of the oldest ready job."""
    latency_critical: float | None = 300.0
    size_warning: int = 1_000
    """Ready jobs in a queue."""
    size_critical: int | None = 10_000
    queues: Mapping[str, QueueThresholds] = field(default_factory=dict)
    """Per-queue overrides of the latency and size thresholds."""
    dlq_window: float = 300.0
    dlq_growth_warning: int = 1
    """New dead letters in ``dlq_window``."""
    dlq_growth_critical: int | None = 50
    backlog_samples: int = 5
    """Evaluations over which a steadily growing ready count is a warning."""
    backlog_min_growth: int = 10
    """How much the ready count must grow over those samples."""

    # -- workers and jobs (need the History extension) ----------------------
    heartbeat_timeout: float = 60.0
    """A running worker whose last heartbeat is older than this is stalled (critical)."""
    stuck_grace: float = 30.0
    """A job is stuck when it runs this long past its timeout (or lease)."""
    stuck_after: float = 3_600.0
    """Run time after which a job without a timeout counts as stuck."""
    forget_worker_after: float = 3_600.0
    """A worker silent for longer than this is gone: no longer reported as stalled."""
    failure_window: float = 300.0
    failure_rate_warning: float = 0.2
    failure_rate_critical: float | None = 0.5
    failure_min_attempts: int = 10
    """Fewer finished attempts in the window than this never alert."""
    retry_loop_attempts: int = 5
    """A job with this many attempts started in ``retry_loop_window`` is looping."""
    retry_loop_window: float = 3_600.0

    # -- resources of each worker process (psutil) --------------------------
    resource_interval: float = 5.0
    resource_window: int = 12
    """Samples in the rolling averages."""
    rss_warning_mb: float = 1_024.0
    rss_critical_mb: float | None = 2_048.0
    rss_growth_mb: float = 200.0
    """RSS rising in every sample of the window by this much in total is a warning."""
    cpu_warning_percent: float = 90.0
    """Rolling average CPU% of the worker process (100 = one core)."""

    # -- forecasts ----------------------------------------------------------
    throughput_window: float = 300.0
    """Window for arrival and completion rates (drain ETA, Little's law)."""
    drain_target: float = 300.0
    """The recommended worker count also drains the current backlog within this many seconds."""

    def __post_init__(self) -> None:
        positive = ("interval", "dlq_window", "failure_window", "resource_interval", "throughput_window")
        for name in (*positive, "drain_target", "heartbeat_timeout", "retry_loop_window"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"MonitorConfig.{name} must be > 0")
        if self.cooldown < 0:
            raise ConfigError("MonitorConfig.cooldown must be >= 0")
        if self.retry_loop_attempts < 2:
            raise ConfigError("MonitorConfig.retry_loop_attempts must be at least 2")
        if self.lock_ttl is not None and self.lock_ttl <= self.interval:
            raise ConfigError("MonitorConfig.lock_ttl must be longer than interval")
        if self.backlog_samples < 2 or self.resource_window < 2:
            raise ConfigError("MonitorConfig.backlog_samples and resource_window must be at least 2")
        pairs = (
            ("latency", self.latency_warning, self.latency_critical),
            ("size", self.size_warning, self.size_critical),
            ("dlq_growth", self.dlq_growth_warning, self.dlq_growth_critical),
            ("failure_rate", self.failure_rate_warning, self.failure_rate_critical),
            ("rss", self.rss_warning_mb, self.rss_critical_mb),
        )
        for name, warning, critical in pairs:
            if critical is not None and critical < warning:
                raise ConfigError(f"MonitorConfig.{name}_critical must be >= {name}_warning")

    @property
    def leader_ttl(self) -> float:
        return self.lock_ttl if self.lock_ttl is not None else 3 * self.interval

    def latency(self, queue: str) -> tuple[float, float | None]:
        """(warning, critical) latency thresholds of ``queue``."""
        q = self.queues.get(queue, QueueThresholds())
        return (
            self.latency_warning if q.latency_warning is None else q.latency_warning,
            self.latency_critical if q.latency_critical is None else q.latency_critical,
        )

    def size(self, queue: str) -> tuple[float, float | None]:
        """(warning, critical) ready-count thresholds of ``queue``."""
        q = self.queues.get(queue, QueueThresholds())
        return (
            self.size_warning if q.size_warning is None else q.size_warning,
            self.size_critical if q.size_critical is None else q.size_critical,
        )
