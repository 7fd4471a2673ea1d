"""``/metrics`` (with ``--metrics``): broker queue gauges sampled by the dashboard,
followed by the app's own telemetry registry when it has one."""

from __future__ import annotations

from collections.abc import Iterator

from starlette.requests import Request
from starlette.responses import Response

from ..errors import ConfigError
from .sampler import Samples

try:
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ConfigError("--metrics needs prometheus-client: pip install 'conveyor[prometheus]'") from exc


class QueueCollector(Collector):
    """Queue counts from the dashboard's latest sample of the broker."""

    def __init__(self, samples: Samples) -> None:
        self.samples = samples

    def collect(self) -> Iterator[GaugeMetricFamily]:
        jobs = GaugeMetricFamily(
            "conveyor_broker_queue_jobs", "Jobs per queue and state, from the broker", labels=["queue", "state"]
        )
        age = GaugeMetricFamily(
            "conveyor_broker_queue_oldest_ready_age_seconds", "Age of the oldest ready job", labels=["queue"]
        )
        for queue, s in self.samples.latest.items():
            counts = {"ready": s.ready, "in_flight": s.in_flight, "delayed": s.delayed, "dead": s.dead}
            for state, value in counts.items():
                jobs.add_metric([queue, state], value)
            age.add_metric([queue], s.oldest_age_s)
        yield jobs
        yield age


def registry_for(samples: Samples) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(QueueCollector(samples))
    return registry


async def metrics_endpoint(request: Request) -> Response:
    own: CollectorRegistry = request.app.state.metrics_registry
    body = generate_latest(own)
    telemetry = getattr(request.app.state.sources.app.telemetry, "registry", None)
    if isinstance(telemetry, CollectorRegistry):
        body += generate_latest(telemetry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
