"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from conveyor import App
from conveyor.testing import memory_app


@pytest.fixture
def app() -> Iterator[App]:
    a = memory_app()
    yield a
    a.close()
