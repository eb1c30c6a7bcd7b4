"""
PostgresSink: outcomes shared by every worker and pod, through the application's PostgreSQL.

Tables, in a schema of their own (``cobalt`` unless named), created on first use or by
``cobalt-async db migrate``:

- ``outcomes``: the first terminal event per job (``job_id`` primary key), in the encoding
  RedisSink uses; ``seq``, a bigserial, orders them for the wake-up cursor;
- ``seen``: delivery ids of non-terminal events, for de-duplication;
- ``pending``: the durable pending registry;
- ``schema_version``: how far the migrations went.

A publish is one statement, ``INSERT ... ON CONFLICT (job_id) DO NOTHING RETURNING seq``
and, only when it inserted, a ``pg_notify`` of that seq, job id and (when it fits the payload)
the outcome itself: both commit together, so a waiter that misses the notification finds the
row, and one that misses the row gets the notification, which is the row.

Each process listens on one connection of its own and reads its cursor only once ``LISTEN``
is in effect, so a wait registered after :meth:`PostgresSink.armed` returned cannot miss a
commit. Notifications sent while the listener was away are lost for good: after every
reconnect it re-reads the rows after its cursor, then every pending job (a seq is drawn at
insert and committed later, so a row below the cursor may have committed while it was away).

Expired rows are deleted in the background, in short batches of locked-and-skipped rows
(``FOR UPDATE SKIP LOCKED``) found through an index on their expiry: ingestion never waits on
a cleanup, and processes cleaning at once share the work.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import anyio
import asyncpg
from anyio.abc import TaskGroup

from .._errors import ConfigurationError, SinkUnavailableError
from .._outcome import Outcome, PendingJob
from ._base import Sink, StoreStats
from ._shared import (
    Detached,
    Outage,
    Rereads,
    backoff,
    carried_outcome,
    decode_outcome,
    encode_outcome,
    not_open,
)

logger = logging.getLogger("cobalt_async.sinks.postgres")

SCHEMA_VERSION = 1
"""The schema version this release creates and reads."""

APPLICATION_NAME = "cobalt_async"
"""How the sink's command connections name themselves (``pg_stat_activity.application_name``)."""
LISTENER_NAME = "cobalt_async listener"
"""How each process's listening connection names itself."""

_SCHEMES = ("postgresql", "postgres")
# Unquoted and lowercase, so that psql users type it as it is; short enough that the
# notification channel "<schema>.outcomes" stays within PostgreSQL's 63-byte names.
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,47}")
# Rows a reconnected listener re-reads after its cursor; the re-read of every pending job
# that follows covers any beyond.
_CATCH_UP = 10_000
# A notification carries the outcome when job id and outcome take at most this many bytes.
_INLINE_BYTES = 7_900
_MIGRATION_TIMEOUT = 30.0
_CLEANUP_TIMEOUT = 10.0

