"""Pick a broker from its URL, importing its client library only when asked for."""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import ConfigError
from .base import Broker

#: scheme -> (module, class, extra that installs its client)
BROKERS: dict[str, tuple[str, str, str]] = {
    "memory": ("conveyor.brokers.memory", "MemoryBroker", ""),
    "sqlite": ("conveyor.brokers.sqlite", "SQLiteBroker", ""),
    "redis": ("conveyor.brokers.redis", "RedisBroker", "redis"),
    "rediss": ("conveyor.brokers.redis", "RedisBroker", "redis"),
    "postgresql": ("conveyor.brokers.postgres", "PostgresBroker", "postgres"),
    "postgres": ("conveyor.brokers.postgres", "PostgresBroker", "postgres"),
}


def broker_class(url: str) -> Any:
    """Return the broker class for ``url``; raise :class:`ConfigError` when it cannot be used."""
    scheme, sep, _ = url.partition("://")
    if not sep or scheme not in BROKERS:
        known = ", ".join(f"{s}://" for s in BROKERS)
        raise ConfigError(f"unsupported broker URL {url!r}; known schemes: {known}")
    module_name, class_name, extra = BROKERS[scheme]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("conveyor"):
            raise ConfigError(f"the {scheme}:// broker is not available in this version") from exc
        raise ConfigError(
            f"the {scheme}:// broker needs {exc.name}: pip install 'conveyor[{extra}]'"
        ) from exc
    return getattr(module, class_name)


def open_broker(url: str) -> Broker:
    """Create (but do not connect) the broker that ``url`` names."""
    broker: Broker = broker_class(url).from_url(url)
    return broker
