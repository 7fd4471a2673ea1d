"""An app with job history for the operator-error tests (tests/acceptance/test_operator_errors.py).

The broker comes from ``$CONVEYOR_BROKER_URL``; the history store from
``$OPERATOR_HISTORY_URL`` when set, else History's default for that broker.
The CLI loads it as ``operator_jobs:app``.
"""

from __future__ import annotations

import os

from conveyor import App
from conveyor.history import History

app = App(
    extensions=[
        History(os.environ.get("OPERATOR_HISTORY_URL") or None, heartbeat_interval=0.2, flush_interval=0.05)
    ]
)


@app.job(name="op.record")
def record(label: str) -> None:
    """Does nothing; the tests only watch where it waits."""
