"""Alerts and the :class:`AlertManager`: fire once per cooldown, notify when resolved.

An alert is identified by its name and labels. The manager sends a ``fired``
notification when an alert becomes active, at most once per ``cooldown`` for
the same identity (a condition that flaps or persists is not re-sent sooner),
and at once when its severity rises. When the condition clears, the alert is
resolved and a ``resolved`` notification is sent if its firing was. Sinks are
in :mod:`conveyor.monitor.sinks`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from .. import signals as sig

log = logging.getLogger("conveyor.monitor")

CRITICAL, WARNING, INFO = "critical", "warning", "info"
SEVERITIES = (INFO, WARNING, CRITICAL)
"""Severities, least severe first."""
FIRED, RESOLVED = "fired", "resolved"

AlertKey = tuple[str, tuple[tuple[str, str], ...]]


def rank(severity: str) -> int:
    """0 for info, 1 for warning, 2 for critical."""
    return SEVERITIES.index(severity)


@dataclass(frozen=True, slots=True)
class Alert:
    """A condition worth telling someone about."""

    name: str
    severity: str = WARNING
    message: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    value: float | None = None

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"alert severity must be one of {', '.join(SEVERITIES)}, not {self.severity!r}")
        if not self.name:
            raise ValueError("an alert needs a name")
        object.__setattr__(self, "labels", {str(k): str(v) for k, v in self.labels.items()})

    @property
    def key(self) -> AlertKey:
        """Name and labels: what makes two alerts "the same"."""
        return self.name, tuple(sorted(self.labels.items()))

    def label_text(self) -> str:
        """Labels as ``k=v,k=v`` (sorted)."""
        return ",".join(f"{k}={v}" for k, v in sorted(self.labels.items()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "severity": self.severity,
            "message": self.message,
            "labels": dict(self.labels),
            "value": self.value,
        }


@dataclass(frozen=True, slots=True)
class Notification:
    """What sinks receive: an alert that fired (again) or resolved."""

    kind: str
    """:data:`FIRED` or :data:`RESOLVED`."""
    alert: Alert
    at: float
    since: float
    """When the alert became active."""
    repeat: bool = False
    """A reminder (the alert stayed active for a whole cooldown) or an escalation."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            **self.alert.to_dict(),
            "at": self.at,
            "since": self.since,
            "repeat": self.repeat,
        }


class AlertSink(Protocol):
    """Receives notifications. ``send`` must return quickly (queue slow work)."""

    def send(self, notification: Notification) -> None: ...


ALERT_NAME = sig.StringKey("alert", "the alert's name (its check)")
SEVERITY = sig.StringKey("severity", "critical, warning or info")
MESSAGE = sig.StringKey("message", "what is wrong, for humans")
LABELS = sig.StringKey("labels", "the alert's labels as k=v,k=v (sorted)")
VALUE = sig.FloatKey("value", "the measured value, when there is one")
SINCE = sig.FloatKey("since", "when the alert became active, epoch seconds")

ALERT_FIRED = sig.Signal(
    "alert.fired",
    "An alert became active (or reminded, or escalated).",
    (ALERT_NAME, SEVERITY, MESSAGE, LABELS, VALUE, SINCE, sig.BoolKey("repeat")),
)
ALERT_RESOLVED = sig.Signal(
    "alert.resolved",
    "An alert's condition cleared.",
    (ALERT_NAME, SEVERITY, MESSAGE, LABELS, VALUE, SINCE, sig.DurationKey("duration", "how long it was active")),
)
SIGNALS = (ALERT_FIRED, ALERT_RESOLVED)


@dataclass(slots=True)
class ActiveAlert:
    """An alert whose condition holds now."""

    alert: Alert
    since: float
    notified: bool = False
    """Whether its firing was sent (it may be held back by the cooldown)."""


