"""The Redis broker: sorted sets for order, one hash per job, Lua for atomicity.

Every change of a job's state (enqueue, lease, ack, nack, release, dead,
extend, rescue, DLQ retry and purge) is one Lua script, so a client killed at
any point leaves each job in exactly one place; whatever was leased sits in
the in-flight set until it is acked or :meth:`RedisBroker.rescue` puts it
back. Scripts that make work ready publish on a channel that idle workers
listen to, so :meth:`RedisBroker.wait` returns at once. See
docs/brokers/redis.md for the key layout and URL options.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from ..errors import BrokerUnavailable, ConfigError
from . import redis_scripts as lua
from .base import (
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

log = logging.getLogger("conveyor.brokers.redis")

DEFAULT_PREFIX = "conveyor"
#: Jobs one rescue / DLQ script call handles; larger sets take several calls.
BATCH = 500
#: Seconds of silence on the wake channel before it is pinged.
HEARTBEAT = 15.0


def split_url(url: str) -> tuple[str, str]:
    """Return ``(url for redis-py, key prefix)``: the ``prefix`` query parameter is ours."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefixes = [v for k, v in query if k == "prefix"]
    prefix = prefixes[-1] if prefixes else DEFAULT_PREFIX
    if not prefix or any(c.isspace() or c in "*?[]{}" for c in prefix):
        raise ConfigError(f"bad Redis key prefix {prefix!r}: use letters, digits, '_', '.', ':', '-'")
    if any(k == "decode_responses" for k, _ in query):
        raise ConfigError("the Redis broker stores raw bytes: remove decode_responses from the URL")
    rest = urlencode([(k, v) for k, v in query if k != "prefix"])
    return urlunsplit(parts._replace(query=rest)), prefix


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _ids(members: Any) -> list[str]:
    """Sorted-set members (as redis-py returns them, without scores) as strings."""
    return [_s(m) for m in members]


