"""The App's dead-letter API: look up, page, retry, purge and prune dead letters.

The CLI (``conveyor dlq``), the dashboard and your own code all go through
:class:`DeadLetters` (``app.dead_letters``, or the ``app.dlq_*`` methods), so
every operation is checked the same way and emits the same signals:
``dlq.retried`` and ``dlq.purged`` (count, ids, who asked) and ``dlq.pruned``
(count). Ids may be given whole or as a unique prefix.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from . import signals as sig
from .brokers import DeadLetter, Selector, position
from .errors import ConfigError, ConveyorError
from .registry import check_name

if TYPE_CHECKING:
    from .app import App
    from .worker import Worker

log = logging.getLogger("conveyor.dlq")

REQUESTERS = ("cli", "dashboard", "api")
"""Who may ask for a DLQ operation (the ``requested_by`` of its signal)."""
PRUNE_LOCK = "conveyor.dlq.prune"
"""The broker lock a worker holds while it is the one applying retention."""
CANDIDATES_SHOWN = 10
"""Most candidates an ambiguous prefix error lists."""


class DeadLetterNotFound(ConveyorError, LookupError):
    """No dead letter has this id (or an id starting with it)."""


class BadCursor(ConveyorError, ValueError):
    """A paging cursor that no page handed out."""


class AmbiguousDeadLetterId(ConveyorError, ValueError):
    """A prefix matches several dead letters; ``candidates`` lists (some of) them."""

    def __init__(self, prefix: str, candidates: Sequence[str]) -> None:
        self.prefix = prefix
        self.candidates = list(candidates)
        more = ", ..." if len(candidates) > CANDIDATES_SHOWN else ""
        shown = ", ".join(candidates[:CANDIDATES_SHOWN])
        super().__init__(f"dead-letter id prefix {prefix!r} matches several dead letters: {shown}{more}; "
                         "give more characters")


@dataclass(frozen=True, slots=True)
class Retention:
    """How long dead letters are kept: ``App(dead_letter_retention=Retention(...))``.

    A dead letter older than ``max_age`` is deleted, and each queue keeps at most
    its newest ``max_per_queue``; ``None`` lifts a limit. Workers apply the rules
    every ``interval`` seconds (one worker at a time, under a broker lock).
    """

    max_age: timedelta | None = timedelta(days=7)
    max_per_queue: int | None = 100_000
    interval: float = 300.0

    def __post_init__(self) -> None:
        if self.max_age is not None and self.max_age.total_seconds() <= 0:
            raise ConfigError("dead_letter_retention.max_age must be positive (or None for no limit)")
        if self.max_per_queue is not None and self.max_per_queue < 1:
            raise ConfigError("dead_letter_retention.max_per_queue must be at least 1 (or None for no limit)")
        if self.interval <= 0:
            raise ConfigError("dead_letter_retention.interval must be > 0")


@dataclass(frozen=True, slots=True)
class DeadLetterPage:
    """One page of dead letters, oldest first; pass ``next`` as ``after`` for the next one."""

    letters: list[DeadLetter]
    next: str | None
    """The cursor after the last letter, or None when this page is the last."""


def cursor(letter: DeadLetter) -> str:
    """The opaque cursor that resumes paging right after ``letter``."""
    dead_at, job_id = position(letter)
    return f"{dead_at!r}:{job_id}"


def parse_cursor(text: str) -> tuple[float, str]:
    at, sep, job_id = text.partition(":")
    try:
        if not sep or not job_id:
            raise ValueError
        return float(at), job_id
    except ValueError:
        raise BadCursor(f"bad dead-letter cursor {text!r}: pass the `next` cursor of a previous page") from None


def _check_requester(requested_by: str) -> None:
    if requested_by not in REQUESTERS:
        raise ValueError(f"requested_by must be one of {', '.join(REQUESTERS)}, not {requested_by!r}")


class DeadLetters:
    """The dead-letter API of one app (``app.dead_letters``)."""

    def __init__(self, app: App, retention: Retention | None) -> None:
        self.app = app
        self.retention = retention

    async def get(self, job_id: str) -> DeadLetter:
        """The dead letter with this id, or the one whose id starts with it."""
        [letter] = await self._resolve([job_id])
        return letter

    async def resolve(self, ids: Sequence[str], *, missing_ok: bool = False) -> list[str]:
        """Whole ids for ``ids`` (each a whole id or a unique prefix), in order, without repeats.

        Raises :class:`AmbiguousDeadLetterId`, and :class:`DeadLetterNotFound` naming
        every unknown one (unless ``missing_ok``: those are left out).
        """
        return list(dict.fromkeys(d.id for d in await self._resolve(ids, missing_ok)))

    async def _resolve(self, ids: Sequence[str], missing_ok: bool = False) -> list[DeadLetter]:
        wanted = list(dict.fromkeys(ids))
        if any(not i for i in wanted):
            raise ValueError("a dead-letter id cannot be empty")
        broker = await self.app.broker()
        exact = {d.id: d for d in await broker.dlq_get(wanted)}
        found: list[DeadLetter] = []
        missing: list[str] = []
        for job_id in wanted:
            letter = exact.get(job_id)
            if letter is None:
                matches = await broker.dlq_match(job_id, CANDIDATES_SHOWN + 1)
                if len(matches) > 1:
                    raise AmbiguousDeadLetterId(job_id, [d.id for d in matches])
                if not matches:
                    missing.append(job_id)
                    continue
                letter = matches[0]
            found.append(letter)
        if missing and not missing_ok:
            listed = ", ".join(repr(m) for m in missing)
            raise DeadLetterNotFound(f"no dead letter has the id (or id prefix) {listed}; see `conveyor dlq list`")
        return found

    async def page(self, queue: str | None = None, limit: int = 100, after: str | None = None) -> DeadLetterPage:
        """Up to ``limit`` dead letters (of ``queue``), oldest first, after the cursor ``after``."""
        if queue is not None:
            check_name("queue", queue)
        if limit < 1:
            raise ValueError("limit must be at least 1")
        start = None if after is None else parse_cursor(after)
        broker = await self.app.broker()
        letters = await broker.dlq_page(queue, limit + 1, start)
        more = len(letters) > limit
        letters = letters[:limit]
        return DeadLetterPage(letters, cursor(letters[-1]) if more else None)

    async def retry(self, selector: Selector, *, requested_by: str = "api", missing_ok: bool = False) -> list[str]:
        """Send dead letters back to their queues with fresh attempts; return their ids.

        Ids are resolved first (see :meth:`resolve`): an unknown or ambiguous one
        is an error and nothing is retried, unless ``missing_ok`` skips unknown ones.
        Emits ``dlq.retried`` (History records a manual retry for each id).
        """
        return await self._apply(selector, requested_by, missing_ok, retry=True)

    async def purge(self, selector: Selector, *, requested_by: str = "api", missing_ok: bool = False) -> list[str]:
        """Delete dead letters for good; return their ids (ids as for :meth:`retry`).

        Emits ``dlq.purged``.
        """
        return await self._apply(selector, requested_by, missing_ok, retry=False)

    async def _apply(self, selector: Selector, requested_by: str, missing_ok: bool, *, retry: bool) -> list[str]:
        _check_requester(requested_by)
        if selector.all:
            if selector.queue is not None:
                check_name("queue", selector.queue)
        else:
            ids = await self.resolve(selector.ids, missing_ok=missing_ok)
            if not ids:
                return []
            selector = Selector(ids=ids)
        broker = await self.app.broker()
        ids = await (broker.dlq_retry(selector) if retry else broker.dlq_purge(selector))
        if ids:
            # Emitted from a thread so that synchronous sinks (History's record of the
            # manual retry) are done when this returns, without blocking the loop.
            await asyncio.to_thread(
                self.app.bus.emit,
                sig.DLQ_RETRIED if retry else sig.DLQ_PURGED,
                count=len(ids),
                job_ids=",".join(ids),
                queue=(selector.queue or "") if selector.all else "",
                requested_by=requested_by,
            )
        return ids

    async def prune(self) -> int:
        """Apply the retention rules now; return how many dead letters were deleted.

        Emits ``dlq.pruned`` when some were.
        """
        if self.retention is None:
            return 0
        max_age, keep = self.retention.max_age, self.retention.max_per_queue
        before = None if max_age is None else time.time() - max_age.total_seconds()
        broker = await self.app.broker()
        n = await broker.dlq_prune(before, keep)
        if n:
            self.app.bus.emit(
                sig.DLQ_PRUNED,
                count=n,
                max_age=0.0 if max_age is None else max_age.total_seconds(),
                max_per_queue=keep or 0,
            )
            log.info("dlq: retention deleted %d dead letter%s", n, "" if n == 1 else "s")
        return n


class RetentionService:
    """A worker service applying dead-letter retention every ``interval`` seconds.

    The worker holding the broker lock :data:`PRUNE_LOCK` prunes; the lock lasts one
    interval, so across all workers retention runs about once per interval.
    """

    def __init__(self, dead_letters: DeadLetters) -> None:
        assert dead_letters.retention is not None
        self.dead_letters = dead_letters
        self.interval = dead_letters.retention.interval

    def __repr__(self) -> str:
        return f"RetentionService(every {self.interval}s)"

    async def run(self, worker: Worker) -> None:
        while True:
            try:
                broker = await self.dead_letters.app.broker()
                if await broker.acquire_lock(PRUNE_LOCK, worker.id, self.interval):
                    await self.dead_letters.prune()
            except Exception:
                log.warning("dlq: applying dead-letter retention failed; retrying in %ss", self.interval,
                            exc_info=True)
            await asyncio.sleep(self.interval)
