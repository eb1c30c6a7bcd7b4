"""
SQLiteSink: outcomes shared by the worker processes of one host, through one SQLite file.

Tables (named with a prefix, so that they can live in the application's own database):

- ``<prefix>outcomes``  the first terminal event per job (``job_id`` unique), numbered by
  ``seq`` (AUTOINCREMENT: it grows in commit order and is never reused);
- ``<prefix>seen``      dedup keys of non-terminal deliveries, with their expiry;
- ``<prefix>pending``   the durable pending registry.

The file runs in WAL mode, so reads never wait for the writer. Every write is a single
statement or a ``BEGIN IMMEDIATE`` transaction (which takes the write lock before it reads, so
it never fails halfway for a lock), retried while the database is busy, within
``command_timeout``. The stdlib ``sqlite3`` runs in worker threads (``anyio.to_thread``), so the
sink runs on asyncio and trio alike.

Wake-ups: each process runs one listener that polls ``seq > cursor`` every ``poll_interval``,
from a cursor pinned before any wait registers. An outcome committed after a wait's store read
has a ``seq`` above the cursor; the listener reads it after the wait registered, and wakes it.
After its polls failed, and periodically, it re-reads every pending job; so does a second
task whenever a wait's own store read failed, as in ``RedisSink``.
"""

from __future__ import annotations

import logging
import os
import random
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final, TypeVar

import anyio
from anyio.abc import TaskGroup

from .._errors import ConfigurationError, SinkUnavailableError
from .._outcome import Outcome, PendingJob
from ._base import Sink, StoreStats
from ._shared import Outage, Rereads, backoff, decode_outcome, encode_outcome, not_open

logger = logging.getLogger("cobalt_async.sinks.sqlite")

T = TypeVar("T")

_PREFIX = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_SYNCHRONOUS = ("NORMAL", "FULL")
_BATCH: Final = 500
"""Ids per ``IN (...)``, rows per listener poll, rows per cleanup transaction."""
_IDLE_POLL: Final = 0.5
"""Seconds between polls while no wait is registered here (a new wait wakes the listener)."""
_BUSY = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
_LONGEST_BUSY_WAIT: Final = 0.1
"""Seconds SQLite's own busy handler waits before the retry loop, which knows the deadline."""


