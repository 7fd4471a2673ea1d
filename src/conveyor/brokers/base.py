"""The broker contract: one narrow interface every broker implements.

A broker stores :class:`Message` envelopes whose ``body`` it never reads. It
leases ready messages in priority order, tracks attempts, holds delayed
messages until due, keeps dead letters with their reason, and gives back
expired leases. Every method is a coroutine; see docs/brokers.md.
"""

from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import uuid_utils

#: Reasons a message was delivered again, recorded on the next delivery.
LEASE_EXPIRED = "lease_expired"
WORKER_SHUTDOWN = "worker_shutdown"
MANUAL_RETRY = "manual_retry"

#: How many times a job that had started running may be interrupted by a worker
#: shutdown (outliving ``--shutdown-timeout``, or a forced stop) and requeued with
#: its attempt given back. Each later interruption spends the attempt, so a job
#: that always outlives the shutdown timeout reaches ``max_attempts`` and is
#: dead-lettered instead of being requeued forever.
MAX_REFUNDED_INTERRUPTIONS = 2

#: How many lease claims a broker instance remembers (a retry comes within seconds).
CLAIM_MEMORY = 4096


@dataclass(frozen=True, slots=True)
class Message:
    """What a broker stores: routing fields plus an opaque encoded body."""

    id: str
    queue: str
    type: str
    body: bytes
    priority: int = 0
    eta: float = 0.0
    created_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Delivery:
    """A leased message. ``attempts`` includes this delivery."""

    id: str
    queue: str
    type: str
    body: bytes
    attempts: int
    lease_token: str
    priority: int = 0
    eta: float = 0.0
    created_at: float = 0.0
    redelivery: str = ""
    """Why this is a redelivery (:data:`LEASE_EXPIRED`, ...); empty on a first delivery."""


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Counts for one queue. ``oldest_age_s`` is the age of the oldest ready message."""

    ready: int = 0
    delayed: int = 0
    in_flight: int = 0
    dead: int = 0
    oldest_age_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "delayed": self.delayed,
            "in_flight": self.in_flight,
            "dead": self.dead,
            "oldest_age_s": round(self.oldest_age_s, 3),
        }


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message in the dead-letter store, with why it is there."""

    id: str
    queue: str
    type: str
    body: bytes
    attempts: int
    reason: str
    error_type: str = ""
    error_message: str = ""
    traceback: str = ""
    dead_at: float = 0.0
    created_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Failure:
    """The last error of a message, stored with a retry or a dead letter."""

    type: str = ""
    message: str = ""
    traceback: str = ""


DlqPosition = tuple[float, str]
"""Where a dead letter sits in the DLQ order: its ``(dead_at, id)``."""


def position(letter: DeadLetter) -> DlqPosition:
    """The keyset position of ``letter`` (pass it as ``after`` to get the next page)."""
    return (letter.dead_at, letter.id)


@dataclass(slots=True)
class Selector:
    """Which dead letters a DLQ operation touches: all (optionally of one queue) or by id."""

    ids: Sequence[str] = field(default_factory=tuple)
    all: bool = False
    queue: str | None = None

    def __post_init__(self) -> None:
        if not self.all and not self.ids:
            raise ValueError("select dead letters by id, or pass all=True")


def check_claim(claim: object) -> str:
    """``claim`` if it is a valid lease claim (a non-empty string); else a clear ValueError."""
    if not isinstance(claim, str) or not claim:
        raise ValueError(f"a lease claim is a non-empty string, got {claim!r}")
    return claim


class Claims:
    """The claims of one broker instance's recent lease calls.

    A lease token is the call's claim (or a random one without a claim). A claim
    this instance has not seen before cannot hold anything, so the lease takes
    new messages at once; a claim seen before (a retry after a lost reply) first
    looks for the live leases still held with it. Only retries pay for that
    look-up; :meth:`Broker.reclaim` always looks.
    """

    def __init__(self, size: int = CLAIM_MEMORY) -> None:
        self._size = size
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def token(self, claim: str | None) -> tuple[str, bool]:
        """The lease token for a call with ``claim``, and whether the claim came before."""
        if claim is None:
            return str(uuid_utils.uuid4()), False
        check_claim(claim)
        with self._lock:
            if claim in self._seen:
                return claim, True
            self._seen[claim] = None
            if len(self._seen) > self._size:
                self._seen.popitem(last=False)
        return claim, False