_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE SCHEMA IF NOT EXISTS {schema};
    CREATE TABLE IF NOT EXISTS {schema}.schema_version (
        version integer PRIMARY KEY,
        applied_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE IF NOT EXISTS {schema}.outcomes (
        job_id text PRIMARY KEY,
        seq bigserial NOT NULL UNIQUE,
        outcome text NOT NULL,
        stored_at timestamptz NOT NULL DEFAULT now(),
        expires_at timestamptz NOT NULL
    );
    CREATE INDEX IF NOT EXISTS outcomes_expires_at ON {schema}.outcomes (expires_at);
    CREATE TABLE IF NOT EXISTS {schema}.seen (
        key text PRIMARY KEY,
        expires_at timestamptz NOT NULL
    );
    CREATE INDEX IF NOT EXISTS seen_expires_at ON {schema}.seen (expires_at);
    CREATE TABLE IF NOT EXISTS {schema}.pending (
        job_id text PRIMARY KEY,
        kind text NOT NULL,
        submitted_at double precision NOT NULL,
        deadline double precision,
        forget_at double precision NOT NULL
    );
    CREATE INDEX IF NOT EXISTS pending_forget_at ON {schema}.pending (forget_at);
    """,
)
"""Migration *n* (from 1) takes the schema from version *n - 1* to *n*; each is idempotent."""

# What a failing PostgreSQL raises (OSError includes TimeoutError, from fail_after too).
_FAILURES = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError)


class PostgresSink(Sink):
    """
    A sink shared across processes through PostgreSQL (asyncio only, as asyncpg is).

    Open it with ``async with PostgresSink(dsn) as sink:`` or let ``async with CobaltClient(
    sink=sink)`` open it: waits need its listener running. ``WebhookReceiver`` can publish
    to it without opening it. Every outcome stays in the ``outcomes`` table until its TTL:
    the audit trail of what Cobalt reported, queryable with SQL.
    """

    keeps_registry = True

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "cobalt",
        outcome_ttl: float = 86_400.0,
        dedup_ttl: float = 86_400.0,
        recheck_interval: float = 30.0,
        command_timeout: float = 1.0,
        connect_timeout: float = 5.0,
        max_connections: int = 10,
        heartbeat_interval: float = 5.0,
        cleanup_interval: float = 60.0,
        cleanup_batch: int = 1_000,
    ) -> None:
        """
        Args:
            dsn: ``postgresql://user:password@host:5432/database`` (libpq's URL form, with
                its query parameters, ``sslmode`` among them). It must reach PostgreSQL
                itself, or a session-mode pooler: ``LISTEN`` needs a session.
            schema: The schema that holds the sink's tables, created when missing; a
                lowercase name, so that it can live in the application's own database.
            command_timeout: Seconds one store command may take in all, waiting for a pooled
                connection included, before it fails with ``SinkUnavailableError``: keep it
                under the receiver's ``publish_timeout``.
            connect_timeout: Seconds a new connection may take. A command that gives up
                first leaves it to finish, for the next command to use.
            max_connections: Size of the command connection pool; more concurrent commands
                wait for a free connection (within *command_timeout*). The listener has one
                connection of its own.
            heartbeat_interval: Seconds of silence after which the listener checks that its
                connection still answers (a half-open connection otherwise looks idle).
            cleanup_interval: Seconds between two deletions of expired rows.
            cleanup_batch: Rows deleted per statement by a cleanup.
        """
        settings = (outcome_ttl, dedup_ttl, recheck_interval, command_timeout, connect_timeout)
        if min(*settings, heartbeat_interval, cleanup_interval) <= 0:
            msg = (
                "PostgresSink TTLs, recheck_interval, command_timeout, connect_timeout, "
                "heartbeat_interval and cleanup_interval must be positive"
            )
            raise ConfigurationError(msg)
        if max_connections < 1 or cleanup_batch < 1:
            msg = "PostgresSink max_connections and cleanup_batch must be at least 1"
            raise ConfigurationError(msg)
        if not isinstance(schema, str) or _SCHEMA_NAME.fullmatch(schema) is None:
            msg = (
                f"PostgresSink schema must be a lowercase name of letters, digits and _ "
                f"(at most 48), got {schema!r}"
            )
            raise ConfigurationError(msg)
        super().__init__()
        self.host, self._password = _parse_dsn(dsn)
        self._dsn = dsn
        self.schema = schema
        self.outcome_ttl = float(outcome_ttl)
        self.dedup_ttl = float(dedup_ttl)
        self.recheck_interval = recheck_interval
        self.command_timeout = command_timeout
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        self.heartbeat_interval = heartbeat_interval
        self.cleanup_interval = cleanup_interval
        self.cleanup_batch = cleanup_batch
        self.channel = f"{schema}.outcomes"
        """The notification channel: ``LISTEN "<schema>.outcomes"`` to watch outcomes land."""
        self._sql = _Statements(schema)
        self._pool: asyncpg.Pool | None = None
        self._migrated = False
        self._migration = (0, 0)
        self._setup_lock = asyncio.Lock()
        self._commands = Detached()
        self._armed = anyio.Event()
        self._rereads = Rereads(recheck_interval, logger)
        self._signal = asyncio.Event()
        self._woken: list[str] = []
        self._lost = False
        self._cursor: int | None = None
        self._reconnects = 0
        self._evicted = 0
        self._outage = Outage("PostgreSQL", logger)

    def __repr__(self) -> str:
        return (
            f"<PostgresSink host={self.host!r} schema={self.schema!r} "
            f"pending={self._correlator.pending}>"
        )

    # Store.

    async def get_outcomes(self, job_ids: Sequence[str]) -> dict[str, Outcome]:
        if not job_ids:
            return {}
        try:
            rows = await self._call(_statement("fetch", self._sql.fetch_outcomes, list(job_ids)))
        except SinkUnavailableError:
            # A wait whose store read failed may have missed an outcome stored before it
            # registered: have every pending job re-read once PostgreSQL answers again.
            self._rereads.ask()
            raise
        return {job_id: decode_outcome(value) for job_id, value in rows}

    async def put_if_absent(self, job_id: str, outcome: Outcome) -> Outcome | None:
        encoded = encode_outcome(outcome).decode()
        insert = _statement(
            "fetch", self._sql.insert_outcome, job_id, encoded, self.outcome_ttl, self.channel
        )
        read = _statement("fetchval", self._sql.fetch_outcome, job_id)
        while True:
            if await self._call(insert):
                return None
            # Read in a statement of its own: the insert's snapshot may predate the row it
            # conflicted with. Absent again only if a cleanup deleted it meanwhile.
            existing = await self._call(read)
            if existing is not None:
                return decode_outcome(existing)

    async def first_seen(self, key: str) -> bool:
        insert = _statement("fetchval", self._sql.insert_seen, key, self.dedup_ttl)
        return await self._call(insert) is not None

    def store_stats(self) -> StoreStats:
        return StoreStats(
            evicted=self._evicted,
            reconnects=self._reconnects,
            outages=self._outage.outages,
            failed_commands=self._outage.failed_commands,
        )

    # Pending registry.

    async def add_pending(self, job: PendingJob) -> None:
        forget_at = job.submitted_at + self.outcome_ttl
        row = (job.job_id, job.kind, job.submitted_at, job.deadline, forget_at)
        await self._call(_statement("execute", self._sql.upsert_pending, *row))

    async def remove_pending(self, job_id: str) -> None:
        await self._call(_statement("execute", self._sql.delete_pending, job_id))

    async def list_pending(self) -> list[PendingJob]:
        await self._call(_statement("execute", self._sql.forget_pending, time.time()))
        rows = await self._call(_statement("fetch", self._sql.fetch_pending))
        return [PendingJob(*row) for row in rows]

    # Schema and retention.

    async def migrate(self) -> tuple[int, int]:
        """
        Create or upgrade the sink's tables now (the first command does it otherwise).

        Returns the schema version found (0: none) and the version now.

        Raises:
            SinkUnavailableError: PostgreSQL is unreachable, or refused (the message says why).
        """
        self._migrated = False  # look again, whatever this process found before
        await self._call(_statement("execute", "SELECT 1"), timeout=_MIGRATION_TIMEOUT)
        return self._migration

    async def delete_expired(self) -> int:
        """
        Delete the outcomes, delivery ids and pending entries past their TTL; return how many.

        The background cleanup calls it every ``cleanup_interval``. Each statement deletes at
        most ``cleanup_batch`` rows and skips rows another cleanup holds.
        """
        deleted = 0
        for table, sql in self._sql.expire.items():
            args = (
                (self.cleanup_batch, time.time()) if table == "pending" else (self.cleanup_batch,)
            )
            while True:
                status = await self._call(
                    _statement("execute", sql, *args), timeout=_CLEANUP_TIMEOUT
                )
                count = int(status.rpartition(" ")[2])
                deleted += count
                if table != "pending":
                    self._evicted += count
                if count < self.cleanup_batch:
                    break
        return deleted

    # Commands.

    async def _call(self, operation: Operation, *, timeout: float | None = None) -> Any:
        """
        Run ``operation(connection, timeout)`` on a pooled connection, or fail with
        ``SinkUnavailableError`` within *timeout* (``command_timeout`` by default).

        The operation runs detached (:class:`Detached`): the caller stops waiting at its
        deadline (or its own cancellation), while asyncpg finishes under its own timeouts and
        returns the connection to the pool in a known state.
        """
        limit = self.command_timeout if timeout is None else timeout
        try:
            with anyio.fail_after(limit):
                result = await self._commands.run(self._run(operation, limit))
        except (*_FAILURES, _Refused) as exc:
            reason = self._unreachable(exc)
            self._outage.failed(reason)
            raise SinkUnavailableError(reason) from exc
        self._outage.answered()
        return result

    async def _run(self, operation: Operation, timeout: float) -> Any:
        try:
            return await self._run_once(operation, timeout)
        except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
            # The tables went away (a schema dropped by hand): make them again, once.
            logger.warning(
                "schema %r of PostgreSQL at %s is gone: re-creating it", self.schema, self.host
            )
            self._migrated = False
            return await self._run_once(operation, timeout)

    async def _run_once(self, operation: Operation, timeout: float) -> Any:
        # Waiting for a connection may include opening one: connect_timeout bounds that.
        acquire = max(timeout, self.connect_timeout)
        pool = await self._ready(acquire)
        async with pool.acquire(timeout=acquire) as connection:
            try:
                return await operation(connection, timeout)
            except Exception as exc:
                if not isinstance(exc, asyncpg.PostgresError | TimeoutError):
                    # asyncpg lost track of the session (seen when a restart cut it
                    # mid-statement): never hand it out again.
                    connection.terminate()
                raise

    async def _ready(self, timeout: float) -> asyncpg.Pool:
        """The pool, created on first use, with the schema migrated."""
        if self._pool is not None and self._migrated:
            return self._pool
        async with self._setup_lock:
            if self._pool is None:
                self._pool = await _create_pool(self)
            if not self._migrated:
                async with self._pool.acquire(timeout=timeout) as connection:
                    await self._migrate(connection, _MIGRATION_TIMEOUT)
        return self._pool

    async def _migrate(self, connection: asyncpg.Connection, timeout: float) -> None:
        before = await self._version(connection, timeout)
        if before < SCHEMA_VERSION:
            try:
                async with connection.transaction():
                    # One migrating process at a time; the others find the work done.
                    await connection.execute(self._sql.lock, timeout=timeout)
                    before = await self._version(connection, timeout)
                    for version, migration in enumerate(self._sql.migrations, start=1):
                        if version > before:
                            await connection.execute(migration, timeout=timeout)
                            await connection.execute(self._sql.set_version, version)
            except asyncpg.InsufficientPrivilegeError as exc:
                msg = (
                    f"PostgreSQL at {self.host} refused to create schema {self.schema!r} "
                    f"({exc}): run `cobalt-async db migrate --schema {self.schema}` as a role "
                    "that may, then grant this one USAGE on the schema and its sequence, and "
                    "SELECT, INSERT, UPDATE and DELETE on its tables"
                )
                raise _Refused(msg) from exc
        self._migrated = True
        self._migration = before, max(before, SCHEMA_VERSION)

    async def _version(self, connection: asyncpg.Connection, timeout: float) -> int:
        # The catalog read as a table, not by to_regclass: a name lookup may answer from a
        # cache that another session's migration, committed meanwhile, has not reached.
        if not await connection.fetchval(self._sql.has_version, self.schema, timeout=timeout):
            return 0
        found = await connection.fetchval(self._sql.version, timeout=timeout)
        return int(found or 0)

    def _unreachable(self, exc: BaseException) -> str:
        if isinstance(exc, _Refused):
            return str(exc)
        if isinstance(exc, asyncpg.PostgresError):
            # The server's own words say what is wrong (a password refused, a read-only
            # standby, a database that does not exist); it never echoes the password.
            detail = f"{type(exc).__name__}: {_scrub(str(exc), self._password)}"
        else:
            detail = type(exc).__name__
        return f"PostgreSQL at {self.host} is unreachable ({detail})"

    # Wake-ups: one listener per process.

    async def armed(self) -> None:
        if self._task_group is None:
            raise not_open(type(self).__name__)
        await self._armed.wait()

    def start_background(self, task_group: TaskGroup) -> None:
        task_group.start_soon(self._listen)
        task_group.start_soon(self._rereads.serve, self.recheck)
        task_group.start_soon(self._clean_up_periodically)

    async def aclose(self) -> None:
        """Close the connections (the listener stops when the last user leaves)."""
        if self._task_group is None:
            self._armed = anyio.Event()
            self._rereads.reset()
            # Commands whose callers gave up finish under their own timeouts first.
            await self._commands.finish(within=3 * self.command_timeout)
            pool, self._pool = self._pool, None
            self._migrated = False
            if pool is not None:
                try:
                    await asyncio.wait_for(pool.close(), self.command_timeout)
                except (TimeoutError, *_FAILURES):
                    pool.terminate()

    async def _listen(self) -> None:
        failures = 0
        while True:
            connection: asyncpg.Connection | None = None
            try:
                connection = await self._listener_connection()
                if failures:
                    # Listening again: what was notified meanwhile is lost; the tables are not.
                    self._reconnects += 1
                    self._rereads.ask()
                    failures = 0
                caught_up = await self._catch_up()
                # Notifications that came during the catch-up may have moved it further.
                self._cursor = max(caught_up, self._cursor or 0)
                self._armed.set()
                await self._serve(connection)
            except Exception as exc:  # the listener must outlive any error
                # Down at start: arm all the same; the first connect re-reads every wait.
                self._armed.set()
                failures += 1
                if not isinstance(exc, (*_FAILURES, SinkUnavailableError)):
                    logger.exception("PostgreSQL listener failed, reconnecting")
                elif failures == 1:
                    logger.warning(
                        "PostgreSQL listener at %s disconnected (%s), reconnecting",
                        self.host,
                        type(exc).__name__,
                    )
                await anyio.sleep(backoff(failures))
            finally:
                if connection is not None:
                    # Its end is no news to the next connection's watch.
                    connection.remove_termination_listener(self._terminated)
                    with anyio.CancelScope(shield=True):
                        await _close_quietly(connection)

    async def _listener_connection(self) -> asyncpg.Connection:
        """A connection of its own, listening: every commit from now on is announced to it."""
        self._lost = False
        connection = await asyncpg.connect(
            self._dsn,
            timeout=self.connect_timeout,
            command_timeout=self.command_timeout,
            server_settings={"application_name": LISTENER_NAME},
        )
        try:
            connection.add_termination_listener(self._terminated)
            await connection.add_listener(self.channel, self._notified)
        except BaseException:
            with anyio.CancelScope(shield=True):  # cancelled too: close it all the same
                await _close_quietly(connection)
            raise
        return connection

    async def _catch_up(self) -> int:
        """
        After ``LISTEN``: wake the waits whose rows came after the cursor; the new cursor.

        At the first connect there is no cursor yet: the highest seq is pinned as it.
        """
        cursor = self._cursor
        if cursor is None:
            return int(await self._call(_statement("fetchval", self._sql.last_seq)))
        rows = await self._call(_statement("fetch", self._sql.fetch_after, cursor))
        await self.recheck(row[1] for row in rows)
        return max((row[0] for row in rows), default=cursor)

    async def _serve(self, connection: asyncpg.Connection) -> None:
        """Wake the waits notifications name, until the connection is lost."""
        while True:
            with anyio.move_on_after(self.heartbeat_interval) as idle:
                await self._signal.wait()
            self._signal.clear()
            if self._lost:
                msg = "the listener connection was closed"
                raise ConnectionResetError(msg)
            if idle.cancelled_caught:
                await connection.fetchval("SELECT 1", timeout=self.command_timeout)
            woken, self._woken = self._woken, []
            if woken:
                try:
                    await self.recheck(woken)
                except SinkUnavailableError:
                    pass  # get_outcomes asked for a re-read of every pending job

    def _notified(self, _connection: object, _pid: int, _channel: str, payload: str) -> None:
        seq, job_id, encoded = _parse_notification(payload)
        if self._cursor is not None and seq > self._cursor:
            self._cursor = seq
        if not self.is_awaited(job_id):
            return
        # The row itself, committed: the wait settles without reading it back.
        carried = carried_outcome(job_id, encoded, logger)
        if carried is not None:
            self._correlator.resolve(job_id, carried)
            return
        self._woken.append(job_id)
        self._signal.set()

    def _terminated(self, _connection: object) -> None:
        self._lost = True
        self._signal.set()

    async def _clean_up_periodically(self) -> None:
        while True:
            # Jittered, so that a fleet started together does not clean up in step.
            await anyio.sleep(self.cleanup_interval * random.uniform(0.5, 1.0))
            try:
                await self.delete_expired()
            except SinkUnavailableError:
                pass  # counted and logged as part of the outage; the next round catches up
            except Exception:
                logger.exception("deleting expired rows failed")


class _Refused(Exception):
    """PostgreSQL refused the migration; the message says what to do. Strictly private."""


Operation = Callable[[asyncpg.Connection, float], Awaitable[Any]]
"""What :meth:`PostgresSink._call` runs: ``operation(connection, timeout)``."""


def _statement(method: str, sql: str, *args: Any) -> Operation:
    """An operation running *sql* by asyncpg's ``Connection.<method>``."""

    async def run(connection: asyncpg.Connection, timeout: float) -> Any:
        return await getattr(connection, method)(sql, *args, timeout=timeout)

    return run


