"""SQL and settings of the PostgreSQL broker, shared with transactional enqueue.

Everything here is plain data: the URL options conveyor reads (and strips
before libpq sees the URL), the versioned schema migrations, and the
statements the broker runs. :mod:`conveyor.brokers.postgres` runs them on
its pool; :mod:`conveyor.brokers.postgres_tx` runs the enqueue statement on
the caller's own connection.

Times are Unix epoch seconds (``double precision``). Lease deadlines, rescue,
named locks, what a lease claim holds and whether a job is due at lease time
are judged by the server's clock (:data:`SERVER_NOW`), so hosts with skewed
clocks agree on them; due times (``eta``, ``retry_at``) and ``dead_at`` are
the clients', except that a job sent or DLQ-retried to run now is never due
later than the server's now.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from ..errors import ConfigError
from .base import Message

SCHEMES = ("postgresql", "postgres")
#: URL query options that conveyor reads and removes before libpq sees the URL.
OPTIONS = ("schema", "auto_migrate", "pool_min", "pool_max", "relaxed_commit")
DEFAULT_SCHEMA = "conveyor"

#: Row states. A ready row whose ``eta`` is in the future is "delayed".
READY, LEASED, DEAD = 0, 1, 2

_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
#: First key of the two-key advisory lock taken while migrating ("conv").
_LOCK_NAMESPACE = 0x636F6E76


@dataclass(frozen=True, slots=True)
class Settings:
    """A parsed broker URL: the libpq URL without conveyor's options, plus those options."""

    conninfo: str
    schema: str = DEFAULT_SCHEMA
    auto_migrate: bool = True
    pool_min: int = 1
    pool_max: int = 10
    relaxed_commit: bool = True
    """Lease, ack and extend commit with ``synchronous_commit = off`` (see the docs)."""

    @property
    def channel(self) -> str:
        """The LISTEN/NOTIFY channel of this schema (at most 63 bytes, as PostgreSQL requires)."""
        name = f"conveyor_{self.schema}"
        if len(name) <= 63:
            return name
        return "conveyor_" + hashlib.sha1(self.schema.encode()).hexdigest()

    @property
    def lock_key(self) -> tuple[int, int]:
        """The advisory lock that serialises migrations of this schema."""
        crc = zlib.crc32(self.schema.encode())
        return _LOCK_NAMESPACE, crc - (1 << 32) if crc >= 1 << 31 else crc


def check_schema(name: str) -> str:
    """Schema names: a letter or ``_``, then up to 62 letters, digits or ``_``."""
    if not _SCHEMA_NAME.match(name):
        raise ConfigError(
            f"invalid PostgreSQL schema name {name!r}: use a letter or '_' followed by"
            " up to 62 letters, digits or '_'"
        )
    return name


def _flag(name: str, value: str) -> bool:
    low = value.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ConfigError(f"URL option {name}={value!r} must be true or false")


def _count(name: str, value: str, minimum: int) -> int:
    try:
        number = int(value)
    except ValueError:
        number = minimum - 1
    if number < minimum:
        raise ConfigError(f"URL option {name}={value!r} must be an integer >= {minimum}")
    return number


def parse_url(url: str) -> Settings:
    """Split ``postgresql://...?schema=s&auto_migrate=false&pool_min=1&pool_max=10``.

    conveyor's options are removed; every other query parameter is left for libpq.
    """
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ConfigError(f"not a PostgreSQL URL: {url!r}; use postgresql://user@host:5432/db")
    rest: list[tuple[str, str]] = []
    opts: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in OPTIONS:
            opts[key] = value
        else:
            rest.append((key, value))
    conninfo = urlunsplit(parts._replace(query=urlencode(rest, quote_via=quote)))
    pool_min = _count("pool_min", opts.get("pool_min", "1"), 0)
    pool_max = _count("pool_max", opts.get("pool_max", str(max(10, pool_min))), 1)
    if pool_max < pool_min:
        raise ConfigError(f"URL option pool_max={pool_max} is below pool_min={pool_min}")
    return Settings(
        conninfo=conninfo,
        schema=check_schema(opts.get("schema", DEFAULT_SCHEMA)),
        auto_migrate=_flag("auto_migrate", opts.get("auto_migrate", "true")),
        relaxed_commit=_flag("relaxed_commit", opts.get("relaxed_commit", "true")),
        pool_min=pool_min,
        pool_max=pool_max,
    )


def quote_ident(name: str) -> str:
    """Quote a name already checked by :func:`check_schema` (or a channel built from one)."""
    return '"' + name.replace('"', '""') + '"'