class SQLiteSink(Sink):
    """
    A sink shared by the worker processes of one host through one SQLite file.

    For ``uvicorn --workers N`` or several services on one machine, with no server to run. Open
    it with ``async with SQLiteSink(path) as sink:`` or let ``async with CobaltClient(sink=
    sink)`` open it: waits need its listener running. ``WebhookReceiver`` can publish to it
    without opening it. Runs on asyncio and trio. The file must be on a local filesystem (WAL
    mode needs shared memory between the processes: not NFS).
    """

    keeps_registry = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        table_prefix: str = "cobalt_",
        outcome_ttl: float = 86_400.0,
        dedup_ttl: float = 86_400.0,
        poll_interval: float = 0.01,
        recheck_interval: float = 30.0,
        cleanup_interval: float = 60.0,
        command_timeout: float = 1.0,
        max_connections: int = 4,
        synchronous: str = "NORMAL",
    ) -> None:
        """
        Args:
            path: The database file, created with its tables on first use; every process
                sharing outcomes opens the same one. It may be the application's own database.
            table_prefix: Prefix of the sink's table names (letters, digits, underscores).
            outcome_ttl: Seconds an outcome (and a pending registry entry) is kept.
            dedup_ttl: Seconds a delivery key is remembered.
            poll_interval: Seconds between the listener's polls while a wait is registered in
                this process: about the longest a wake-up from another process takes.
            recheck_interval: Seconds between re-reads of every pending job, a backstop to
                the polls.
            cleanup_interval: Seconds between deletions of expired rows, done in small
                transactions by a background task, never by a store call.
            command_timeout: Seconds one store call may take, waiting for a busy database
                included, before it fails with ``SinkUnavailableError``: keep it under the
                receiver's ``publish_timeout``.
            max_connections: Connections for concurrent store calls (the listener and the
                cleanup have one each); more calls wait for one, within *command_timeout*.
            synchronous: ``"NORMAL"`` (the default: a committed outcome survives a crash of
                any process, the last ones may not survive a power loss) or ``"FULL"``
                (an fsync per commit: they do).
        """
        if min(outcome_ttl, dedup_ttl, poll_interval, recheck_interval) <= 0 or (
            min(cleanup_interval, command_timeout) <= 0
        ):
            msg = (
                "SQLiteSink TTLs, poll_interval, recheck_interval, cleanup_interval and "
                "command_timeout must be positive"
            )
            raise ConfigurationError(msg)
        if max_connections < 1:
            msg = "SQLiteSink max_connections must be at least 1"
            raise ConfigurationError(msg)
        if not _PREFIX.match(table_prefix):
            msg = (
                f"SQLiteSink table_prefix {table_prefix!r} is not usable in a table name: "
                "use letters, digits and underscores, not starting with a digit"
            )
            raise ConfigurationError(msg)
        if synchronous.upper() not in _SYNCHRONOUS:
            msg = f"SQLiteSink synchronous must be 'NORMAL' or 'FULL', got {synchronous!r}"
            raise ConfigurationError(msg)
        if sqlite3.sqlite_version_info < (3, 24, 0):
            msg = (
                f"SQLiteSink needs SQLite 3.24 or later (for INSERT ... ON CONFLICT); this "
                f"Python's sqlite3 module uses {sqlite3.sqlite_version}"
            )
            raise ConfigurationError(msg)
        super().__init__()
        self.path = _database_path(path)
        self.table_prefix = table_prefix
        self.outcome_ttl = outcome_ttl
        self.dedup_ttl = dedup_ttl
        self.poll_interval = poll_interval
        self.recheck_interval = recheck_interval
        self.cleanup_interval = cleanup_interval
        self.command_timeout = command_timeout
        self._db = _Database(
            self.path,
            table_prefix,
            synchronous=synchronous.upper(),
            busy_timeout=min(command_timeout, _LONGEST_BUSY_WAIT),
        )
        # Store calls are admitted up to max_connections, within command_timeout; the thread
        # limiter then never makes them wait (it has room for the listener and the cleanup).
        self._admission = anyio.CapacityLimiter(max_connections)
        self._threads = anyio.CapacityLimiter(max_connections + 2)
        self._armed = anyio.Event()
        self._wanted = anyio.Event()
        self._rereads = Rereads(recheck_interval, logger)
        self._outage = Outage("SQLite", logger)
        self._reconnects = 0
        self._evicted = 0

    def __repr__(self) -> str:
        return f"<SQLiteSink path={self.path!r} pending={self._correlator.pending}>"

    # Store.

    async def get_outcomes(self, job_ids: Sequence[str]) -> dict[str, Outcome]:
        if not job_ids:
            return {}
        try:
            rows = await self._call(self._db.outcomes, list(job_ids), time.time())
        except SinkUnavailableError:
            # A wait whose store read failed may have missed an outcome stored before it
            # registered: have every pending job re-read once the database answers again.
            self._rereads.ask()
            raise
        return {job_id: decode_outcome(value) for job_id, value in rows}

    async def put_if_absent(self, job_id: str, outcome: Outcome) -> Outcome | None:
        now = time.time()
        encoded = encode_outcome(outcome).decode()
        stored = await self._call(self._db.put, job_id, encoded, now, now + self.outcome_ttl)
        return None if stored is None else decode_outcome(stored)

    async def first_seen(self, key: str) -> bool:
        now = time.time()
        return await self._call(self._db.see, key, now, now + self.dedup_ttl)

    def store_stats(self) -> StoreStats:
        return StoreStats(
            evicted=self._evicted,
            reconnects=self._reconnects,
            outages=self._outage.outages,
            failed_commands=self._outage.failed_commands,
        )

    async def _call(self, work: Callable[..., T], *args: Any) -> T:
        """Run one store call in a worker thread, or fail with ``SinkUnavailableError``."""
        deadline = time.monotonic() + self.command_timeout
        try:
            with anyio.fail_after(self.command_timeout):
                await self._admission.acquire()
        except TimeoutError as exc:
            reason = (
                f"SQLite database {self.path}: no free connection within {self.command_timeout:g} s"
            )
            self._outage.failed(reason)
            raise SinkUnavailableError(reason) from exc
        try:
            result = await self._in_thread(work, args, deadline)
        except SinkUnavailableError as exc:
            self._outage.failed(str(exc))
            raise
        finally:
            self._admission.release()
        self._outage.answered()
        return result

    async def _in_thread(self, work: Callable[..., T], args: tuple[Any, ...], deadline: float) -> T:
        # Not abandoned on cancellation: the thread ends by its deadline anyway, and returns
        # its connection to the pool.
        return await anyio.to_thread.run_sync(
            self._db.run, work, args, deadline, limiter=self._threads
        )

    async def _background(self, work: Callable[..., T], *args: Any) -> T:
        """A call of the listener or the cleanup: not admitted, not counted in outages."""
        return await self._in_thread(work, args, time.monotonic() + self.command_timeout)

    # Pending registry.

    async def add_pending(self, job: PendingJob) -> None:
        forget_at = job.submitted_at + self.outcome_ttl
        await self._call(self._db.register, job, forget_at)

    async def remove_pending(self, job_id: str) -> None:
        await self._call(self._db.forget, job_id)

    async def list_pending(self) -> list[PendingJob]:
        return await self._call(self._db.pending, time.time())

    # Wake-ups and cleanup: background tasks while the sink is open.

    async def armed(self) -> None:
        if self._task_group is None:
            raise not_open(type(self).__name__)
        await self._armed.wait()
        # No await from here to the wait's registration: a listener that found nothing
        # pending either gets this, or finds the wait registered.
        self._wanted.set()

    def start_background(self, task_group: TaskGroup) -> None:
        task_group.start_soon(self._listen)
        task_group.start_soon(self._rereads.serve, self.recheck)
        task_group.start_soon(self._clean)

    async def aclose(self) -> None:
        """Close the database connections (background tasks stop when the last user leaves)."""
        if self._task_group is None:
            self._armed = anyio.Event()
            self._rereads.reset()
            with anyio.CancelScope(shield=True):
                # In a thread: the last connection to close checkpoints the WAL.
                await anyio.to_thread.run_sync(self._db.close, limiter=self._threads)

    async def _listen(self) -> None:
        cursor: int | None = None
        failures = 0
        while True:
            try:
                if cursor is None:
                    cursor = await self._background(self._db.last_seq)
                    self._armed.set()
                rows = await self._background(self._db.since, cursor)
            except SinkUnavailableError as exc:
                # Waits go on meanwhile (the store down at start arms the sink all the same):
                # once the polls work again, every pending job is re-read.
                self._armed.set()
                failures += 1
                if failures == 1:
                    logger.warning("SQLite listener: %s; retrying", exc)
                await anyio.sleep(backoff(failures))
                continue
            if failures:
                self._reconnects += 1
                self._rereads.ask()
                failures = 0
            if rows:
                cursor = rows[-1][0]
                await self._wake([job_id for _seq, job_id in rows])
            if len(rows) < _BATCH:
                await self._next_poll()

    async def _wake(self, job_ids: list[str]) -> None:
        woken = [job_id for job_id in job_ids if self.is_awaited(job_id)]
        if woken:
            try:
                await self.recheck(woken)
            except SinkUnavailableError:
                pass  # get_outcomes asked for a re-read of every pending job

    async def _next_poll(self) -> None:
        self._wanted = wanted = anyio.Event()
        if self._correlator.pending:
            await anyio.sleep(self.poll_interval)
        else:
            with anyio.move_on_after(_IDLE_POLL):
                await wanted.wait()

    async def _clean(self) -> None:
        while True:
            try:
                self._evicted += await self._background(self._db.delete_expired, time.time())
            except SinkUnavailableError as exc:
                logger.debug("deleting expired rows failed, retrying later: %s", exc)
            await anyio.sleep(self.cleanup_interval)


