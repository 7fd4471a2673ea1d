"""Batches acks: finished deliveries pile up while one ack round trip is in flight."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from ..brokers import Broker, Delivery

log = logging.getLogger("conveyor.worker")

Finished = tuple[Delivery, str, float, bool]
"""A finished delivery: its job type, the attempt's duration, and whether it was
already counted as completed (its lease was surely live when it finished)."""
Settle = Callable[[Sequence[Finished], Sequence[Finished]], None]
"""Told, after each ack round trip, which finished jobs were acked and which refused."""


def _ignore(acked: Sequence[Finished], refused: Sequence[Finished]) -> None:
    pass


class Acker:
    """Collects finished deliveries and acks them in batches.

    After each batch ``settle(acked, refused)`` is called (the executor sets it):
    ``refused`` are the jobs whose ack the broker's lease-token check turned down
    (their lease was lost).
    """

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self.settle: Settle = _ignore
        self._pending: list[Finished] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def add(self, delivery: Delivery, job_type: str = "", duration: float = 0.0, counted: bool = True) -> None:
        self._pending.append((delivery, job_type, duration, counted))
        self._idle.clear()
        self._wake.set()

    async def run(self) -> None:
        """Ack until cancelled; a failed ack is retried, never dropped."""
        delay = 0.05
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    refused_ids = await self._broker.ack([f[0] for f in batch])
                    delay = 0.05
                except Exception:
                    log.exception("ack of %d jobs failed; retrying in %.2fs", len(batch), delay)
                    self._pending[:0] = batch
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                if refused_ids:
                    refused_set = set(refused_ids)
                    refused = [f for f in batch if f[0].id in refused_set]
                    batch = [f for f in batch if f[0].id not in refused_set]
                else:
                    refused = []
                try:
                    self.settle(batch, refused)
                except Exception:  # never let bookkeeping stop the acks
                    log.exception("settling %d acked jobs failed", len(batch) + len(refused))
            self._idle.set()

    async def flush(self, timeout: float = 10.0) -> None:
        """Wait until every pending ack reached the broker (or ``timeout``)."""
        if self._pending:
            self._wake.set()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            log.error("%d acks still pending at shutdown; those jobs will run again", len(self._pending))