def migrations(schema: str) -> list[tuple[int, str]]:
    """Numbered schema changes, applied in order and recorded in ``schema_version``."""
    s = quote_ident(schema)
    return [
        (
            1,
            f"""
            CREATE TABLE {s}.jobs (
                id text PRIMARY KEY,
                seq bigserial NOT NULL,
                queue text NOT NULL,
                type text NOT NULL,
                priority integer NOT NULL DEFAULT 0,
                state smallint NOT NULL DEFAULT {READY},
                eta double precision NOT NULL,
                attempts integer NOT NULL DEFAULT 0,
                lease_until double precision,
                lease_token text,
                redelivery text NOT NULL DEFAULT '',
                body bytea NOT NULL,
                created_at double precision NOT NULL,
                reason text,
                error_type text,
                error_message text,
                traceback text,
                dead_at double precision
            );
            CREATE INDEX jobs_ready ON {s}.jobs (queue, priority DESC, eta, seq)
                WHERE state = {READY};
            CREATE INDEX jobs_leased ON {s}.jobs (lease_until) WHERE state = {LEASED};
            CREATE INDEX jobs_dead ON {s}.jobs (dead_at, seq) WHERE state = {DEAD};
            """,
        ),
        (
            2,
            f"""
            CREATE TABLE {s}.locks (
                name text PRIMARY KEY,
                owner text NOT NULL,
                expires_at double precision NOT NULL
            );
            """,
        ),
        (
            3,
            # Interruptions by a worker shutdown; see base.MAX_REFUNDED_INTERRUPTIONS.
            f"ALTER TABLE {s}.jobs ADD COLUMN interruptions integer NOT NULL DEFAULT 0",
        ),
    ]


def latest_version(schema: str = DEFAULT_SCHEMA) -> int:
    """The schema version this release of conveyor creates."""
    return migrations(schema)[-1][0]


#: The server's clock in epoch seconds. Lease deadlines, rescue, named locks and
#: due-ness at lease time use it, so hosts with skewed clocks agree on when a
#: lease or lock expires and when a job is due.
SERVER_NOW = "extract(epoch from now())::float8"

_DELIVERY_COLS = (
    "j.id, j.queue, j.type, j.body, j.attempts, j.lease_token, j.priority, j.eta,"
    " j.created_at, j.redelivery, j.seq"
)