def _database_path(path: str | os.PathLike[str]) -> str:
    name = os.fspath(path)
    if name in ("", ":memory:") or name.startswith("file:"):
        msg = (
            f"SQLiteSink needs the path of a database file that every worker opens, got "
            f"{name!r}; for one process, use InMemorySink"
        )
        raise ConfigurationError(msg)
    absolute = os.path.abspath(name)
    if not os.path.isdir(os.path.dirname(absolute)):
        msg = f"SQLiteSink path {name!r}: its directory does not exist; create it first"
        raise ConfigurationError(msg)
    return absolute


@contextmanager
def _transaction(connection: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``: the write lock first, so no statement waits for it."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def _busy(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF in _BUSY


class _Database:
    """One SQLite file: its statements, and connections each used by one thread at a time."""

    def __init__(self, path: str, prefix: str, *, synchronous: str, busy_timeout: float) -> None:
        self.path = path
        self._outcomes = f"{prefix}outcomes"
        self._seen = f"{prefix}seen"
        self._pending = f"{prefix}pending"
        self._names = (
            self._outcomes,
            self._seen,
            self._pending,
            *(f"{prefix}{table}_expiry" for table in ("outcomes", "seen", "pending")),
        )
        self._schema = [
            f"CREATE TABLE IF NOT EXISTS {self._outcomes} (seq INTEGER PRIMARY KEY "
            "AUTOINCREMENT, job_id TEXT NOT NULL UNIQUE, outcome TEXT NOT NULL, "
            "stored_at REAL NOT NULL, expires_at REAL NOT NULL)",
            f"CREATE INDEX IF NOT EXISTS {prefix}outcomes_expiry ON {self._outcomes} (expires_at)",
            f"CREATE TABLE IF NOT EXISTS {self._seen} (key TEXT PRIMARY KEY, "
            "expires_at REAL NOT NULL) WITHOUT ROWID",
            f"CREATE INDEX IF NOT EXISTS {prefix}seen_expiry ON {self._seen} (expires_at)",
            f"CREATE TABLE IF NOT EXISTS {self._pending} (job_id TEXT PRIMARY KEY, "
            "kind TEXT NOT NULL, submitted_at REAL NOT NULL, deadline REAL, "
            "forget_at REAL NOT NULL) WITHOUT ROWID",
            f"CREATE INDEX IF NOT EXISTS {prefix}pending_expiry ON {self._pending} (forget_at)",
        ]
        self._synchronous = synchronous
        self._busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._generation = 0
        self._schema_ready = False

    # Connections: in worker threads.

    def run(self, work: Callable[..., T], args: tuple[Any, ...], deadline: float) -> T:
        """*work(connection, *args)*, retried while the database is busy, until *deadline*."""
        attempts = 0
        while True:
            connection, generation = self._take()
            try:
                if connection is None:
                    connection = self._open()
                result = work(connection, *args)
            except sqlite3.Error as exc:
                remaining = deadline - time.monotonic()
                if not _busy(exc):
                    # Unwritable, full, gone, corrupt: a new connection may fare better.
                    self._discard(connection)
                    raise SinkUnavailableError(self._unusable(exc)) from exc
                self._give(connection, generation)
                if remaining <= 0:
                    reason = (
                        f"SQLite database {self.path} is locked: another connection held it "
                        "for longer than command_timeout"
                    )
                    raise SinkUnavailableError(reason) from exc
                attempts += 1
                time.sleep(min(remaining, random.uniform(0, 0.001 * 2 ** min(attempts, 6))))
                continue
            except BaseException:
                self._discard(connection)
                raise
            self._give(connection, generation)
            return result

    def _unusable(self, exc: sqlite3.Error) -> str:
        name = getattr(exc, "sqlite_errorname", type(exc).__name__)
        return f"SQLite database {self.path} cannot be used ({name}: {exc})"

    def _take(self) -> tuple[sqlite3.Connection | None, int]:
        with self._lock:
            return (self._idle.pop() if self._idle else None), self._generation

    def _give(self, connection: sqlite3.Connection | None, generation: int) -> None:
        if connection is None:
            return
        with self._lock:
            if generation == self._generation:
                self._idle.append(connection)
                return
        connection.close()  # opened before close(): close it too

    @staticmethod
    def _discard(connection: sqlite3.Connection | None) -> None:
        if connection is not None:
            connection.close()  # sqlite3_close_v2: never fails, frees once statements end

    def _open(self) -> sqlite3.Connection:
        connection = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout,
            isolation_level=None,  # autocommit: transactions are explicit
            check_same_thread=False,  # one thread at a time, but not always the same one
        )
        try:
            connection.execute(f"PRAGMA synchronous = {self._synchronous}")
            if not self._schema_ready:
                self._prepare(connection)
        except BaseException:
            connection.close()
            raise
        return connection

    def _prepare(self, connection: sqlite3.Connection) -> None:
        mode = connection.execute("PRAGMA journal_mode").fetchone()[0]
        if mode != "wal":
            mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            msg = (
                f"SQLite database {self.path} cannot run in WAL mode (journal_mode is {mode}): "
                "put it on a local filesystem"
            )
            raise SinkUnavailableError(msg)
        names = ",".join("?" * len(self._names))
        present = connection.execute(
            f"SELECT count(*) FROM sqlite_master WHERE name IN ({names})", self._names
        ).fetchone()[0]
        if present < len(self._names):  # the write lock only when there is something to create
            with _transaction(connection):
                for statement in self._schema:
                    connection.execute(statement)
        self._schema_ready = True

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
            self._generation += 1
        for connection in idle:
            connection.close()

    # Statements: each takes the connection first.

    def outcomes(
        self, connection: sqlite3.Connection, job_ids: list[str], now: float
    ) -> list[tuple[str, str]]:
        rows: list[tuple[str, str]] = []
        for start in range(0, len(job_ids), _BATCH):
            chunk = job_ids[start : start + _BATCH]
            marks = ",".join("?" * len(chunk))
            rows += connection.execute(
                f"SELECT job_id, outcome FROM {self._outcomes} "
                f"WHERE job_id IN ({marks}) AND expires_at > ?",
                (*chunk, now),
            )
        return rows

    def put(
        self,
        connection: sqlite3.Connection,
        job_id: str,
        outcome: str,
        now: float,
        expires_at: float,
    ) -> str | None:
        """Store *outcome* unless one is stored: ``None``, or the stored one."""
        table = self._outcomes
        with _transaction(connection):
            # An expired row not cleaned up yet is no outcome: it must not win.
            connection.execute(
                f"DELETE FROM {table} WHERE job_id = ? AND expires_at <= ?", (job_id, now)
            )
            inserted = connection.execute(
                f"INSERT INTO {table} (job_id, outcome, stored_at, expires_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (job_id) DO NOTHING",
                (job_id, outcome, now, expires_at),
            ).rowcount
            if inserted:
                return None
            row = connection.execute(
                f"SELECT outcome FROM {table} WHERE job_id = ?", (job_id,)
            ).fetchone()
        stored: str = row[0]
        return stored

    def see(self, connection: sqlite3.Connection, key: str, now: float, expires_at: float) -> bool:
        """Remember *key*; whether it was new (or its earlier sighting had expired)."""
        changed = connection.execute(
            f"INSERT INTO {self._seen} (key, expires_at) VALUES (?, ?) ON CONFLICT (key) "
            f"DO UPDATE SET expires_at = excluded.expires_at WHERE {self._seen}.expires_at <= ?",
            (key, expires_at, now),
        ).rowcount
        return bool(changed)

    def register(self, connection: sqlite3.Connection, job: PendingJob, forget_at: float) -> None:
        connection.execute(
            f"INSERT OR REPLACE INTO {self._pending} "
            "(job_id, kind, submitted_at, deadline, forget_at) VALUES (?, ?, ?, ?, ?)",
            (job.job_id, job.kind, job.submitted_at, job.deadline, forget_at),
        )

    def forget(self, connection: sqlite3.Connection, job_id: str) -> None:
        connection.execute(f"DELETE FROM {self._pending} WHERE job_id = ?", (job_id,))

    def pending(self, connection: sqlite3.Connection, now: float) -> list[PendingJob]:
        with _transaction(connection):
            connection.execute(f"DELETE FROM {self._pending} WHERE forget_at <= ?", (now,))
            rows = connection.execute(
                f"SELECT job_id, kind, submitted_at, deadline FROM {self._pending} "
                "ORDER BY submitted_at"
            ).fetchall()
        return [PendingJob(*row) for row in rows]

    def last_seq(self, connection: sqlite3.Connection) -> int:
        last: int = connection.execute(
            f"SELECT coalesce(max(seq), 0) FROM {self._outcomes}"
        ).fetchone()[0]
        return last

    def since(self, connection: sqlite3.Connection, cursor: int) -> list[tuple[int, str]]:
        return connection.execute(
            f"SELECT seq, job_id FROM {self._outcomes} WHERE seq > ? ORDER BY seq LIMIT ?",
            (cursor, _BATCH),
        ).fetchall()

    def delete_expired(self, connection: sqlite3.Connection, now: float) -> int:
        """Delete expired rows, a small transaction per batch; how many were outcomes or keys."""
        deleted = 0
        for table, key, expiry in (
            (self._outcomes, "seq", "expires_at"),
            (self._seen, "key", "expires_at"),
            (self._pending, "job_id", "forget_at"),
        ):
            while True:
                count = connection.execute(
                    f"DELETE FROM {table} WHERE {key} IN "
                    f"(SELECT {key} FROM {table} WHERE {expiry} <= ? LIMIT ?)",
                    (now, _BATCH),
                ).rowcount
                if table != self._pending:
                    deleted += count
                if count < _BATCH:
                    break
        return deleted
