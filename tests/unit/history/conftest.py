"""Fixtures: an App on a SQLite broker in a temporary directory, with History on the same file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import App

from .scenarios import MakeApp, history


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[MakeApp]:
    apps: list[App] = []

    def make(**options: Any) -> App:
        app = App(f"sqlite:///{tmp_path / 'q.db'}", extensions=[history(**options)])
        apps.append(app)
        return app

    yield make
    for app in apps:
        for ext in app.extensions:
            ext.close()  # type: ignore[attr-defined]
        app.close()