class Queries:
    """Every statement of the broker, built once for one schema.

    Statements that make rows ready (enqueue, nack, release, rescue, DLQ retry)
    call ``pg_notify`` in the same statement, so the notification is sent when
    (and only if) the change commits.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        s = quote_ident(settings.schema)
        self.schema = s
        self.channel = settings.channel
        self.listen = f"LISTEN {quote_ident(self.channel)}"
        self.version_table = (
            f"CREATE TABLE IF NOT EXISTS {s}.schema_version ("
            " version integer PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        self.current_version = f"SELECT COALESCE(MAX(version), 0) FROM {s}.schema_version"
        self.record_version = f"INSERT INTO {s}.schema_version (version) VALUES (%s)"
        self.enqueue = _notifying(
            f"INSERT INTO {s}.jobs (id, queue, type, priority, eta, body, created_at)"
            # a job due by its producer's clock is due by the server's too (a producer
            # whose clock runs ahead must not hold back jobs meant to run now)
            " SELECT m.id, m.queue, m.type, m.priority,"
            f" CASE WHEN m.eta <= %(now)s THEN LEAST(m.eta, {SERVER_NOW}) ELSE m.eta END,"
            " m.body, m.created_at"
            " FROM unnest(%(ids)s::text[], %(queues)s::text[], %(types)s::text[],"
            " %(priorities)s::integer[], %(etas)s::float8[], %(bodies)s::bytea[],"
            " %(created)s::float8[]) WITH ORDINALITY"
            " AS m(id, queue, type, priority, eta, body, created_at, ord)"
            " ORDER BY m.ord ON CONFLICT (id) DO NOTHING"
        )
        # A lost lease, ack or extension (the server crashing within a fraction of a
        # second of the commit) only means the job runs again, as at-least-once
        # delivery allows; skipping the WAL flush takes it off the job's latency.
        relax = settings.relaxed_commit
        self._ctes = (
            ["relaxed AS MATERIALIZED (SELECT set_config('synchronous_commit', 'off', true))"]
            if relax else []
        )
        self._relax = f"WITH {self._ctes[0]} " if relax else ""
        self._relaxed = ", relaxed" if relax else ""
        self.ack = (
            f"{self._relax}DELETE FROM {s}.jobs j"
            f" USING unnest(%(ids)s::text[], %(tokens)s::text[]) AS d(did, dtoken){self._relaxed}"
            " WHERE j.id = d.did AND j.lease_token = d.dtoken"
            f" AND j.state = {LEASED} RETURNING j.id, j.lease_token"
        )
        self.nack = _notifying(
            f"UPDATE {s}.jobs SET state = {READY}, eta = %(retry_at)s, lease_until = NULL,"
            " lease_token = NULL, redelivery = '', error_type = %(etype)s,"
            " error_message = %(emsg)s, traceback = %(tb)s"
            f" WHERE id = %(id)s AND lease_token = %(token)s AND state = {LEASED}"
        )
        # SET expressions see the row as it was: the refund depends on the old count.
        self.release = _notifying(
            f"UPDATE {s}.jobs j SET state = {READY}, eta = LEAST(j.eta, {SERVER_NOW}),"
            " attempts = j.attempts - CASE WHEN %(interrupted)s AND j.interruptions >= %(refunded)s"
            " THEN 0 ELSE 1 END, interruptions = j.interruptions + %(interrupted)s::int,"
            " lease_until = NULL, lease_token = NULL, redelivery = %(reason)s"
            " FROM unnest(%(ids)s::text[], %(tokens)s::text[]) AS d(did, dtoken)"
            f" WHERE j.id = d.did AND j.lease_token = d.dtoken AND j.state = {LEASED}"
        )
        self.dead = (
            f"UPDATE {s}.jobs SET state = {DEAD}, reason = %(reason)s, error_type = %(etype)s,"
            " error_message = %(emsg)s, traceback = %(tb)s, dead_at = %(now)s,"
            " lease_until = NULL, lease_token = NULL"
            f" WHERE id = %(id)s AND lease_token = %(token)s AND state = {LEASED}"
        )
        self.extend = (
            f"{self._relax}UPDATE {s}.jobs j SET lease_until = {SERVER_NOW} + %(vt)s"
            f" FROM unnest(%(ids)s::text[], %(tokens)s::text[]) AS d(did, dtoken){self._relaxed}"
            f" WHERE j.id = d.did AND j.lease_token = d.dtoken AND j.state = {LEASED}"
            " RETURNING j.id, j.lease_token"
        )
        # A rescued job keeps its eta: it was due when it was leased, so it is due
        # to every worker whatever its clock, and it keeps its place in line.
        self.rescue = _notifying(
            f"UPDATE {s}.jobs j SET state = {READY}, lease_until = NULL,"
            " lease_token = NULL, redelivery = %(reason)s"
            f" WHERE j.id IN (SELECT id FROM {s}.jobs WHERE state = {LEASED}"
            f" AND lease_until < {SERVER_NOW} FOR UPDATE SKIP LOCKED)"
        )
        self.present = f"SELECT id FROM {s}.jobs WHERE id = ANY(%(ids)s::text[])"
        self.held = (
            f"SELECT {_DELIVERY_COLS} FROM {s}.jobs j"
            f" WHERE j.state = {LEASED} AND j.lease_token = %(token)s AND j.lease_until >= {SERVER_NOW}"
        )
        self.stats_all = self._stats("")
        self.stats_some = self._stats(" WHERE queue = ANY(%(queues)s::text[])")
        self.dlq_prune_age = f"DELETE FROM {s}.jobs WHERE state = {DEAD} AND dead_at < %(before)s"
        self.dlq_prune_count = (
            f"DELETE FROM {s}.jobs WHERE state = {DEAD} AND id IN (SELECT id FROM (SELECT id,"
            " row_number() OVER (PARTITION BY queue ORDER BY dead_at DESC, id DESC) AS n"
            f" FROM {s}.jobs WHERE state = {DEAD}) AS ranked WHERE n > %(keep)s)"
        )
        self.acquire_lock = (
            f"INSERT INTO {s}.locks AS l (name, owner, expires_at)"
            f" VALUES (%(name)s, %(owner)s, {SERVER_NOW} + %(ttl)s)"
            " ON CONFLICT (name) DO UPDATE SET owner = excluded.owner,"
            " expires_at = excluded.expires_at"
            f" WHERE l.owner = excluded.owner OR l.expires_at <= {SERVER_NOW} RETURNING owner"
        )
        self.release_lock = f"DELETE FROM {s}.locks WHERE name = %(name)s AND owner = %(owner)s"
        self.prune_locks = f"DELETE FROM {s}.locks WHERE expires_at < {SERVER_NOW}"
        self._lease_cache: dict[int, str] = {}

    def _stats(self, where: str) -> str:
        ready = f"state = {READY} AND eta <= %(now)s"
        return (
            f"SELECT queue, count(*) FILTER (WHERE {ready}),"
            f" count(*) FILTER (WHERE state = {READY} AND eta > %(now)s),"
            f" count(*) FILTER (WHERE state = {LEASED}),"
            f" count(*) FILTER (WHERE state = {DEAD}),"
            f" min(eta) FILTER (WHERE {ready})"
            f" FROM {self.schema}.jobs{where} GROUP BY queue"
        )

    def dlq_letters(self, where: str) -> str:
        """Dead letters matching ``where`` (a :meth:`dlq_where` filter), oldest first."""
        return (
            "SELECT id, queue, type, body, attempts, COALESCE(reason, ''),"
            " COALESCE(error_type, ''), COALESCE(error_message, ''), COALESCE(traceback, ''),"
            f" dead_at, created_at FROM {self.schema}.jobs WHERE {where}"
            " ORDER BY dead_at, id LIMIT %(limit)s"
        )

    def lease(self, queue_count: int) -> str:
        """The claim statement for ``queue_count`` queues (parameters ``q0``, ``q1``, ...).

        Each queue's ready rows are read in index order and locked with
        ``FOR UPDATE SKIP LOCKED``, so concurrent workers never wait on each
        other nor take the same row; the best ``limit`` of them are leased.
        """
        cached = self._lease_cache.get(queue_count)
        if cached is not None:
            return cached
        s = self.schema
        order = "ORDER BY priority DESC, eta, seq"

        def pick(i: int) -> str:
            return (
                f"SELECT id, priority, eta, seq FROM {s}.jobs WHERE state = {READY}"
                f" AND queue = %(q{i})s AND eta <= {SERVER_NOW} {order}"
                " LIMIT %(limit)s FOR UPDATE SKIP LOCKED"
            )

        if queue_count == 1:
            claim = pick(0)
        else:
            branches = " UNION ALL ".join(
                f"SELECT * FROM ({pick(i)}) AS q{i}" for i in range(queue_count)
            )
            claim = f"SELECT id FROM ({branches}) AS c {order} LIMIT %(limit)s"
        sql = (
            f"WITH {', '.join([*self._ctes, f'claimed AS MATERIALIZED ({claim})'])}"
            f" UPDATE {s}.jobs j SET state = {LEASED}, attempts = j.attempts + 1,"
            f" lease_until = {SERVER_NOW} + %(vt)s, lease_token = %(token)s"
            f" FROM claimed{self._relaxed} WHERE j.id = claimed.id RETURNING {_DELIVERY_COLS}"
        )
        self._lease_cache[queue_count] = sql
        return sql

    def dlq_where(
        self,
        ids: Sequence[str] | None = None,
        queue: str | None = None,
        *,
        prefix: str | None = None,
        after: tuple[float, str] | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """The dead-letter filter: by id, by id prefix, or all (optionally of one queue,
        after a ``(dead_at, id)`` keyset position)."""
        where = f"state = {DEAD}"
        params: dict[str, Any] = {}
        if ids is not None:
            where += " AND id = ANY(%(ids)s::text[])"
            params["ids"] = list(ids)
        if prefix is not None:
            where += " AND starts_with(id, %(prefix)s)"
            params["prefix"] = prefix
        if queue is not None:
            where += " AND queue = %(queue)s"
            params["queue"] = queue
        if after is not None:
            where += " AND dead_at >= %(after_at)s AND (dead_at > %(after_at)s OR id > %(after_id)s)"
            params.update(after_at=after[0], after_id=after[1])
        return where, params

    def dlq_retry(self, where: str) -> str:
        return _notifying(
            # due now by the server's clock too (a client ahead of it must not hold the job back)
            f"UPDATE {self.schema}.jobs SET state = {READY}, attempts = 0, interruptions = 0,"
            f" eta = LEAST(%(now)s, {SERVER_NOW}),"
            " redelivery = %(reason)s, reason = NULL, error_type = NULL,"
            f" error_message = NULL, traceback = NULL, dead_at = NULL WHERE {where}"
        )

    def dlq_purge(self, where: str) -> str:
        return f"DELETE FROM {self.schema}.jobs WHERE {where} RETURNING id"


def _notifying(dml: str) -> str:
    """Wrap a statement changing rows so it also notifies each queue that gained ready work.

    The result is one row: the changed ids and how many notifications were sent.
    Parameters ``channel`` and ``now`` are required besides the statement's own.
    """
    return (
        f"WITH changed AS ({dml} RETURNING id, queue, eta),"
        " woke AS MATERIALIZED (SELECT pg_notify(%(channel)s, q.queue)"
        " FROM (SELECT DISTINCT queue FROM changed WHERE eta <= %(now)s) AS q)"
        " SELECT ARRAY(SELECT id FROM changed), (SELECT count(*) FROM woke)"
    )


def enqueue_params(channel: str, messages: Sequence[Message], now: float) -> dict[str, Any]:
    """Parameters of :attr:`Queries.enqueue`; a message without ``eta`` is due ``now``."""
    return {
        "channel": channel,
        "now": now,
        "ids": [m.id for m in messages],
        "queues": [m.queue for m in messages],
        "types": [m.type for m in messages],
        "priorities": [m.priority for m in messages],
        "etas": [m.eta or now for m in messages],
        "bodies": [m.body for m in messages],
        "created": [m.created_at or now for m in messages],
    }
