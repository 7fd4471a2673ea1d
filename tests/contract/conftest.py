"""Runs the broker contract suite against every factory in ``factories/``.

A factory module exposes ``make(tmp_path)``: an async context manager that
yields a connected broker isolated from every other test (its own file,
key prefix or schema). ``make_peer``, when present, yields a second broker
instance on the same store, standing for another worker process.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

import pytest

from . import factories

FACTORIES: dict[str, ModuleType] = {
    info.name: importlib.import_module(f"{factories.__name__}.{info.name}")
    for info in pkgutil.iter_modules(factories.__path__)
}


@pytest.fixture(params=sorted(FACTORIES))
def factory(request: pytest.FixtureRequest) -> ModuleType:
    return FACTORIES[request.param]


@pytest.fixture(params=sorted(name for name, mod in FACTORIES.items() if hasattr(mod, "make_peer")))
def peer_factory(request: pytest.FixtureRequest) -> ModuleType:
    """Factories whose store can be shared by a second instance (another process)."""
    return FACTORIES[request.param]


@pytest.fixture
async def broker(factory: ModuleType, tmp_path: Path) -> AsyncIterator[object]:
    async with factory.make(tmp_path) as b:
        yield b
