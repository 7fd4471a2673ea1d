"""Declarative telemetry specs: :class:`Metric`, :class:`Span` and :class:`Logs`.

Each spec checks itself when built, so a typo in a key name or an unbounded
label fails where the spec is written, not at the first event.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import signals as sig
from ..errors import ConfigError
from ..signals import Signal

SignalRef = Signal | str
"""A :class:`~conveyor.Signal`, or the name of a built-in one (``"job.failed"``)."""
SignalRefs = SignalRef | Sequence[SignalRef]

KINDS = ("counter", "histogram", "gauge")
UNBOUNDED_KEYS = frozenset({"job_id", "job_ids"})
"""Keys with one value per job (or per set of jobs): never metric labels."""
_UNBOUNDED_KINDS = frozenset({"float", "duration", "error"})
_NUMERIC_KINDS = frozenset({"int", "float", "duration"})
_BUILTIN = {s.name: s for s in sig.BUILTIN}
_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def resolve(ref: Any, where: str) -> Signal:
    """The :class:`Signal` that ``ref`` names; built-in names are accepted as strings."""
    if isinstance(ref, Signal):
        return ref
    if isinstance(ref, str):
        found = _BUILTIN.get(ref)
        if found is None:
            raise ConfigError(
                f"{where}: unknown signal {ref!r}; built-in signals are "
                f"{', '.join(sorted(_BUILTIN))} (pass your own signals as Signal objects)"
            )
        return found
    raise ConfigError(f"{where}: expected a Signal or a signal name, got {type(ref).__name__}")


def resolve_many(refs: Any, where: str) -> tuple[Signal, ...]:
    """Resolve one reference or a sequence of them (at least one)."""
    items = (refs,) if isinstance(refs, Signal | str) else tuple(refs)
    if not items:
        raise ConfigError(f"{where}: no signal given")
    return tuple(resolve(r, where) for r in items)


def check_key(signals: Sequence[Signal], key: str, where: str, role: str) -> sig.Key[Any]:
    """The key ``key`` of every signal in ``signals``; ConfigError when one lacks it."""
    found: sig.Key[Any] | None = None
    for s in signals:
        k = s.keys.get(key)
        if k is None:
            raise ConfigError(
                f"{where}: {role} {key!r} is not a key of signal {s.name!r}; "
                f"its keys are {', '.join(s.keys) or 'none'}"
            )
        found = found or k
    assert found is not None
    return found


@dataclass(frozen=True)
class Metric:
    """Maps events of ``signal`` to a metric called ``name``.

    * ``counter``: adds 1 per event, or the value of ``value_key`` (times ``scale``).
    * ``histogram``: observes ``value_key`` times ``scale`` (e.g. ``scale=1000``
      turns a duration in seconds into milliseconds).
    * ``gauge``: sets ``value_key``; or, with ``decrement`` signals, goes up by 1
      (or ``value_key``) per ``signal`` event and down per ``decrement`` event.

    ``labels`` are keys of every signal involved (``.`` becomes ``_`` in label
    names); ``const_labels`` are fixed. Several Metric entries may share a name
    when they agree on kind, label names and buckets: they feed one series set.
    """

    signal: SignalRefs
    name: str
    kind: str = "counter"
    value_key: str | None = None
    labels: Sequence[str] = ()
    description: str = ""
    buckets: Sequence[float] | None = None
    scale: float = 1.0
    decrement: SignalRefs = ()
    const_labels: Mapping[str, str] = field(default_factory=dict)
    unit: str = ""
    signals: tuple[Signal, ...] = field(init=False, repr=False, compare=False)
    decrements: tuple[Signal, ...] = field(init=False, repr=False, compare=False)
    label_names: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        where = f"metric {self.name!r}"
        if not isinstance(self.name, str) or not _METRIC_NAME.match(self.name):
            raise ConfigError(f"{where}: a metric name is letters, digits, '_' and ':'")
        if self.kind not in KINDS:
            raise ConfigError(f"{where}: kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        signals = resolve_many(self.signal, where)
        none = not isinstance(self.decrement, Signal | str) and not tuple(self.decrement)
        decrements = () if none else resolve_many(self.decrement, where)
        if decrements and self.kind != "gauge":
            raise ConfigError(f"{where}: only a gauge takes decrement signals")
        involved = signals + decrements
        labels = (self.labels,) if isinstance(self.labels, str) else tuple(self.labels)
        if len(set(labels)) != len(labels):
            raise ConfigError(f"{where}: duplicate label in {labels}")
        for label in labels:
            key = check_key(involved, label, where, "label")
            if label in UNBOUNDED_KEYS or key.kind in _UNBOUNDED_KINDS:
                raise ConfigError(
                    f"{where}: label {label!r} is unbounded (a new value per job or per "
                    "measurement) and would create one time series each; put it in logs "
                    "or traces instead"
                )
        const = dict(self.const_labels)
        for cname, cvalue in const.items():
            if not _LABEL_NAME.match(cname) or not isinstance(cvalue, str):
                raise ConfigError(f"{where}: const label {cname!r}={cvalue!r} is not a valid label")
        names = tuple(n.replace(".", "_") for n in labels)
        if set(names) & set(const) or len(set(names)) != len(names):
            raise ConfigError(f"{where}: label names clash: {names} and {tuple(const)}")
        self._check_value(involved, where, bool(decrements))
        self._check_buckets(where)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "const_labels", const)
        object.__setattr__(self, "signals", signals)
        object.__setattr__(self, "decrements", decrements)
        object.__setattr__(self, "label_names", names + tuple(const))

    def _check_value(self, involved: Sequence[Signal], where: str, updown: bool) -> None:
        if self.value_key is not None:
            key = check_key(involved, self.value_key, where, "value_key")
            if key.kind not in _NUMERIC_KINDS:
                raise ConfigError(f"{where}: value_key {self.value_key!r} is a {key.kind} key, "
                                  "not a number")
        elif self.kind == "histogram" or (self.kind == "gauge" and not updown):
            raise ConfigError(f"{where}: a {self.kind} needs a value_key"
                              + (" (or decrement signals)" if self.kind == "gauge" else ""))
        scale = self.scale
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not (
            math.isfinite(scale) and scale > 0
        ):
            raise ConfigError(f"{where}: scale must be a finite number > 0, got {scale!r}")

    def _check_buckets(self, where: str) -> None:
        if self.buckets is None:
            return
        if self.kind != "histogram":
            raise ConfigError(f"{where}: buckets are for histograms")
        b = list(self.buckets)
        if not b or any(not math.isfinite(x) for x in b) or any(
            x >= y for x, y in itertools.pairwise(b)
        ):
            raise ConfigError(f"{where}: buckets must be finite and strictly increasing, got {b}")
        object.__setattr__(self, "buckets", tuple(float(x) for x in b))


@dataclass(frozen=True)
class Span:
    """A span from each ``start`` event to the next ``end`` event with the same
    ``correlation_key`` value (e.g. ``job.started`` to ``job.completed``/``job.failed``).

    Attributes are the events' keys (errors as ``error.type``/``error.message``
    plus an exception event and ERROR status). At most ``max_open`` spans wait
    for their end; beyond that the oldest is ended as ``conveyor.span.abandoned``.
    """

    start: SignalRef
    end: SignalRefs
    correlation_key: str = "job_id"
    name: str = ""
    max_open: int = 10_000
    start_signal: Signal = field(init=False, repr=False, compare=False)
    end_signals: tuple[Signal, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        where = f"span {self.name or self.start!r}"
        start = resolve(self.start, where)
        ends = resolve_many(self.end, where)
        if start in ends:
            raise ConfigError(f"{where}: the start signal cannot also end the span")
        check_key((start, *ends), self.correlation_key, where, "correlation_key")
        if self.max_open < 1:
            raise ConfigError(f"{where}: max_open must be at least 1")
        object.__setattr__(self, "start_signal", start)
        object.__setattr__(self, "end_signals", ends)
        object.__setattr__(self, "name", self.name or start.name)


DEFAULT_LEVELS: Mapping[str, int] = {
    "job.enqueued": logging.DEBUG,
    "job.started": logging.DEBUG,
    "job.completed": logging.INFO,
    "job.failed": logging.WARNING,  # ERROR when it will not be retried
    "job.retrying": logging.WARNING,
    "job.dead": logging.ERROR,
    "job.lease_lost": logging.WARNING,
    "job.ack_refused": logging.WARNING,
    "queue.depth": logging.DEBUG,
    "worker.started": logging.INFO,
    "worker.stopped": logging.INFO,
    "worker.idle": logging.DEBUG,
    "worker.busy": logging.DEBUG,
    "worker.error": logging.ERROR,
    "worker.thread_stuck": logging.ERROR,
    "worker.thread_returned": logging.WARNING,
    "worker.capacity_reduced": logging.ERROR,
    "queue.forecast": logging.DEBUG,
    "health.check": logging.DEBUG,
    "worker.resources": logging.DEBUG,
    "job.resources": logging.DEBUG,
    "periodic.tick": logging.DEBUG,
    "alert.fired": logging.WARNING,
    "alert.resolved": logging.INFO,
    "worker.lost": logging.ERROR,
}
"""Level of each built-in signal's log record; other signals log at INFO."""


@dataclass(frozen=True)
class Logs:
    """Log signals as records of logger ``logger``: those in ``whitelist``, or all.

    ``levels`` overrides :data:`DEFAULT_LEVELS` per signal name; ``redact``
    adds field names to redact in logs only (on top of ``Telemetry.redact``).
    """

    whitelist: Sequence[SignalRef] | None = None
    redact: Sequence[str] = ()
    levels: Mapping[str, int | str] = field(default_factory=dict)
    logger: str = "conveyor.events"
    signals: tuple[Signal, ...] | None = field(init=False, repr=False, compare=False)
    level_of: Mapping[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        wl = None if self.whitelist is None else tuple(
            resolve(r, "logs whitelist") for r in self.whitelist
        )
        known = logging.getLevelNamesMapping()
        levels = dict(DEFAULT_LEVELS)
        for name, level in self.levels.items():
            value = known.get(level.upper()) if isinstance(level, str) else level
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"logs: unknown level {level!r} for signal {name!r}")
            levels[name] = value
        if isinstance(self.redact, str):
            raise ConfigError("logs: redact is a list of field names, not one string")
        object.__setattr__(self, "signals", wl)
        object.__setattr__(self, "level_of", levels)
