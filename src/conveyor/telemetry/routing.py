"""Routing chosen signals to named sinks: audit files, alert hooks, your own callables.

    Telemetry(
        sinks={"audit": AuditSink("audit.jsonl"), "alerts": page_on_call},
        routes=[
            Route(["job.completed", "job.dead"], "audit", job_types=["payments.refund"]),
            Route(["job.dead"], "alerts"),
            Route([EMAIL_SENT], "metrics"),   # counted in conveyor_signals_total{signal}
        ],
    )

A sink is any callable taking an :class:`~conveyor.Event` (it may be async).
Two names are built in: ``"metrics"`` counts routed events in
``conveyor_signals_total{signal}`` and ``"logs"`` logs them through the signal
log sink. Each route is its own bus subscription, so a sink that raises is
isolated from the others and from the job.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import msgspec

from ..errors import ConfigError
from ..signals import Bus, Event, Signal, Subscription
from .redact import Redactor, plain_mapping
from .spec import SignalRef, resolve

EventSink = Callable[[Event], Awaitable[None] | None]
BUILTIN_SINKS = ("metrics", "logs")
_encoder = msgspec.json.Encoder(enc_hook=repr)


@dataclass(frozen=True)
class Route:
    """Send ``signals`` (None: every signal) to the sink named ``sink`` (or a callable).

    ``job_types``, ``queues`` and ``where`` narrow the events sent; with
    ``job_types`` or ``queues`` every routed signal must carry that key.
    """

    signals: Sequence[SignalRef] | None
    sink: str | EventSink
    job_types: Sequence[str] | None = None
    queues: Sequence[str] | None = None
    where: Callable[[Event], bool] | None = None
    resolved: tuple[Signal, ...] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        where = f"route to {self.sink!r}"
        if isinstance(self.signals, Signal | str):
            raise ConfigError(f"{where}: signals is a list (or None for all)")
        found = None if self.signals is None else tuple(resolve(s, where) for s in self.signals)
        for key, values in (("job_type", self.job_types), ("queue", self.queues)):
            if values is None:
                continue
            if isinstance(values, str):
                raise ConfigError(f"{where}: {key} filter is a list of names, not one string")
            if found is None:
                raise ConfigError(f"{where}: a {key} filter needs an explicit list of signals")
            for s in found:
                if key not in s.keys:
                    raise ConfigError(f"{where}: signal {s.name!r} has no {key!r} key, so the "
                                      f"{key} filter would never match it")
        if not isinstance(self.sink, str) and not callable(self.sink):
            raise ConfigError(f"{where}: a sink is a name or a callable")
        object.__setattr__(self, "resolved", found)

    def matcher(self) -> Callable[[Event], bool] | None:
        """A predicate for the filters, or None when every event passes."""
        types = None if self.job_types is None else frozenset(self.job_types)
        queues = None if self.queues is None else frozenset(self.queues)
        where = self.where
        if types is None and queues is None and where is None:
            return None

        def match(event: Event) -> bool:
            attrs = event.attrs
            if types is not None and attrs.get("job_type") not in types:
                return False
            if queues is not None and attrs.get("queue") not in queues:
                return False
            return where is None or where(event)

        return match


def check_routes(routes: Sequence[Route], sinks: Mapping[str, EventSink]) -> None:
    """ConfigError for a route naming an unknown sink, or a sink that is not callable."""
    for name, sink in sinks.items():
        if name in BUILTIN_SINKS:
            raise ConfigError(f"sink name {name!r} is built in; pick another name")
        if not callable(sink):
            raise ConfigError(f"sink {name!r} is not callable")
    for route in routes:
        if not isinstance(route, Route):
            raise ConfigError(f"routes: expected Route entries, got {type(route).__name__}")
        if isinstance(route.sink, str) and route.sink not in sinks and (
            route.sink not in BUILTIN_SINKS
        ):
            known = ", ".join([*BUILTIN_SINKS, *sinks])
            raise ConfigError(f"route to unknown sink {route.sink!r}; known sinks: {known}")


def attach_routes(
    bus: Bus, routes: Sequence[Route], resolve_sink: Callable[[str | EventSink], EventSink]
) -> list[Subscription]:
    """Subscribe one filtered sink per route."""
    subs = []
    for route in routes:
        target = resolve_sink(route.sink)
        match = route.matcher()
        sink = target if match is None else _filtered(target, match)
        subs.append(bus.subscribe(sink, route.resolved))
    return subs


def _filtered(target: EventSink, match: Callable[[Event], bool]) -> EventSink:
    def routed(event: Event) -> Awaitable[None] | None:
        return target(event) if match(event) else None

    routed.__qualname__ = f"routed({getattr(target, '__qualname__', target)!s})"
    return routed


class AuditSink:
    """Appends each event as one JSON line to ``path`` (opened in append mode).

    Lines hold ``timestamp`` (epoch seconds), ``signal`` and ``attributes``
    (errors as ``{type, message, traceback}``, sensitive fields redacted with
    the Telemetry's list unless ``redact`` is given). ``fsync=True`` makes each
    line durable before the sink returns. Thread-safe; the file is opened on
    the first event and kept open until :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike[str], *, redact: Sequence[str] | None = None,
                 fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.redactor: Redactor | None = None if redact is None else Redactor(redact)
        self._file: IO[bytes] | None = None
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        redactor = self.redactor or Redactor()
        line = _encoder.encode({
            "timestamp": event.timestamp,
            "recorded_at": time.time(),
            "signal": event.name,
            "attributes": plain_mapping(redactor.mapping(event.attrs)),
        }) + b"\n"
        with self._lock:
            if self._file is None:
                self._file = open(self.path, "ab")  # noqa: SIM115 - kept open across events
            self._file.write(line)
            self._file.flush()
            if self.fsync:
                os.fsync(self._file.fileno())

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __repr__(self) -> str:
        return f"AuditSink({str(self.path)!r})"


def read_audit(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of an audit file, oldest first."""
    with open(path, "rb") as f:
        return [msgspec.json.decode(line) for line in f if line.strip()]