class RedisBroker(Broker):
    """A broker on one Redis server, shared by worker processes on any number of hosts."""

    loop_bound = True

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", prefix: str = DEFAULT_PREFIX) -> None:
        self.url = url
        self.prefix = prefix
        self._client: Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}
        self._listener: asyncio.Task[None] | None = None
        # Wake-up bookkeeping (see wait()): a counter per queue bumped by every
        # notification that work is ready, an epoch bumped on (re)subscription,
        # and the earliest known due time of delayed work per queue.
        self._gen: dict[str, int] = {}
        self._epoch = 0
        self._seen: dict[tuple[str, ...], tuple[int, ...]] = {}
        self._due: dict[str, float] = {}
        self._changed = asyncio.Event()
        self._claims = Claims()

    @classmethod
    def from_url(cls, url: str) -> RedisBroker:
        """``redis://[user:pass@]host:port/db?prefix=conveyor`` (``rediss://`` for TLS)."""
        plain, prefix = split_url(url)
        return cls(plain, prefix)

    def __repr__(self) -> str:
        return f"RedisBroker(prefix={self.prefix!r})"

    # -- plumbing ---------------------------------------------------------
    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    @property
    def client(self) -> Redis:
        """The connected redis-py client."""
        if self._client is None:
            raise RuntimeError("RedisBroker is not connected; await broker.connect() first")
        return self._client

    async def _run(self, name: str, *args: str | bytes | int | float) -> Any:
        if self._client is None:
            await self.connect()
        return await self._scripts[name](args=[self.prefix, *args])

    async def connect(self) -> None:
        """Connect, check the server answers, and register the scripts.

        Raises :class:`BrokerUnavailable` when the server cannot be reached or refuses us.
        """
        if self._client is not None:
            return
        client = Redis.from_url(self.url, decode_responses=False)
        try:
            await client.ping()
        except (RedisError, OSError) as exc:
            await client.aclose()
            raise BrokerUnavailable.connecting("Redis", self.url, exc) from exc
        except BaseException:
            await client.aclose()
            raise
        names = ("ENQUEUE", "LEASE", "RECLAIM", "ACK", "NACK", "RELEASE", "DEAD", "EXTEND", "RESCUE",
                 "DLQ_RETRY", "DLQ_PURGE", "DLQ_GET", "DLQ_PRUNE", "LOCK_ACQUIRE", "LOCK_RELEASE")
        self._scripts = {n: client.register_script(getattr(lua, n)) for n in names}
        self._client = client

    async def close(self) -> None:
        """Stop listening for wake-ups and close the connection pool."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    # -- contract -----------------------------------------------------------
    async def enqueue(self, messages: Sequence[Message]) -> None:
        if not messages:
            return
        now = time.time()
        args: list[str | bytes] = []
        for m in messages:
            args += [m.id, m.queue, m.type, m.body, str(m.priority), repr(float(m.eta or now)),
                     repr(float(m.created_at or now))]
        await self._run("ENQUEUE", repr(now), *args)

    async def lease(
        self,
        queues: Sequence[str],
        limit: int,
        visibility_timeout: float,
        *,
        claim: str | None = None,
    ) -> list[Delivery]:
        qs = tuple(dict.fromkeys(queues))
        if limit <= 0 or not qs:
            return []
        self._seen[qs] = self._mark(qs)
        # The script itself remembers a claim's jobs (also against redis-py resending
        # a call whose reply was lost), so whether the claim came before does not matter.
        token, _ = self._claims.token(claim)
        rows, nexts = await self._run("LEASE", repr(float(visibility_timeout)), limit, token, *qs)
        for q, due in zip(qs, nexts, strict=False):
            if due:
                self._due[q] = min(self._due.get(q, math.inf), float(due))
        return _deliveries(rows, token)

    async def reclaim(self, claim: str) -> list[Delivery]:
        token = check_claim(claim)
        return _deliveries(await self._run("RECLAIM", token), token)

    async def ack(self, deliveries: Sequence[Delivery]) -> list[str]:
        if not deliveries:
            return []
        return [_s(i) for i in await self._run("ACK", *_pairs(deliveries))]

    async def nack(self, delivery: Delivery, retry_at: float, failure: Failure | None = None) -> bool:
        f = failure or Failure()
        applied: int = await self._run("NACK", repr(time.time()), delivery.id, delivery.lease_token,
                                       repr(float(retry_at)), f.type, f.message, f.traceback)
        return applied == 1

    async def release(
        self, deliveries: Sequence[Delivery], reason: str = WORKER_SHUTDOWN, *, interrupted: bool = False
    ) -> None:
        if deliveries:
            await self._run("RELEASE", repr(time.time()), reason, "1" if interrupted else "0",
                            MAX_REFUNDED_INTERRUPTIONS, *_pairs(deliveries))

    async def dead(self, delivery: Delivery, reason: str, failure: Failure | None = None) -> bool:
        f = failure or Failure()
        applied: int = await self._run("DEAD", repr(time.time()), delivery.id, delivery.lease_token, reason,
                                       f.type, f.message, f.traceback)
        return applied == 1

    async def extend(self, deliveries: Sequence[Delivery], visibility_timeout: float) -> list[str]:
        if not deliveries:
            return []
        lost = await self._run("EXTEND", repr(float(visibility_timeout)), *_pairs(deliveries))
        return [_s(i) for i in lost]

    async def rescue(self) -> list[str]:
        rescued: list[str] = []
        while True:
            back, scanned = await self._run("RESCUE", BATCH)
            rescued += [_s(i) for i in back]
            if scanned < BATCH:
                return rescued

    async def stats(self, queues: Sequence[str] | None = None) -> dict[str, QueueStats]:
        if self._client is None:
            await self.connect()
        client = self.client
        if queues is None:
            names = sorted(_s(q) for q in await client.smembers(self._k("queues")))
        else:
            names = list(dict.fromkeys(queues))
        if not names:
            return {}
        now = time.time()
        async with client.pipeline(transaction=True) as pipe:
            for q in names:
                delayed = self._k("delayed", q)
                pipe.zcard(self._k("ready", q))
                pipe.zcount(delayed, "-inf", repr(now))
                pipe.zcount(delayed, f"({now!r}", "+inf")
                pipe.hget(self._k("leased"), q)
                pipe.zcard(self._k("dead", q))
                pipe.zrange(self._k("age", q), 0, 0, withscores=True)
                pipe.zrange(delayed, 0, 0, withscores=True)
            res = await pipe.execute()
        out = {}
        for i, q in enumerate(names):
            ready, due, later, leased, dead, age_head, delayed_head = res[7 * i: 7 * i + 7]
            oldest = [s for _, s in age_head] + [s for _, s in delayed_head if s <= now]
            age = max(0.0, now - min(oldest)) if oldest else 0.0
            out[q] = QueueStats(ready + due, later, max(0, int(leased or 0)), dead, age)
        return out

    async def dlq_page(
        self, queue: str | None = None, limit: int = 100, after: DlqPosition | None = None
    ) -> list[DeadLetter]:
        if limit <= 0:
            return []
        zk = self._k("dead", queue) if queue is not None else self._k("dead")
        if after is None:
            return await self.dlq_get(_ids(await self.client.zrange(zk, 0, limit - 1)))
        # dead:<q> is scored by dead_at and ties sort by member: (dead_at, id) order.
        # The ids are compared here, not in Lua, whose string order follows the locale.
        at = repr(after[0])
        ids = [i for i in _ids(await self.client.zrangebyscore(zk, at, at)) if i > after[1]][:limit]
        if len(ids) < limit:
            later = await self.client.zrangebyscore(zk, f"({at}", "+inf", start=0, num=limit - len(ids))
            ids += _ids(later)
        return await self.dlq_get(ids)

    async def dlq_get(self, ids: Sequence[str]) -> list[DeadLetter]:
        unique = list(dict.fromkeys(ids))
        letters: list[DeadLetter] = []
        for i in range(0, len(unique), BATCH):
            rows = await self._run("DLQ_GET", *unique[i: i + BATCH])
            letters += (
                DeadLetter(_s(r[0]), _s(r[1]), _s(r[2]), r[3], int(r[4]), _s(r[5]), _s(r[6]),
                           _s(r[7]), _s(r[8]), float(r[9] or 0), float(r[10] or 0))
                for r in rows
            )
        return sorted(letters, key=lambda d: (d.dead_at, d.id))

    async def dlq_match(self, prefix: str, limit: int = 10) -> list[DeadLetter]:
        if limit <= 0:
            return []
        pattern = "".join("\\" + c if c in "*?[]\\" else c for c in prefix) + "*"
        ids = [_s(m) async for m, _ in self.client.zscan_iter(self._k("dead"), match=pattern, count=BATCH)]
        return (await self.dlq_get(ids))[:limit]

    async def dlq_retry(self, selector: Selector) -> list[str]:
        return await self._dlq("DLQ_RETRY", selector)

    async def dlq_purge(self, selector: Selector) -> list[str]:
        return await self._dlq("DLQ_PURGE", selector)

    async def _dlq(self, script: str, selector: Selector) -> list[str]:
        touched: list[str] = []
        if not selector.all:
            ids = list(dict.fromkeys(selector.ids))
            for i in range(0, len(ids), BATCH):
                done, _ = await self._run(script, repr(time.time()), "ids", "", *ids[i: i + BATCH])
                touched += map(_s, done)
            return touched
        while True:
            done, scanned = await self._run(script, repr(time.time()), "all",
                                            selector.queue or "", BATCH)
            touched += map(_s, done)
            if scanned < BATCH:
                return touched

    async def dlq_prune(self, dead_before: float | None = None, keep: int | None = None) -> int:
        gone = 0
        if dead_before is not None:
            while True:
                n = int(await self._run("DLQ_PRUNE", "age", repr(dead_before), BATCH))
                gone += n
                if n < BATCH:
                    break
        if keep is not None:
            for queue in sorted(map(_s, await self.client.smembers(self._k("queues")))):
                while True:
                    n = int(await self._run("DLQ_PRUNE", "count", queue, keep, BATCH))
                    gone += n
                    if n < BATCH:
                        break
        return gone

    async def acquire_lock(self, name: str, owner: str, ttl: float) -> bool:
        """Take or renew ``name``; the lock is a key that Redis expires after ``ttl``."""
        ms = max(1, math.ceil(ttl * 1000))
        return bool(await self._run("LOCK_ACQUIRE", name, owner, ms))

    async def release_lock(self, name: str, owner: str) -> None:
        await self._run("LOCK_RELEASE", name, owner)

    # -- waking idle workers ------------------------------------------------
    def _mark(self, queues: tuple[str, ...]) -> tuple[int, ...]:
        return (self._epoch, *(self._gen.get(q, 0) for q in queues))

    async def wait(self, queues: Sequence[str], timeout: float) -> None:
        """Return when a job may be ready in ``queues``, or after ``timeout`` seconds.

        Wakes on a notification that arrived since the last :meth:`lease` of
        these queues, or when the earliest known delayed job falls due.
        """
        end = time.monotonic() + max(0.0, timeout)
        qs = tuple(dict.fromkeys(queues))
        if self._listener is None and self._client is not None:
            self._listener = asyncio.create_task(self._listen(), name="conveyor-redis-wake")
        base = self._seen.setdefault(qs, self._mark(qs))
        while True:
            changed = self._changed  # captured before checking: a later set() still wakes us
            mark = self._mark(qs)
            if mark != base:
                self._seen[qs] = mark
                return
            now_wall = time.time()
            due = [q for q in qs if q in self._due]
            if any(self._due[q] <= now_wall for q in due):
                for q in due:
                    if self._due[q] <= now_wall:
                        del self._due[q]
                return
            left = end - time.monotonic()
            if due:
                left = min(left, min(self._due[q] for q in due) - now_wall)
            if left <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), left)

    def _poke(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _listen(self) -> None:
        """Follow the wake channel; a (re)subscription wakes every waiter, since
        notifications may have been missed while not subscribed. An idle channel is
        pinged every :data:`HEARTBEAT` seconds so a silently dead connection is replaced."""
        delay = 0.05
        while True:
            pubsub = self.client.pubsub()
            # redis-py leaves these two untyped
            get: Callable[..., Awaitable[dict[str, Any] | None]] = pubsub.get_message
            close: Callable[[], Awaitable[None]] = pubsub.aclose
            try:
                await pubsub.subscribe(self._k("wake"))
                heard = time.monotonic()
                while True:
                    msg = await get(timeout=HEARTBEAT)
                    if msg is None:
                        if time.monotonic() - heard > 2.5 * HEARTBEAT:
                            raise ConnectionError("no answer to ping on the wake channel")
                        await pubsub.ping()
                        continue
                    heard = time.monotonic()
                    if msg["type"] == "subscribe":
                        self._epoch += 1
                        delay = 0.05
                    elif msg["type"] == "message":
                        self._note(msg["data"])
                    else:
                        continue
                    self._poke()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("redis wake-up channel lost (%s); retrying in %.2fs", exc, delay)
                self._epoch += 1
                self._poke()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            finally:
                with contextlib.suppress(Exception):
                    await close()

    def _note(self, data: bytes) -> None:
        eta_s, _, queue_b = data.partition(b" ")
        queue, eta = _s(queue_b), float(eta_s)
        if eta <= time.time():
            self._gen[queue] = self._gen.get(queue, 0) + 1
        else:
            self._due[queue] = min(self._due.get(queue, math.inf), eta)


def _pairs(deliveries: Sequence[Delivery]) -> list[str]:
    return [x for d in deliveries for x in (d.id, d.lease_token)]


def _deliveries(rows: Any, token: str) -> list[Delivery]:
    """Deliveries from the rows of the LEASE / RECLAIM scripts (see their row())."""
    return [
        Delivery(_s(r[0]), _s(r[1]), _s(r[2]), r[3], int(r[4]), token, int(r[5]),
                 float(r[6]), float(r[7]), _s(r[8]))
        for r in rows
    ]