class Broker(ABC):
    """The contract every broker implements; the conformance suite in tests/contract checks it.

    ``loop_bound`` brokers hold connections tied to one event loop; the app
    opens one instance per loop. Others may be shared across loops and threads.
    """

    loop_bound: bool = False

    async def connect(self) -> None:  # noqa: B027 - optional hook
        """Open connections and create the schema if needed."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    @abstractmethod
    async def enqueue(self, messages: Sequence[Message]) -> None:
        """Store messages atomically; a message with ``eta`` in the future is delayed."""

    @abstractmethod
    async def lease(
        self, queues: Sequence[str], limit: int, visibility_timeout: float, *, claim: str | None = None
    ) -> list[Delivery]:
        """Lease up to ``limit`` due messages from ``queues`` for ``visibility_timeout`` seconds.

        Order: highest priority first, then earliest ``eta``, then enqueue order.
        Each leased message's attempts grows by one. The lease deadline is taken
        from the broker's clock (the server's, for Redis and PostgreSQL).

        ``claim`` makes the call safe to repeat: a caller whose call raised (the
        reply was lost) calls again with the same claim, and gets back the
        messages that claim still holds, attempts unchanged, instead of new ones.
        A claim that holds nothing leases new messages.

        What a claim holds: the messages leased with it (their lease token is the
        claim) whose lease is still live by the broker's clock, whether or not the
        others of its batch were acked, nacked or released meanwhile, and for as
        long as extensions keep them live. A lease that expired is no longer the
        claim's, rescued or not. (Memory, SQLite and PostgreSQL look only for the
        claims of the last :data:`CLAIM_MEMORY` calls of the same instance; a
        retry comes within seconds.)
        """

    @abstractmethod
    async def reclaim(self, claim: str) -> list[Delivery]:
        """The deliveries ``claim`` holds (as :meth:`lease` defines it), attempts and
        leases unchanged, in lease order; never leases anything.

        For a caller that will not lease again (a worker stopping after a lease
        call raised) and only wants back what that call may have taken. Any
        instance on the store answers it, not only the one that leased.
        """

    @abstractmethod
    async def ack(self, deliveries: Sequence[Delivery]) -> list[str]:
        """Delete finished messages; return the ids refused by the lease-token check: the
        message is still stored but no longer under this lease (rescued, re-leased,
        dead). A message already gone is not reported, so an ack repeated after a
        lost reply is not mistaken for a refusal."""

    @abstractmethod
    async def nack(self, delivery: Delivery, retry_at: float, failure: Failure | None = None) -> bool:
        """Return a message to its queue, due at ``retry_at``; attempts are kept.

        Returns False, changing nothing, when the lease-token check refuses it: the
        lease was lost (the message was rescued and re-leased, is dead, or is gone).
        """

    @abstractmethod
    async def release(
        self, deliveries: Sequence[Delivery], reason: str = WORKER_SHUTDOWN, *, interrupted: bool = False
    ) -> None:
        """Give back leased messages, due now, with ``reason`` as their next redelivery.

        ``interrupted=False`` (never started): the attempt does not count.
        ``interrupted=True`` (started, then stopped by a shutdown): the broker counts
        the interruption on the message and gives the attempt back only for the
        first :data:`MAX_REFUNDED_INTERRUPTIONS` of them; later ones count. A manual
        DLQ retry forgets the count. A delivery whose lease was lost is ignored.
        """

    @abstractmethod
    async def dead(self, delivery: Delivery, reason: str, failure: Failure | None = None) -> bool:
        """Move a message to the dead-letter store with a machine-readable ``reason``.

        Returns False, changing nothing, when the lease-token check refuses it (as
        for :meth:`nack`): another worker may hold the message now.
        """

    @abstractmethod
    async def extend(self, deliveries: Sequence[Delivery], visibility_timeout: float) -> list[str]:
        """Push the lease deadline of live deliveries ``visibility_timeout`` seconds past
        the broker's now; return the ids whose lease could not be renewed (lost)."""

    @abstractmethod
    async def rescue(self) -> list[str]:
        """Return messages whose lease deadline passed (by the broker's clock) to their
        queues, marked :data:`LEASE_EXPIRED`; return their ids.

        A rescued message keeps its ``eta``: it was due when leased, so it is due to
        every worker whatever its clock, it keeps its place in line (before messages
        of its priority that came later), and the queue's ``oldest_age_s`` still
        counts from when it first became due.
        """

    @abstractmethod
    async def stats(self, queues: Sequence[str] | None = None) -> dict[str, QueueStats]:
        """Per-queue counts: for ``queues``, or for every queue the broker knows."""

    async def dlq_list(self, queue: str | None = None, limit: int = 1000) -> list[DeadLetter]:
        """Dead letters, oldest first (the first page of :meth:`dlq_page`)."""
        return await self.dlq_page(queue, limit)

    @abstractmethod
    async def dlq_page(
        self, queue: str | None = None, limit: int = 100, after: DlqPosition | None = None
    ) -> list[DeadLetter]:
        """Up to ``limit`` dead letters ordered by ``(dead_at, id)``, oldest first.

        ``after`` is the :func:`position` of the last letter of the previous page:
        the page starts right after it, so letters added or removed meanwhile never
        shift the pages (keyset paging).
        """

    @abstractmethod
    async def dlq_get(self, ids: Sequence[str]) -> list[DeadLetter]:
        """The dead letters among ``ids`` (live or unknown ids are left out), oldest first."""

    @abstractmethod
    async def dlq_match(self, prefix: str, limit: int = 10) -> list[DeadLetter]:
        """Up to ``limit`` dead letters whose id starts with ``prefix``, oldest first."""

    @abstractmethod
    async def dlq_retry(self, selector: Selector) -> list[str]:
        """Move dead letters back to their queues with fresh attempts; return their ids."""

    @abstractmethod
    async def dlq_purge(self, selector: Selector) -> list[str]:
        """Delete dead letters for good; return their ids."""

    @abstractmethod
    async def dlq_prune(self, dead_before: float | None = None, keep: int | None = None) -> int:
        """Apply retention: delete dead letters that died before ``dead_before`` (epoch
        seconds) and, per queue, all but the newest ``keep``; return how many were deleted."""

    @abstractmethod
    async def acquire_lock(self, name: str, owner: str, ttl: float) -> bool:
        """Take or renew the named lock for ``ttl`` seconds.

        True when ``owner`` holds it afterwards: it was free, expired, or already
        ``owner``'s. Used for leader election (schedulers, monitors).
        """

    @abstractmethod
    async def release_lock(self, name: str, owner: str) -> None:
        """Release the named lock if ``owner`` holds it."""

    async def wait(self, queues: Sequence[str], timeout: float) -> None:
        """Wait until work may be ready or ``timeout`` passes. Brokers that can be
        notified (LISTEN/NOTIFY, pub/sub, in-process events) return early, and must
        not miss work made ready between the caller's last ``lease`` and this call."""
        await asyncio.sleep(timeout)
