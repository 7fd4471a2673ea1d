"""The :class:`Monitor` extension: alerts, the health monitor and the resource monitor for an app."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..errors import ConfigError
from .alerts import AlertManager, AlertSink
from .config import MonitorConfig
from .health import HealthMonitor, MonitorService
from .resources import ResourceMonitor
from .sinks import BusSink, LogSink

if TYPE_CHECKING:
    from ..app import App
    from ..history.store import HistoryStore


class Monitor:
    """Health checks and alerts: ``App(url, extensions=[History(), Monitor(MonitorConfig(...))])``.

    ``sinks`` receive alert notifications (default: :class:`LogSink`); the bus
    always gets ``alert.fired`` / ``alert.resolved``. ``health`` adds the leader-
    elected health monitor to every worker, ``resources`` the per-process RSS/CPU
    monitor. ``history`` overrides the store of the app's History extension.
    """

    def __init__(
        self,
        config: MonitorConfig | None = None,
        sinks: Iterable[AlertSink] | None = None,
        *,
        health: bool = True,
        resources: bool = True,
        history: HistoryStore | None = None,
    ) -> None:
        self.config = config or MonitorConfig()
        self.sinks = list(sinks) if sinks is not None else [LogSink()]
        self.alerts = AlertManager(self.sinks, cooldown=self.config.cooldown)
        self.health_enabled = health
        self.resources_enabled = resources
        self._history = history
        self.app: App | None = None
        self.health: HealthMonitor | None = None
        self.resources: ResourceMonitor | None = None

    def __repr__(self) -> str:
        return f"Monitor(interval={self.config.interval:g}s, sinks={len(self.sinks)})"

    def install(self, app: App) -> None:
        """Add the bus sink and the worker services to ``app`` (one app per Monitor)."""
        if self.app is not None and self.app is not app:
            raise ConfigError("a Monitor is installed on one app; create one per app")
        if self.app is app:
            return
        self.app = app
        self.alerts.add_sink(BusSink(app.bus))
        self.health = HealthMonitor(app, self.config, self.alerts, self._history)
        if self.health_enabled:
            app.worker_services.append(MonitorService(self.health))
        if self.resources_enabled:
            self.resources = ResourceMonitor(self.config, self.alerts)
            self.resources.attach(app.bus)
            app.worker_services.append(self.resources)

    def close(self) -> None:
        """Flush and close the sinks (the webhook's thread, files)."""
        self.alerts.close()


def monitor_of(app: App) -> Monitor | None:
    """The :class:`Monitor` installed on ``app``, if any."""
    for extension in app.extensions:
        if isinstance(extension, Monitor):
            return extension
    return None
