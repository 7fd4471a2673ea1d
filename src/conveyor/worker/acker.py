"""Batches acks: finished deliveries pile up while one ack round trip is in flight."""

from __future__ import annotations

import asyncio
import logging

from ..brokers import Broker, Delivery

log = logging.getLogger("conveyor.worker")


class Acker:
    """Collects finished deliveries and acks them in batches."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._pending: list[Delivery] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def add(self, delivery: Delivery) -> None:
        self._pending.append(delivery)
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
                    await self._broker.ack(batch)
                    delay = 0.05
                except Exception:
                    log.exception("ack of %d jobs failed; retrying in %.2fs", len(batch), delay)
                    self._pending[:0] = batch
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
            self._idle.set()

    async def flush(self, timeout: float = 10.0) -> None:
        """Wait until every pending ack reached the broker (or ``timeout``)."""
        if self._pending:
            self._wake.set()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            log.error("%d acks still pending at shutdown; those jobs will run again", len(self._pending))
