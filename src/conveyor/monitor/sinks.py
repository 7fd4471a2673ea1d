"""Alert sinks: the log, a JSON-lines file, an HTTP webhook and the signal bus.

Every sink's ``send`` returns at once; the webhook posts from its own thread,
retrying with exponential backoff, and drops the oldest notification when its
bounded queue is full, so a slow endpoint never blocks a worker.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .alerts import ALERT_FIRED, ALERT_RESOLVED, CRITICAL, FIRED, RESOLVED, WARNING, Alert, Notification

if TYPE_CHECKING:
    from ..signals import Bus

log = logging.getLogger("conveyor.monitor.alerts")


class LogSink:
    """Logs each notification: critical as ERROR, warning as WARNING, the rest as INFO."""

    def __init__(self, logger: logging.Logger | str = "conveyor.alerts") -> None:
        self.logger = logging.getLogger(logger) if isinstance(logger, str) else logger

    def send(self, notification: Notification) -> None:
        a = notification.alert
        if notification.kind == RESOLVED:
            level = logging.INFO
        else:
            level = {CRITICAL: logging.ERROR, WARNING: logging.WARNING}.get(a.severity, logging.INFO)
        labels = a.label_text()
        self.logger.log(
            level,
            "alert %s %s%s: %s",
            a.name,
            notification.kind,
            f" [{labels}]" if labels else "",
            a.message,
            extra={"alert": notification.to_dict()},
        )


class JsonLinesSink:
    """Appends each notification as one JSON object per line to ``path``.

    Each line is one ``write`` on an ``O_APPEND`` file, so several processes may
    share the file. :func:`read_active` rebuilds the active alerts from it.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def send(self, notification: Notification) -> None:
        data = (json.dumps(notification.to_dict(), sort_keys=True) + "\n").encode()
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)


def read_active(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The alerts a :class:`JsonLinesSink` file says are active now (fired, not resolved since)."""
    active: dict[tuple[str, str], dict[str, Any]] = {}
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        try:
            item = json.loads(line)
            key = (item["name"], json.dumps(item.get("labels", {}), sort_keys=True))
        except (ValueError, KeyError, TypeError):
            continue
        if item.get("kind") == FIRED:
            active[key] = item
        elif item.get("kind") == RESOLVED:
            active.pop(key, None)
    return list(active.values())


class WebhookSink:
    """POSTs each notification as JSON to ``url`` from a background thread.

    A failed post (connection error, timeout, HTTP status >= 300 except 4xx other
    than 408/429) is retried up to ``max_attempts`` times, waiting ``backoff``
    seconds doubled each time (at most ``max_backoff``). At most ``max_queue``
    notifications wait; beyond that the oldest is dropped and logged.
    """

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,
        max_attempts: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        max_queue: int = 1000,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"webhook URL must be http(s), got {url!r}")
        if max_attempts < 1 or max_queue < 1:
            raise ValueError("max_attempts and max_queue must be at least 1")
        self.url = url
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self.timeout, self.max_attempts = timeout, max_attempts
        self.backoff, self.max_backoff = backoff, max_backoff
        self._queue: queue.Queue[Notification | None] = queue.Queue(max_queue)
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.delivered = 0
        self.dropped = 0

    def send(self, notification: Notification) -> None:
        if self._closed.is_set():
            return
        self._ensure_thread()
        while True:
            try:
                self._queue.put_nowait(notification)
                return
            except queue.Full:
                try:
                    old = self._queue.get_nowait()
                except queue.Empty:
                    continue
                if old is not None:
                    self.dropped += 1
                    log.warning("webhook queue full; dropped alert %s %s", old.alert.name, old.kind)

    def _ensure_thread(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="conveyor-alert-webhook", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            self._deliver(item)

    def _deliver(self, notification: Notification) -> bool:
        body = json.dumps(notification.to_dict()).encode()
        delay, what = self.backoff, ""
        for attempt in range(1, self.max_attempts + 1):
            try:
                if self._post(body):
                    self.delivered += 1
                    return True
                what = "rejected"
                break
            except (OSError, urllib.error.URLError) as exc:
                what = str(exc)
            if attempt < self.max_attempts:
                if self._closed.wait(delay):
                    delay = 0.0  # closing: retry without waiting, then give up
                delay = min(delay * 2, self.max_backoff)
        log.error("webhook %s: gave up on alert %s %s (%s)", self.url, notification.alert.name, notification.kind, what)
        return False

    def _post(self, body: bytes) -> bool:
        """True when delivered, False when the endpoint rejects it for good; raises to retry."""
        request = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
                status = int(response.status)
        except urllib.error.HTTPError as exc:
            status = exc.code
        if status < 300:
            return True
        if 400 <= status < 500 and status not in (408, 429):
            log.error("webhook %s answered %d; not retrying", self.url, status)
            return False
        raise OSError(f"HTTP {status}")

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (waiting at most ``timeout`` seconds), then stop the thread."""
        thread = self._thread
        if thread is None:
            self._closed.set()
            return
        deadline = time.monotonic() + timeout
        while not self._queue.empty() and time.monotonic() < deadline:
            time.sleep(0.01)
        self._closed.set()
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=max(0.0, deadline - time.monotonic()))
        thread.join(max(0.0, deadline - time.monotonic()))


class BusSink:
    """Emits ``alert.fired`` / ``alert.resolved`` on a signal bus (for telemetry and dashboards)."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    def send(self, notification: Notification) -> None:
        a: Alert = notification.alert
        attrs: dict[str, Any] = {
            "alert": a.name,
            "severity": a.severity,
            "message": a.message,
            "labels": a.label_text(),
            "since": notification.since,
        }
        if a.value is not None:
            attrs["value"] = a.value
        if notification.kind == FIRED:
            self.bus.emit(ALERT_FIRED, **attrs, repeat=notification.repeat)
        else:
            self.bus.emit(ALERT_RESOLVED, **attrs, duration=max(0.0, notification.at - notification.since))