class _Statements:
    """The SQL of one schema. Strictly private."""

    def __init__(self, schema: str) -> None:
        s = f'"{schema}"'
        self.lock = f"SELECT pg_advisory_xact_lock(hashtext('cobalt_async.{schema}'))"
        self.has_version = (
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_tables"
            " WHERE schemaname = $1 AND tablename = 'schema_version')"
        )
        self.version = f"SELECT max(version) FROM {s}.schema_version"
        self.set_version = (
            f"INSERT INTO {s}.schema_version (version) VALUES ($1) ON CONFLICT DO NOTHING"
        )
        self.migrations = [migration.format(schema=s) for migration in _MIGRATIONS]
        # The notification: "<seq>:<length of job_id>:<job_id><outcome>", the outcome left
        # out when the payload would pass PostgreSQL's 8000 bytes.
        self.insert_outcome = f"""
            WITH stored AS (
                INSERT INTO {s}.outcomes (job_id, outcome, expires_at)
                VALUES ($1, $2, now() + $3 * interval '1 second')
                ON CONFLICT (job_id) DO NOTHING
                RETURNING seq
            )
            SELECT pg_notify($4, concat_ws(':', stored.seq, length($1), $1)
                || CASE WHEN octet_length($1) + octet_length($2) <= {_INLINE_BYTES}
                        THEN $2 ELSE '' END)
            FROM stored
        """
        self.fetch_outcome = f"SELECT outcome FROM {s}.outcomes WHERE job_id = $1"
        self.fetch_outcomes = (
            f"SELECT job_id, outcome FROM {s}.outcomes WHERE job_id = ANY($1::text[])"
        )
        self.insert_seen = f"""
            INSERT INTO {s}.seen (key, expires_at) VALUES ($1, now() + $2 * interval '1 second')
            ON CONFLICT (key) DO NOTHING RETURNING true
        """
        self.upsert_pending = f"""
            INSERT INTO {s}.pending (job_id, kind, submitted_at, deadline, forget_at)
            VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (job_id) DO UPDATE SET kind = excluded.kind,
                submitted_at = excluded.submitted_at, deadline = excluded.deadline,
                forget_at = excluded.forget_at
        """
        self.delete_pending = f"DELETE FROM {s}.pending WHERE job_id = $1"
        self.forget_pending = f"DELETE FROM {s}.pending WHERE forget_at <= $1"
        self.fetch_pending = (
            f"SELECT job_id, kind, submitted_at, deadline FROM {s}.pending ORDER BY submitted_at"
        )
        self.last_seq = f"SELECT coalesce(max(seq), 0) FROM {s}.outcomes"
        self.fetch_after = (
            f"SELECT seq, job_id FROM {s}.outcomes WHERE seq > $1 ORDER BY seq LIMIT {_CATCH_UP}"
        )
        # Batches of expired rows, oldest first through the expiry index, skipping rows
        # that another cleanup (or an insert of the same id) holds.
        self.expire = {
            table: f"""
                DELETE FROM {s}.{table} WHERE {key} IN (
                    SELECT {key} FROM {s}.{table} WHERE {column} <= {now}
                    ORDER BY {column} LIMIT $1 FOR UPDATE SKIP LOCKED
                )
            """
            for table, key, column, now in (
                ("outcomes", "job_id", "expires_at", "now()"),
                ("seen", "key", "expires_at", "now()"),
                ("pending", "job_id", "forget_at", "$2"),
            )
        }


