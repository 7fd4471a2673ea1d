"""An in-process broker: fast, thread-safe, and gone when the process exits.

It lives in one process, so every deadline and due time is this host's clock.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from .base import (
    LEASE_EXPIRED,
    MANUAL_RETRY,
    MAX_REFUNDED_INTERRUPTIONS,
    WORKER_SHUTDOWN,
    Broker,
    Claims,
    DeadLetter,
    Delivery,
    DlqPosition,
    Failure,
    Message,
    QueueStats,
    Selector,
    check_claim,
)


@dataclass(slots=True)
class _Record:
    msg: Message
    eta: float
    seq: int
    state: str = "ready"  # ready | delayed | leased | dead
    attempts: int = 0
    lease_until: float = 0.0
    token: str = ""
    redelivery: str = ""
    interruptions: int = 0
    failure: Failure | None = None
    reason: str = ""
    dead_at: float = 0.0


class _Queue:
    __slots__ = ("delayed", "ready")

    def __init__(self) -> None:
        self.ready: list[tuple[int, float, int, str]] = []  # (-priority, eta, seq, id)
        self.delayed: list[tuple[float, int, str]] = []  # (eta, seq, id)


class MemoryBroker(Broker):
    """Keeps everything in process memory; one instance may serve many threads and loops."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, _Record] = {}
        self._queues: dict[str, _Queue] = {}
        self._seq = itertools.count()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._locks: dict[str, tuple[str, float]] = {}
        self._claims = Claims()

    @classmethod
    def from_url(cls, url: str) -> MemoryBroker:
        return cls()

    def _queue(self, name: str) -> _Queue:
        q = self._queues.get(name)
        if q is None:
            q = self._queues[name] = _Queue()
        return q

    def _place(self, rec: _Record, now: float) -> None:
        q = self._queue(rec.msg.queue)
        rec.lease_until, rec.token = 0.0, ""
        if rec.eta > now:
            rec.state = "delayed"
            heapq.heappush(q.delayed, (rec.eta, rec.seq, rec.msg.id))
        else:
            rec.state = "ready"
            heapq.heappush(q.ready, (-rec.msg.priority, rec.eta, rec.seq, rec.msg.id))

    def _promote(self, q: _Queue, now: float) -> None:
        while q.delayed and q.delayed[0][0] <= now:
            _, _, mid = heapq.heappop(q.delayed)
            rec = self._records[mid]
            rec.state = "ready"
            heapq.heappush(q.ready, (-rec.msg.priority, rec.eta, rec.seq, mid))

    def _wake(self) -> None:
        for loop, event in self._waiters:
            loop.call_soon_threadsafe(event.set)

    async def enqueue(self, messages: Sequence[Message]) -> None:
        now = time.time()
        with self._lock:
            for msg in messages:
                if msg.id in self._records:
                    continue  # idempotent: an id is stored once
                rec = _Record(msg, msg.eta or now, next(self._seq))
                self._records[msg.id] = rec
                self._place(rec, now)
            waiters = bool(self._waiters)
        if waiters:
            self._wake()

    async def lease(
        self, queues: Sequence[str], limit: int, visibility_timeout: float, *, claim: str | None = None
    ) -> list[Delivery]:
        now = time.time()
        token, retry = self._claims.token(claim)
        out: list[Delivery] = []
        with self._lock:
            if retry:
                held = self._held(token, now)
                if held:
                    return held
            heaps = []
            for name in queues:
                q = self._queues.get(name)
                if q is not None:
                    self._promote(q, now)
                    if q.ready:
                        heaps.append(q.ready)
            while len(out) < limit and heaps:
                best = heaps[0] if len(heaps) == 1 else min(heaps, key=lambda h: h[0])
                mid = heapq.heappop(best)[3]
                if not best:
                    heaps.remove(best)
                rec = self._records[mid]
                rec.state = "leased"
                rec.attempts += 1
                rec.lease_until = now + visibility_timeout
                rec.token = token
                out.append(_delivery(rec))
        return out

    def _held(self, token: str, now: float) -> list[Delivery]:
        """The live leases of ``token``, in lease order (call under the lock)."""
        held = [r for r in self._records.values() if r.state == "leased" and r.token == token]
        held = [r for r in held if r.lease_until >= now]
        held.sort(key=lambda r: (-r.msg.priority, r.eta, r.seq))
        return [_delivery(r) for r in held]

    async def reclaim(self, claim: str) -> list[Delivery]:
        token = check_claim(claim)
        with self._lock:
            return self._held(token, time.time())

    def _owned(self, d: Delivery) -> _Record | None:
        rec = self._records.get(d.id)
        if rec is None or rec.state != "leased" or rec.token != d.lease_token:
            return None
        return rec

    async def ack(self, deliveries: Sequence[Delivery]) -> list[str]:
        refused = []
        with self._lock:
            for d in deliveries:
                if self._owned(d) is not None:
                    del self._records[d.id]
                elif d.id in self._records:
                    refused.append(d.id)
        return refused

    async def nack(self, delivery: Delivery, retry_at: float, failure: Failure | None = None) -> bool:
        with self._lock:
            rec = self._owned(delivery)
            if rec is None:
                return False
            rec.eta, rec.failure, rec.redelivery = retry_at, failure, ""
            self._place(rec, time.time())
        self._wake()
        return True

    async def release(
        self, deliveries: Sequence[Delivery], reason: str = WORKER_SHUTDOWN, *, interrupted: bool = False
    ) -> None:
        now = time.time()
        with self._lock:
            for d in deliveries:
                rec = self._owned(d)
                if rec is not None:
                    if interrupted:
                        rec.interruptions += 1
                    if rec.interruptions <= MAX_REFUNDED_INTERRUPTIONS or not interrupted:
                        rec.attempts -= 1
                    rec.redelivery = reason
                    self._place(rec, now)
        self._wake()

    async def dead(self, delivery: Delivery, reason: str, failure: Failure | None = None) -> bool:
        with self._lock:
            rec = self._owned(delivery)
            if rec is None:
                return False
            rec.state, rec.reason, rec.failure = "dead", reason, failure
            rec.dead_at, rec.token = time.time(), ""
        return True

    async def extend(self, deliveries: Sequence[Delivery], visibility_timeout: float) -> list[str]:
        until = time.time() + visibility_timeout
        lost = []
        with self._lock:
            for d in deliveries:
                rec = self._owned(d)
                if rec is not None:
                    rec.lease_until = until
                else:
                    lost.append(d.id)
        return lost

    async def rescue(self) -> list[str]:
        now = time.time()
        rescued = []
        with self._lock:
            for rec in self._records.values():
                if rec.state == "leased" and rec.lease_until < now:
                    rec.redelivery = LEASE_EXPIRED  # its eta stays: it keeps its place in line
                    self._place(rec, now)
                    rescued.append(rec.msg.id)
            for name in [n for n, (_, until) in self._locks.items() if until <= now]:
                del self._locks[name]
        if rescued:
            self._wake()
        return rescued

    async def stats(self, queues: Sequence[str] | None = None) -> dict[str, QueueStats]:
        now = time.time()
        counts: dict[str, list[float]] = {}
        with self._lock:
            names = list(self._queues) if queues is None else list(queues)
            for name in names:
                counts[name] = [0, 0, 0, 0, now]
                q = self._queues.get(name)
                if q is not None:
                    self._promote(q, now)
            for rec in self._records.values():
                c = counts.get(rec.msg.queue)
                if c is None:
                    continue
                if rec.state == "ready":
                    c[0] += 1
                    c[4] = min(c[4], rec.eta)
                elif rec.state == "delayed":
                    c[1] += 1
                elif rec.state == "leased":
                    c[2] += 1
                else:
                    c[3] += 1
        return {
            name: QueueStats(int(c[0]), int(c[1]), int(c[2]), int(c[3]), max(0.0, now - c[4]))
            for name, c in counts.items()
        }

    def _dead(self, selector: Selector) -> list[_Record]:
        if selector.all:
            return [r for r in self._records.values() if r.state == "dead" and selector.queue in (None, r.msg.queue)]
        recs = (self._records.get(i) for i in dict.fromkeys(selector.ids))
        return [r for r in recs if r is not None and r.state == "dead"]

    def _letters(self, recs: list[_Record], limit: int | None = None) -> list[DeadLetter]:
        recs.sort(key=lambda r: (r.dead_at, r.msg.id))
        return [_dead_letter(r) for r in recs[:limit]]

    async def dlq_page(
        self, queue: str | None = None, limit: int = 100, after: DlqPosition | None = None
    ) -> list[DeadLetter]:
        with self._lock:
            recs = self._dead(Selector(all=True, queue=queue))
            if after is not None:
                recs = [r for r in recs if (r.dead_at, r.msg.id) > after]
            return self._letters(recs, max(0, limit))

    async def dlq_get(self, ids: Sequence[str]) -> list[DeadLetter]:
        with self._lock:
            return self._letters(self._dead(Selector(ids=ids)) if ids else [])

    async def dlq_match(self, prefix: str, limit: int = 10) -> list[DeadLetter]:
        with self._lock:
            recs = [r for r in self._dead(Selector(all=True)) if r.msg.id.startswith(prefix)]
            return self._letters(recs, max(0, limit))

    async def dlq_retry(self, selector: Selector) -> list[str]:
        now = time.time()
        with self._lock:
            recs = self._dead(selector)
            for rec in recs:
                rec.attempts, rec.eta, rec.reason, rec.failure = 0, now, "", None
                rec.interruptions = 0
                rec.redelivery = MANUAL_RETRY
                self._place(rec, now)
        self._wake()
        return [r.msg.id for r in recs]

    async def dlq_purge(self, selector: Selector) -> list[str]:
        with self._lock:
            recs = self._dead(selector)
            for rec in recs:
                del self._records[rec.msg.id]
        return [r.msg.id for r in recs]

    async def dlq_prune(self, dead_before: float | None = None, keep: int | None = None) -> int:
        with self._lock:
            doomed: set[str] = set()
            per_queue: dict[str, list[_Record]] = {}
            for rec in self._dead(Selector(all=True)):
                if dead_before is not None and rec.dead_at < dead_before:
                    doomed.add(rec.msg.id)
                else:
                    per_queue.setdefault(rec.msg.queue, []).append(rec)
            if keep is not None:
                for recs in per_queue.values():
                    recs.sort(key=lambda r: (r.dead_at, r.msg.id), reverse=True)
                    doomed.update(r.msg.id for r in recs[keep:])
            for mid in doomed:
                del self._records[mid]
        return len(doomed)

    async def acquire_lock(self, name: str, owner: str, ttl: float) -> bool:
        now = time.time()
        with self._lock:
            holder = self._locks.get(name)
            if holder is None or holder[0] == owner or holder[1] <= now:
                self._locks[name] = (owner, now + ttl)
                return True
            return False

    async def release_lock(self, name: str, owner: str) -> None:
        with self._lock:
            if self._locks.get(name, ("", 0.0))[0] == owner:
                del self._locks[name]

    async def wait(self, queues: Sequence[str], timeout: float) -> None:
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        entry = (loop, event)
        now = time.time()
        with self._lock:
            for name in queues:
                q = self._queues.get(name)
                if q is not None and (q.ready or (q.delayed and q.delayed[0][0] <= now)):
                    return  # work is already there
            self._waiters.append(entry)
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            with self._lock:
                self._waiters.remove(entry)


def _delivery(rec: _Record) -> Delivery:
    m = rec.msg
    return Delivery(
        m.id, m.queue, m.type, m.body, rec.attempts, rec.token, m.priority, rec.eta, m.created_at, rec.redelivery
    )


def _dead_letter(rec: _Record) -> DeadLetter:
    f = rec.failure or Failure()
    m = rec.msg
    return DeadLetter(
        m.id,
        m.queue,
        m.type,
        m.body,
        rec.attempts,
        rec.reason,
        f.type,
        f.message,
        f.traceback,
        rec.dead_at,
        m.created_at,
    )
