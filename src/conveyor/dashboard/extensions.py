"""The app's optional extensions the dashboard reads: job history and the monitor."""

from __future__ import annotations

import time
from typing import Any

from ..app import App
from ..history import History, HistoryNotInstalled, history_of
from ..monitor.alerts import RESOLVED, AlertManager
from ..monitor.extension import Monitor, monitor_of
from ..monitor.health import HealthMonitor, HealthReport


def find_history(app: App) -> History | None:
    """The app's History extension, or None."""
    try:
        return history_of(app)
    except HistoryNotInstalled:
        return None


class Monitoring:
    """Health checks and alerts for the dashboard, with the app's :class:`Monitor` config.

    The dashboard evaluates the checks itself every ``config.interval`` seconds
    into an alert manager without sinks: alerts become active and resolved as
    the workers' monitor sees them, and the dashboard notifies no one. Having no
    sink, it takes no alert cooldown lock, so it never holds back an alert from
    the monitor that delivers it.
    """

    def __init__(self, app: App, monitor: Monitor) -> None:
        self.config = monitor.config
        self.heartbeat_timeout: float = self.config.heartbeat_timeout
        self.health = HealthMonitor(app, self.config, AlertManager((), cooldown=self.config.cooldown))
        self._due = 0.0

    async def refresh(self, now: float | None = None) -> None:
        """Evaluate the checks when due."""
        now = time.time() if now is None else now
        if now >= self._due:
            self._due = now + self.config.interval
            await self.health.evaluate(alert=True)

    def active_alerts(self) -> list[dict[str, Any]]:
        """Active alerts, most severe first, each with ``since``."""
        return [{**a.alert.to_dict(), "since": a.since} for a in self.health.alerts.active()]

    def resolved_alerts(self, window: float = 3600.0) -> list[dict[str, Any]]:
        """Alerts resolved in the last ``window`` seconds, newest first."""
        cutoff = time.time() - window
        found = [n.to_dict() for n in list(self.health.alerts.history) if n.kind == RESOLVED and n.at >= cutoff]
        return found[::-1]

    def report(self) -> HealthReport | None:
        """The latest evaluation: every check's result, forecasts and lost workers."""
        return self.health.last_report


def find_monitoring(app: App) -> Monitoring | None:
    """Monitoring for the app's Monitor extension, or None without one."""
    monitor = monitor_of(app)
    return None if monitor is None else Monitoring(app, monitor)
