"""Example jobs in the spirit of a real app; some fail at random, on purpose."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random

from ..app import App
from ..errors import NonRetryable
from ..history import History
from ..monitor import Monitor
from ..retry import Backoff

log = logging.getLogger("conveyor.demo")

URL_ENV = "CONVEYOR_DEMO_URL"
"""Where ``conveyor.demo.app:app`` finds the demo's database (default: :data:`DEFAULT_URL`)."""
DEFAULT_URL = "sqlite:///conveyor-demo.db"


def make_app(url: str) -> App:
    """Build the demo app with its three job types."""
    app = App(url, extensions=[History(), Monitor(sinks=[])])
    quick = Backoff(base=0.5, factor=2.0, maximum=4.0)

    @app.job(name="email.send", queue="emails", max_attempts=4, backoff=quick)
    async def send_email(to: str, subject: str) -> None:
        """Talk to a flaky SMTP server: 15% of attempts time out."""
        await asyncio.sleep(random.uniform(0.01, 0.06))
        if random.random() < 0.15:
            raise ConnectionError(f"SMTP timeout talking to mx for {to}")
        log.info("sent %r to %s", subject, to)

    @app.job(name="report.build", queue="reports", max_attempts=3, backoff=quick, timeout=2.0)
    def build_report(report_id: int, rows: int) -> str:
        """CPU-ish work in a thread; a few reports are corrupt and never retried."""
        digest = hashlib.sha256()
        for i in range(rows):
            digest.update(str(i).encode())
        if random.random() < 0.04:
            raise NonRetryable(f"report {report_id}: source data is corrupt")
        return digest.hexdigest()

    @app.job(name="data.process", queue="data", max_attempts=3, backoff=quick, timeout=1.0)
    async def process_data(batch_id: int, size: int) -> int:
        """Batch processing: 10% transient errors, 3% too slow for the timeout."""
        roll = random.random()
        if roll < 0.03:
            await asyncio.sleep(1.5)
        await asyncio.sleep(size / 20000)
        if roll > 0.90:
            raise RuntimeError(f"batch {batch_id}: upstream returned 503")
        return size

    app.demo_jobs = (send_email, build_report, process_data)  # type: ignore[attr-defined]
    return app