class AlertManager:
    """Tracks active alerts, applies the cooldown and fans notifications out to sinks.

    Thread-safe. Feed it with :meth:`update` (the full set of firing alerts of
    some checks) or :meth:`fire` / :meth:`resolve` (one alert at a time).
    """

    def __init__(
        self,
        sinks: Iterable[AlertSink] = (),
        cooldown: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if cooldown < 0:
            raise ValueError("cooldown must be >= 0")
        self.sinks: list[AlertSink] = list(sinks)
        self.cooldown = cooldown
        self.clock = clock
        self._active: dict[AlertKey, ActiveAlert] = {}
        self._last_sent: dict[AlertKey, tuple[float, int]] = {}
        """When each alert was last sent as fired, and at which severity rank."""
        self._lock = threading.Lock()
        self.history: deque[Notification] = deque(maxlen=1000)
        """Notifications sent by this manager, oldest first (the last 1000)."""

    def add_sink(self, sink: AlertSink) -> None:
        self.sinks.append(sink)

    @property
    def delivers(self) -> bool:
        """Whether notifications go anywhere (a manager without sinks only tracks alerts)."""
        return bool(self.sinks)

    def active(self) -> list[ActiveAlert]:
        """Alerts active now, most severe first."""
        with self._lock:
            found = list(self._active.values())
        return sorted(found, key=lambda a: (-rank(a.alert.severity), a.since))

    def update(self, firing: Iterable[Alert], names: Iterable[str] | None = None) -> list[Notification]:
        """Make ``firing`` the active set for alerts named in ``names`` (all alerts when None).

        Alerts of those names not in ``firing`` are resolved; other names are left alone.
        """
        now = self.clock()
        current = {a.key: a for a in firing}
        scope = None if names is None else set(names)
        out: list[Notification] = []
        with self._lock:
            for key, alert in current.items():
                n = self._fire(key, alert, now)
                if n is not None:
                    out.append(n)
            for key in list(self._active):
                if key not in current and (scope is None or key[0] in scope):
                    n = self._resolve(key, now)
                    if n is not None:
                        out.append(n)
        self._send(out)
        return out

    def fire(self, alert: Alert) -> Notification | None:
        """Mark ``alert`` active; returns the notification sent, if any."""
        with self._lock:
            n = self._fire(alert.key, alert, self.clock())
        self._send([n] if n else [])
        return n

    def resolve(self, name: str, labels: Mapping[str, str] | None = None) -> Notification | None:
        """Clear the alert ``name`` with ``labels``; returns the notification sent, if any."""
        key = Alert(name, labels=labels or {}).key
        with self._lock:
            n = self._resolve(key, self.clock())
        self._send([n] if n else [])
        return n

    def forget(self, names: Iterable[str]) -> None:
        """Drop active alerts of ``names`` without notifying (another process now owns them)."""
        drop = set(names)
        with self._lock:
            for key in [k for k in self._active if k[0] in drop]:
                del self._active[key]

    def pending(self, alerts: Iterable[Alert]) -> list[Alert]:
        """Those of ``alerts`` that would be sent as fired now (new, reminder or escalation)."""
        now = self.clock()
        with self._lock:
            return [a for a in alerts if self._due(a.key, a, now)]

    def mark_sent(self, alert: Alert) -> None:
        """Record that another process sent ``alert`` just now: hold it back for the
        cooldown here too, and send its resolve when it clears."""
        now = self.clock()
        with self._lock:
            state = self._active.get(alert.key)
            if state is None:
                state = self._active[alert.key] = ActiveAlert(alert, now)
            state.alert, state.notified = alert, True
            self._last_sent[alert.key] = (now, rank(alert.severity))

    def _due(self, key: AlertKey, alert: Alert, now: float) -> bool:
        last = self._last_sent.get(key)
        escalated = last is not None and rank(alert.severity) > last[1]
        return last is None or escalated or now - last[0] >= self.cooldown

    def _fire(self, key: AlertKey, alert: Alert, now: float) -> Notification | None:
        state = self._active.get(key)
        if state is None:
            state = self._active[key] = ActiveAlert(alert, now)
        state.alert = alert
        if not self._due(key, alert, now):
            return None
        repeat = state.notified
        state.notified = True
        self._last_sent[key] = (now, rank(alert.severity))
        return Notification(FIRED, alert, now, state.since, repeat)

    def _resolve(self, key: AlertKey, now: float) -> Notification | None:
        state = self._active.pop(key, None)
        if state is None or not state.notified:
            return None
        return Notification(RESOLVED, state.alert, now, state.since)

    def _send(self, notifications: list[Notification]) -> None:
        for n in notifications:
            self.history.append(n)
            for sink in list(self.sinks):
                try:
                    sink.send(n)
                except Exception:
                    log.exception("alert sink %r failed", sink)

    def close(self) -> None:
        """Close sinks that hold resources (files, webhook threads)."""
        for sink in self.sinks:
            close = getattr(sink, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:
                    log.exception("closing alert sink %r failed", sink)