async def _create_pool(sink: PostgresSink) -> asyncpg.Pool:
    # No connection yet (min_size 0): creating the pool never fails, the first command connects.
    pool: asyncpg.Pool = await asyncpg.create_pool(
        sink._dsn,
        min_size=0,
        max_size=sink.max_connections,
        timeout=sink.connect_timeout,
        command_timeout=sink.command_timeout,
        reset=_keep_session,
        server_settings={"application_name": APPLICATION_NAME},
    )
    return pool


async def _keep_session(_connection: asyncpg.Connection) -> None:
    """
    The pool's reset between two commands: none.

    asyncpg's default resets every session state (a round trip per command); the sink
    leaves none behind (its only lock is transaction-scoped), and an open transaction is
    rolled back by asyncpg itself.
    """


def _parse_dsn(dsn: str) -> tuple[str, str | None]:
    """The host part of *dsn* (for messages) and its password (to keep out of them)."""
    if not isinstance(dsn, str) or "://" not in dsn:
        msg = "PostgresSink needs a postgresql:// URL (postgresql://user:password@host/db)"
        raise ConfigurationError(msg)
    scheme = dsn.partition("://")[0]
    if scheme not in _SCHEMES:
        msg = f"PostgresSink needs a postgresql:// or postgres:// URL, got one starting {scheme!r}"
        raise ConfigurationError(msg)
    parts = urlsplit(dsn)
    credentials, _, hosts = parts.netloc.rpartition("@")
    password = credentials.partition(":")[2] or None if credentials else None
    if "," not in hosts:
        try:
            parts.port  # noqa: B018 (a port that is not a number raises here, not later)
        except ValueError:
            msg = f"PostgresSink URL has a port that is not a number: {hosts!r}"
            raise ConfigurationError(msg) from None
    return hosts or "localhost", password


def _scrub(text: str, password: str | None) -> str:
    return text.replace(password, "***") if password else text


def _parse_notification(payload: str) -> tuple[int, str, str]:
    """The seq, job id and encoded outcome (empty when left out) of a notification."""
    seq, _, rest = payload.partition(":")
    length, _, rest = rest.partition(":")
    size = int(length)
    return int(seq), rest[:size], rest[size:]


async def _close_quietly(connection: asyncpg.Connection) -> None:
    try:
        await asyncio.wait_for(connection.close(), 1.0)
    except (TimeoutError, *_FAILURES) as exc:
        logger.debug("closing a PostgreSQL listener connection failed: %s", exc)
        connection.terminate()
