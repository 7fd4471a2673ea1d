"""Metric backends (Prometheus, OpenTelemetry) and the pipeline that feeds them from signals.

The pipeline compiles every :class:`Metric` into one small operation per
signal. Each operation caches the bound instrument (the Prometheus label child
or the OpenTelemetry attribute set) per label values, so an event costs a dict
lookup and one call per backend.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import ConfigError
from ..signals import Bus, Event, Subscription
from .spec import Metric

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from opentelemetry.metrics import MeterProvider
    from prometheus_client import CollectorRegistry

log = logging.getLogger("conveyor.telemetry")

Record = Callable[[float], Any]
"""Applies one value to one bound instrument (``inc``, ``dec``, ``observe``, ``set``)."""

MAX_SERIES = 10_000
"""Label-value combinations per metric operation; later ones are dropped (and logged once)."""
SIGNALS_METRIC = "conveyor_signals_total"


@dataclass(frozen=True)
class MetricGroup:
    """All :class:`Metric` entries sharing one name: one instrument per backend."""

    name: str
    kind: str
    label_names: tuple[str, ...]
    description: str
    buckets: tuple[float, ...] | None
    unit: str
    updown: bool
    entries: tuple[Metric, ...]


def group_metrics(metrics: Sequence[Metric]) -> list[MetricGroup]:
    """Group entries by name, checking that entries sharing a name agree."""
    by_name: dict[str, list[Metric]] = {}
    for m in metrics:
        if not isinstance(m, Metric):
            raise ConfigError(f"metrics: expected Metric entries, got {type(m).__name__}")
        by_name.setdefault(m.name, []).append(m)
    groups = []
    for name, entries in by_name.items():
        first = entries[0]
        for other in entries[1:]:
            if (other.kind, set(other.label_names), other.buckets, bool(other.decrements)) != (
                first.kind, set(first.label_names), first.buckets, bool(first.decrements)
            ):
                raise ConfigError(
                    f"metric {name!r} is defined more than once with different kind, labels, "
                    "buckets or decrement style"
                )
        description = next((m.description for m in entries if m.description), "")
        signals = sorted({s.name for m in entries for s in m.signals})
        groups.append(MetricGroup(
            name, first.kind, first.label_names,
            description or f"{first.kind} of {', '.join(signals)}",
            None if first.buckets is None else tuple(first.buckets), first.unit,
            bool(first.decrements), tuple(entries),
        ))
    return groups


class Backend(Protocol):
    """Creates instruments; ``create`` returns ``bind(action, label_values) -> Record``."""

    def create(self, group: MetricGroup) -> Callable[[str, tuple[str, ...]], Record]: ...


class PrometheusBackend:
    """Instruments in a ``prometheus_client`` registry (a fresh one by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        try:
            import prometheus_client
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ConfigError(
                "prometheus-client is not installed: pip install 'conveyor[prometheus]' "
                "(or pass Telemetry(prometheus=False))"
            ) from exc
        self.registry = registry if registry is not None else prometheus_client.CollectorRegistry()

    def create(self, group: MetricGroup) -> Callable[[str, tuple[str, ...]], Record]:
        import prometheus_client as pc

        metric: Any
        args = (group.name, group.description, group.label_names)
        try:
            if group.kind == "counter":
                metric = pc.Counter(*args, registry=self.registry)
            elif group.kind == "histogram":
                buckets = group.buckets or pc.Histogram.DEFAULT_BUCKETS
                metric = pc.Histogram(*args, registry=self.registry, buckets=buckets)
            else:
                # Under multiprocess mode (conveyor worker --processes N) up/down gauges
                # add up across live workers; set gauges keep the latest report.
                if group.updown:
                    metric = pc.Gauge(*args, registry=self.registry, multiprocess_mode="livesum")
                else:
                    metric = pc.Gauge(*args, registry=self.registry, multiprocess_mode="mostrecent")
        except ValueError as exc:
            raise ConfigError(f"metric {group.name!r}: {exc}") from exc

        def bind(action: str, values: tuple[str, ...]) -> Record:
            child = metric.labels(*values) if values else metric
            method: Record = getattr(child, action)
            return method

        return bind


class OtelMetricsBackend:
    """Instruments of an OpenTelemetry ``MeterProvider`` (export with e.g. OTLP)."""

    def __init__(self, meter_provider: MeterProvider) -> None:
        self.meter = meter_provider.get_meter("conveyor")

    def create(self, group: MetricGroup) -> Callable[[str, tuple[str, ...]], Record]:
        meter, name, unit, desc = self.meter, group.name, group.unit, group.description
        inst: Any
        if group.kind == "counter":
            inst, method = meter.create_counter(name, unit, desc), "add"
        elif group.kind == "histogram":
            inst = meter.create_histogram(
                name, unit, desc, explicit_bucket_boundaries_advisory=group.buckets
            )
            method = "record"
        elif group.updown:
            inst, method = meter.create_up_down_counter(name, unit, desc), "add"
        else:
            inst, method = meter.create_gauge(name, unit, desc), "set"
        call = getattr(inst, method)

        def bind(action: str, values: tuple[str, ...]) -> Record:
            attrs = dict(zip(group.label_names, values, strict=True))
            if action == "dec":
                return lambda v: call(-v, attrs)
            bound: Record = functools.partial(call, attributes=attrs)
            return bound

        return bind


_ACTION = {"counter": "inc", "histogram": "observe"}


def _label(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


def _getter(keys: tuple[str, ...]) -> Callable[[Mapping[str, Any]], Any]:
    """Label values of an event's attributes; missing keys read as ``""``."""
    if not keys:
        return lambda attrs: ()
    if len(keys) == 1:
        k0 = keys[0]
        return lambda attrs: attrs.get(k0, "")
    get = itemgetter(*keys)

    def many(attrs: Mapping[str, Any]) -> Any:
        try:
            return get(attrs)
        except KeyError:
            return tuple(attrs.get(k, "") for k in keys)

    return many


def _operation(
    metric: Metric, action: str, group: MetricGroup,
    binders: Sequence[Callable[[str, tuple[str, ...]], Record]],
) -> Callable[[Event], None]:
    """One metric's work for one signal, with the bound instruments cached per label values."""
    keys = tuple(metric.labels)
    n = len(keys)
    const = tuple(metric.const_labels.values())
    # Entries sharing a name may list labels in another order than the instrument.
    order = None
    if metric.label_names != group.label_names:
        order = [metric.label_names.index(name) for name in group.label_names]
    getter = _getter(keys)
    cache: dict[Any, Record] = {}
    value_key, scale = metric.value_key, float(metric.scale)
    warned = False

    def bind(found: Any) -> Record | None:
        nonlocal warned
        if len(cache) >= MAX_SERIES:
            if not warned:
                warned = True
                log.warning("metric %s: over %d label combinations; dropping new ones",
                            metric.name, MAX_SERIES)
            return None
        raw = (found,) if n == 1 else found
        values = tuple(_label(v) for v in raw) + const
        if order is not None:
            values = tuple(values[i] for i in order)
        records = [b(action, values) for b in binders]
        if len(records) == 1:
            cache[found] = records[0]
        else:
            cache[found] = lambda v: [r(v) for r in records]
        return cache[found]

    if value_key is None:
        def count(event: Event) -> None:
            found = getter(event.attrs)
            record = cache.get(found) or bind(found)
            if record is not None:
                record(scale)

        return count

    def measure(event: Event) -> None:
        attrs = event.attrs
        value = attrs.get(value_key)
        if value is None:
            return
        found = getter(attrs)
        record = cache.get(found) or bind(found)
        if record is not None:
            record(value * scale if scale != 1.0 else value)

    return measure


class MetricPipeline:
    """Compiled metric operations, grouped per signal name, and their backends."""

    def __init__(self, metrics: Sequence[Metric], backends: Sequence[Backend]) -> None:
        self.backends = tuple(backends)
        self._ops: dict[str, list[Callable[[Event], None]]] = {}
        self._signals_counter: Callable[[Event], None] | None = None
        for group in group_metrics(metrics):
            binders = [b.create(group) for b in self.backends]
            for m in group.entries:
                action = "inc" if m.decrements else _ACTION.get(m.kind, "set")
                for s in m.signals:
                    self._ops.setdefault(s.name, []).append(_operation(m, action, group, binders))
                for s in m.decrements:
                    self._ops.setdefault(s.name, []).append(_operation(m, "dec", group, binders))

    @property
    def registry(self) -> CollectorRegistry | None:
        """The Prometheus registry, when that backend is on."""
        for b in self.backends:
            if isinstance(b, PrometheusBackend):
                return b.registry
        return None

    @property
    def signal_names(self) -> frozenset[str]:
        return frozenset(self._ops)

    def attach(self, bus: Bus) -> list[Subscription]:
        """Subscribe one sink per mapped signal to ``bus``."""
        subs = []
        for name, ops in self._ops.items():
            subs.append(bus.subscribe(ops[0] if len(ops) == 1 else _fan_out(tuple(ops)), [name]))
        return subs

    def signals_counter(self) -> Callable[[Event], None]:
        """A sink counting every event it gets in ``conveyor_signals_total{signal}``."""
        if self._signals_counter is None:
            group = MetricGroup(SIGNALS_METRIC, "counter", ("signal",),
                                "Events routed to the metrics sink.", None, "", False, ())
            binders = [b.create(group) for b in self.backends]
            cache: dict[str, Record] = {}

            def count(event: Event) -> None:
                record = cache.get(event.name)
                if record is None:
                    records = [b("inc", (event.name,)) for b in binders]
                    record = cache[event.name] = lambda v: [r(v) for r in records]
                record(1.0)

            self._signals_counter = count
        return self._signals_counter


def _fan_out(ops: tuple[Callable[[Event], None], ...]) -> Callable[[Event], None]:
    def run(event: Event) -> None:
        for op in ops:
            op(event)

    return run


@dataclass
class MetricsServer:
    """A running ``/metrics`` HTTP endpoint; :meth:`close` stops it."""

    host: str
    port: int
    server: WSGIServer

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve_metrics(
    registry: CollectorRegistry | None = None, host: str = "127.0.0.1", port: int = 9100
) -> MetricsServer:
    """Serve ``registry`` (default: prometheus_client's global one) on a daemon thread.

    ``port=0`` picks a free port; read it from the returned server's ``port``.
    """
    import prometheus_client

    try:
        server, _thread = prometheus_client.start_http_server(
            port, addr=host, registry=registry if registry is not None else prometheus_client.REGISTRY
        )
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from exc
    return MetricsServer(host, int(server.server_address[1]), server)
