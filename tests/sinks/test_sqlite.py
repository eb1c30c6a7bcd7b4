"""
SQLiteSink on real database files: the store, retention, wake-ups, the pending registry, a
locked or unusable database, and several worker processes sharing one file, one of them
SIGKILLed mid-write.

Several sinks on one file stand for several processes (each has its own connections and
listener); the e2e tests use real ones. Every test is bounded by ``anyio.fail_after``;
synchronisation is by events, counters and replies, never by sleeping.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import sqlite3
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from anyio.abc import Process

from cobalt_async import (
    ConfigurationError,
    JobTimeoutError,
    SinkUnavailableError,
    SQLiteSink,
    WebhookReceiver,
)
from cobalt_async.models import TaskCreatedEvent, UnknownEvent
from cobalt_async.sinks import Outcome, PendingJob, _sqlite
from cobalt_async.testing._contract import StoreReads
from tests.sinks._fleet import (
    ROOT,
    SECRET,
    check_fan_out,
    client_for,
    delivery,
    event,
    event_payload,
    fan_out_plan,
    final_stats,
    run_plans,
    worker_pool,
)
from tests.support import free_port, until

pytestmark = pytest.mark.anyio

LIMIT = 20.0
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def database(tmp_path: Path) -> Path:
    """A database file no other test uses (created by the first sink that opens it)."""
    return tmp_path / "cobalt.sqlite"


@pytest.fixture
def new_sink(database: Path) -> Iterator[Callable[..., SQLiteSink]]:
    """Make sinks on *database* (or on ``path=``); their connections are closed at the end."""
    made: list[SQLiteSink] = []

    def make(**options: Any) -> SQLiteSink:
        made.append(SQLiteSink(options.pop("path", database), **options))
        return made[-1]

    yield make
    for sink in made:
        sink._db.close()


def raw(path: Path) -> sqlite3.Connection:
    """A plain connection, to look at the tables or to hold the write lock."""
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False)


class ShiftedClock:
    """Stands in for the ``time`` module of ``cobalt_async.sinks._sqlite``: wall time moved on."""

    def __init__(self) -> None:
        self.shift = 0.0
        self.monotonic = time.monotonic
        self.sleep = time.sleep

    def time(self) -> float:
        return time.time() + self.shift


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> ShiftedClock:
    shifted = ShiftedClock()
    monkeypatch.setattr(_sqlite, "time", shifted)
    return shifted


def counting(sink: SQLiteSink, name: str, before: Callable[[int], None] | None = None) -> list[int]:
    """Count the calls of one of the sink's statements (run in worker threads)."""
    calls: list[int] = []
    inner = getattr(sink._db, name)

    def statement(*args: Any) -> Any:
        calls.append(len(calls) + 1)
        if before is not None:
            before(len(calls))
        return inner(*args)

    setattr(sink._db, name, statement)
    return calls


# -- the store ---------------------------------------------------------------------------------


async def test_an_outcome_round_trips_with_how_it_was_learnt_and_its_trace(
    database: Path, new_sink: Callable[..., SQLiteSink]
) -> None:
    """What another process reads is the Outcome stored: event, via and traceparent."""
    stored = Outcome(event("t1", failed=True), "poll", TRACEPARENT)
    with anyio.fail_after(LIMIT):
        assert await new_sink().put_if_absent("t1", stored) is None
        async with new_sink() as other:
            assert {"t1": stored} == await other.get_outcomes(["t1", "absent"])
            assert stored == await other.wait_for("t1", timeout=5)


async def test_first_terminal_event_wins_once_in_the_table(
    database: Path, new_sink: Callable[..., SQLiteSink]
) -> None:
    """Duplicates and conflicts from any sink keep the first outcome, in one row."""
    sink, other = new_sink(), new_sink()
    with anyio.fail_after(LIMIT):
        assert "accepted" == await sink.publish(event("j3"))
        assert "duplicate" == await other.publish(event("j3"))
        assert "conflict" == await other.publish(event("j3", failed=True))
        assert "conflict" == await sink.publish(event("j3", variant="b"))
        kept = await other.get_outcomes(["j3"])
    assert "evt_ok_j3" == kept["j3"].event.id
    assert (1, 1) == (other.stats().duplicates, other.stats().conflicts)
    with raw(database) as connection:
        assert [("j3",)] == connection.execute("SELECT job_id FROM cobalt_outcomes").fetchall()


async def test_non_terminal_deliveries_are_deduplicated_by_id(
    database: Path, new_sink: Callable[..., SQLiteSink]
) -> None:
    sink, other = new_sink(), new_sink()
    sync = UnknownEvent.model_validate({"id": "evt_sync_1", "type": "patient.updated", "data": {}})
    anonymous = UnknownEvent.model_validate({"type": "patient.updated", "data": {}})
    with anyio.fail_after(LIMIT):
        assert "accepted" == await sink.publish(sync)
        assert "duplicate" == await other.publish(sync)
        assert "accepted" == await sink.publish(anonymous, delivery_id="wh_1")
        assert "duplicate" == await other.publish(anonymous, delivery_id="wh_1")
        assert "accepted" == await sink.publish(anonymous)  # nothing to dedup on
    assert 2 == other.stats().duplicates


async def test_pending_registry_is_shared_and_forgets_past_the_outcome_ttl(
    database: Path, new_sink: Callable[..., SQLiteSink]
) -> None:
    sink = new_sink(outcome_ttl=60)
    other = new_sink(outcome_ttl=60)
    now = time.time()
    with anyio.fail_after(LIMIT):
        await sink.add_pending(PendingJob("a", "task", now - 2, now + 100))
        await sink.add_pending(PendingJob("b", "task_note", now - 1))
        await sink.add_pending(PendingJob("old", "task", now - 61))
        listed = await other.list_pending()
        await other.remove_pending("a")
        after = await sink.list_pending()
    assert [
        PendingJob("a", "task", now - 2, now + 100),
        PendingJob("b", "task_note", now - 1, None),
    ] == listed
    assert ["b"] == [job.job_id for job in after]
    with raw(database) as connection:
        # The expired entry was deleted, not only hidden.
        assert [("b",)] == connection.execute("SELECT job_id FROM cobalt_pending").fetchall()


async def test_client_lists_pending_jobs_and_attach_resolves_from_another_sink(
    database: Path, new_sink: Callable[..., SQLiteSink]
) -> None:
    receiver = WebhookReceiver(new_sink(), secrets=[SECRET])
    sink = new_sink()
    with anyio.fail_after(LIMIT):
        async with client_for(sink) as client:
            handle = await client.tasks.create(patient_mrn="MRN-1", description="call back")
            assert [("job-1", "task")] == [
                (job.job_id, job.kind) for job in await client.jobs.pending()
            ]
            receipt = await receiver.receive(*delivery(event_payload("job-1")))
            assert (200, "accepted") == (receipt.status_code, receipt.result)
            again = client.jobs.attach("job-1", "task")
            result = await again.wait(timeout=5)
            assert isinstance(result, TaskCreatedEvent)
            assert "emr-job-1" == result.data.emr_task_id
            assert [] == await client.jobs.pending()
            assert result.id == (await handle.wait(timeout=5)).id
        await receiver.sink.aclose()
    assert 0 == sink.stats().pending


async def test_the_file_runs_in_wal_mode_with_the_tables_under_their_prefix(
    database: Path, new_sink: Callable[..., SQLiteSink]
) -> None:
    """The sink's tables can live in the application's own database, beside its tables."""
    with raw(database) as connection:
        connection.execute("CREATE TABLE patients (mrn TEXT)")
    with anyio.fail_after(LIMIT):
        await new_sink(table_prefix="audit_").publish(event("p1"))
    with raw(database) as connection:
        assert "wal" == connection.execute("PRAGMA journal_mode").fetchone()[0]
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        stored = connection.execute("SELECT job_id, stored_at FROM audit_outcomes").fetchall()
    assert {"patients", "audit_outcomes", "audit_seen", "audit_pending"} <= tables
    assert "p1" == stored[0][0]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"path": ":memory:"}, "InMemorySink"),
        ({"path": ""}, "InMemorySink"),
        ({"path": "file:x?mode=memory"}, "InMemorySink"),
        ({"path": "/no/such/directory/db.sqlite"}, "directory does not exist"),
        ({"table_prefix": "1x"}, "table_prefix '1x'"),
        ({"table_prefix": "a; DROP TABLE x"}, "table_prefix"),
        ({"outcome_ttl": 0}, "must be positive"),
        ({"command_timeout": -1}, "must be positive"),
        ({"max_connections": 0}, "max_connections"),
        ({"synchronous": "OFF"}, "synchronous must be 'NORMAL' or 'FULL'"),
    ],
)
def test_bad_settings_are_configuration_errors_naming_the_setting(
    database: Path, options: dict[str, Any], message: str
) -> None:
    path = options.pop("path", database)
    with pytest.raises(ConfigurationError, match=message.replace("?", r"\?")):
        SQLiteSink(path, **options)


def test_an_sqlite_without_upserts_is_refused_with_its_version(
    database: Path, monkeypatch: pytest.MonkeyPatch, new_sink: Callable[..., SQLiteSink]
) -> None:
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 22, 0))
    monkeypatch.setattr(sqlite3, "sqlite_version", "3.22.0")
    with pytest.raises(ConfigurationError, match=r"3\.24 or later .* uses 3\.22\.0"):
        new_sink()


async def test_waiting_on_a_sink_that_is_not_open_says_how_to_open_it(
    database: Path, new_sink: Callable[..., SQLiteSink]
) -> None:
    with pytest.raises(ConfigurationError, match="SQLiteSink is not open"):
        await new_sink().wait_for("x", timeout=1)


# -- retention ---------------------------------------------------------------------------------


async def test_an_expired_outcome_is_gone_and_a_new_one_is_stored(
    database: Path, clock: ShiftedClock, new_sink: Callable[..., SQLiteSink]
) -> None:
    sink = new_sink(outcome_ttl=60)
    with anyio.fail_after(LIMIT):
        await sink.publish(event("e1"))
        clock.shift = 61
        assert {} == await sink.get_outcomes(["e1"])
        assert "accepted" == await sink.publish(event("e1", failed=True))
        kept = await sink.get_outcomes(["e1"])
    assert "task.failed" == kept["e1"].event.type


async def test_an_expired_delivery_key_is_seen_first_again(
    database: Path, clock: ShiftedClock, new_sink: Callable[..., SQLiteSink]
) -> None:
    sink = new_sink(dedup_ttl=60)
    with anyio.fail_after(LIMIT):
        assert await sink.first_seen("wh_1")
        assert not await sink.first_seen("wh_1")
        clock.shift = 61
        assert await sink.first_seen("wh_1")
        assert not await sink.first_seen("wh_1")


async def test_expired_rows_are_deleted_by_the_background_cleanup(
    database: Path, clock: ShiftedClock, new_sink: Callable[..., SQLiteSink]
) -> None:
    """Past their TTL, outcomes, keys and registry entries leave the file; fresh ones stay."""
    sink = new_sink(outcome_ttl=60, dedup_ttl=60)
    count = 1_200  # more than one cleanup batch
    with anyio.fail_after(LIMIT):
        for index in range(count):
            await sink.publish(event(f"old-{index}"))
        await sink.first_seen("old-key")
        await sink.add_pending(PendingJob("old-job", "task", time.time()))
        clock.shift = 61
        await sink.publish(event("fresh"))
        cleaner = new_sink()
        async with cleaner:  # it cleans up as it opens, then every cleanup_interval
            await until(lambda: cleaner.stats().evicted >= count + 1)
            assert ["fresh"] == list(await cleaner.get_outcomes(["fresh", "old-1"]))
    with raw(database) as connection:
        counts = [
            connection.execute(f"SELECT count(*) FROM cobalt_{table}").fetchone()[0]
            for table in ("outcomes", "seen", "pending")
        ]
    assert [1, 0, 0] == counts
    assert count + 1 == cleaner.stats().evicted


# -- wake-ups ------------------------------------------------------------------------------------


async def test_a_wait_is_woken_by_the_first_poll_after_the_commit(
    database: Path, new_sink: Callable[..., SQLiteSink]
) -> None:
    """
    The latency promise, counted in polls rather than milliseconds: the listener's first poll
    that starts after the publishing process committed wakes the wait (so it is woken within
    two poll intervals), with no backstop and no periodic re-read involved.
    """
    publisher = new_sink()
    waiter = new_sink(recheck_interval=600)
    polls = counting(waiter, "since")
    reads = StoreReads(waiter)
    results: list[Outcome] = []
    polls_at_wake: list[int] = []
    with anyio.fail_after(LIMIT):
        async with waiter:

            async def wait() -> None:
                results.append(await waiter.wait_for("w1", timeout=None))
                polls_at_wake.append(len(polls))

            async with anyio.create_task_group() as group:
                group.start_soon(wait)
                await reads.wait_for(1)
                assert "accepted" == await publisher.publish(event("w1"))
                polls_at_commit = len(polls)
    assert "evt_ok_w1" == results[0].event.id
    # The poll running as the commit landed may have missed it; the next one cannot.
    assert polls_at_wake[0] <= polls_at_commit + 1
    assert 2 == reads.count  # its own read, then the listener's
    assert 0 == waiter.stats().backstop_polls


async def test_a_new_wait_wakes_an_idle_listener(
    database: Path, monkeypatch: pytest.MonkeyPatch, new_sink: Callable[..., SQLiteSink]
) -> None:
    """With nothing awaited the listener polls rarely; a wait makes it poll at once."""
    monkeypatch.setattr(_sqlite, "_IDLE_POLL", 3600.0)
    publisher = new_sink()
    waiter = new_sink(recheck_interval=600)
    polls = counting(waiter, "since")
    before_first_poll = waiter._wanted
    with anyio.fail_after(LIMIT):
        async with waiter:
            # Its first poll found nothing awaited: the listener now sleeps for an hour.
            await until(lambda: waiter._wanted is not before_first_poll)
            assert 1 == len(polls)
            reads = StoreReads(waiter)
            results: list[Outcome] = []

            async def wait() -> None:
                results.append(await waiter.wait_for("i1", timeout=None))

            async with anyio.create_task_group() as group:
                group.start_soon(wait)
                await reads.wait_for(1)
                await publisher.publish(event("i1"))
    assert "evt_ok_i1" == results[0].event.id


async def test_a_failed_store_read_is_retried_by_a_reread(
    database: Path, new_sink: Callable[..., SQLiteSink]
) -> None:
    """The outcome was stored before the wait's cursor: only a re-read can find it."""
    publisher = new_sink()
    with anyio.fail_after(LIMIT):
        assert "accepted" == await publisher.publish(event("f1"))
        sink = new_sink(recheck_interval=600)

        def fail_once(call: int) -> None:
            if call == 1:
                raise sqlite3.OperationalError("disk I/O error")

        reads = counting(sink, "outcomes", before=fail_once)
        async with sink:
            outcome = await sink.wait_for("f1", timeout=None)
    assert "evt_ok_f1" == outcome.event.id
    assert len(reads) >= 2
    assert (1, 1) == (sink.stats().outages, sink.stats().failed_commands)


async def test_a_failed_wake_up_read_is_followed_by_a_reread(
    database: Path, new_sink: Callable[..., SQLiteSink]
) -> None:
    """The listener saw the outcome but could not read it: the re-read of every pending
    job that follows finds it."""
    publisher = new_sink()
    sink = new_sink(recheck_interval=600)

    def fail_the_listeners_read(call: int) -> None:
        if call == 2:  # the first is the wait's own store read
            raise sqlite3.OperationalError("disk I/O error")

    finished: list[int] = []
    inner = sink._db.outcomes

    def outcomes(*args: Any) -> Any:
        try:
            return inner(*args)
        finally:
            finished.append(1)

    sink._db.outcomes = outcomes  # type: ignore[method-assign]
    reads = counting(sink, "outcomes", before=fail_the_listeners_read)
    results: list[Outcome] = []
    with anyio.fail_after(LIMIT):
        async with sink:

            async def wait() -> None:
                results.append(await sink.wait_for("g1", timeout=None))

            async with anyio.create_task_group() as group:
                group.start_soon(wait)
                # Past the wait's own read: only the listener's can see the outcome.
                await until(lambda: len(finished) == 1)
                await publisher.publish(event("g1"))
    assert "evt_ok_g1" == results[0].event.id
    assert len(reads) >= 3


async def test_a_backlog_longer_than_one_poll_is_read_at_once(
    database: Path, new_sink: Callable[..., SQLiteSink], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outcomes committed faster than a poll reads them: full polls are followed at once."""
    monkeypatch.setattr(_sqlite, "_BATCH", 2)
    publisher = new_sink()
    # Only a full poll can be followed by another; and no poll may fail on a loaded machine,
    # which would be followed by a re-read instead.
    sink = new_sink(poll_interval=3600, command_timeout=LIMIT / 4)
    go = threading.Event()

    def hold_the_first_poll(call: int) -> None:
        if call == 1:
            go.wait(LIMIT)

    polls = counting(sink, "since", before=hold_the_first_poll)
    results: list[Outcome] = []
    with anyio.fail_after(LIMIT):
        async with sink:

            async def wait() -> None:
                results.append(await sink.wait_for("q4", timeout=None))

            async with anyio.create_task_group() as group:
                group.start_soon(wait)
                await until(lambda: sink.stats().pending == 1)
                for index in range(5):
                    await publisher.publish(event(f"q{index}"))
                go.set()  # the held poll reads q0 and q1, the next q2 and q3, the third q4
    assert "evt_ok_q4" == results[0].event.id
    assert 3 == len(polls)


# -- a busy, locked or unusable database ---------------------------------------------------------


@pytest.fixture
def holder(database: Path, new_sink: Callable[..., SQLiteSink]) -> Iterator[sqlite3.Connection]:
    """A connection of another process, say, on the sink's tables, to hold the write lock."""
    with anyio.from_thread.start_blocking_portal() as portal:
        portal.call(new_sink().first_seen, "tables-created")
    connection = raw(database)
    try:
        yield connection
    finally:
        connection.close()


async def test_a_write_waits_out_a_lock_held_briefly(
    database: Path, holder: sqlite3.Connection, new_sink: Callable[..., SQLiteSink]
) -> None:
    """SQLITE_BUSY is retried within command_timeout: a short lock costs time, not a 503."""
    sink = new_sink(command_timeout=LIMIT / 4)  # room for a loaded machine's slow threads
    with anyio.fail_after(LIMIT):
        await sink.get_outcomes(["b1"])  # its connection is open before the lock is taken
    holder.execute("BEGIN IMMEDIATE")

    def release_after_the_first_attempt(call: int) -> None:
        if call == 2:
            holder.execute("ROLLBACK")

    attempts = counting(sink, "put", before=release_after_the_first_attempt)
    with anyio.fail_after(LIMIT):
        assert "accepted" == await sink.publish(event("b1"))
    assert 2 == len(attempts)
    assert (0, 0) == (sink.stats().outages, sink.stats().failed_commands)


async def test_concurrent_writers_on_one_file_all_succeed(
    database: Path, new_sink: Callable[..., SQLiteSink]
) -> None:
    """Four sinks (their own connections each) write at once: every write lands, none fails."""
    sinks = [new_sink() for _ in range(4)]
    answers: list[str] = []

    async def publish(sink: SQLiteSink, job_id: str) -> None:
        answers.append(await sink.publish(event(job_id)))

    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as group:
            for index in range(400):
                group.start_soon(publish, sinks[index % 4], f"c{index % 200}")
        stored = await sinks[0].get_outcomes([f"c{index}" for index in range(200)])
    assert {"accepted": 200, "duplicate": 200} == {
        answer: answers.count(answer) for answer in set(answers)
    }
    assert 200 == len(stored)
    assert 0 == sum(sink.stats().failed_commands for sink in sinks)


async def test_a_locked_database_answers_503_in_time_and_the_retry_lands(
    database: Path,
    holder: sqlite3.Connection,
    caplog: pytest.LogCaptureFixture,
    new_sink: Callable[..., SQLiteSink],
) -> None:
    """Locked longer than command_timeout: 503 within 1.5 s, the waiter waits on, the outage
    is two log lines, and Cobalt's retry after the lock is gone resolves the waiter."""
    caplog.set_level(logging.WARNING, logger="cobalt_async")
    receiver = WebhookReceiver(new_sink(command_timeout=0.5), secrets=[SECRET])
    sink = new_sink()
    body, headers = delivery(event_payload("l1"))
    results: list[Any] = []
    with anyio.fail_after(LIMIT):
        async with client_for(sink) as client, anyio.create_task_group() as group:
            reads = StoreReads(sink)
            handle = client.jobs.attach("l1", "task")

            async def wait() -> None:
                results.append(await handle.wait(timeout=15))

            group.start_soon(wait)
            await reads.wait_for(1)
            holder.execute("BEGIN IMMEDIATE")
            started = time.monotonic()
            receipt = await receiver.receive(body, headers)
            elapsed = time.monotonic() - started
            assert (503, "unavailable") == (receipt.status_code, receipt.result)
            assert elapsed < 1.5, f"503 took {elapsed:.2f} s"
            assert not handle.done()
            holder.execute("ROLLBACK")
            receipt = await receiver.receive(body, headers)
            assert (200, "accepted") == (receipt.status_code, receipt.result)
    assert "emr-l1" == results[0].data.emr_task_id
    assert "webhook" == handle.resolved_via
    assert (1, 1) == (receiver.sink.stats().outages, receiver.sink.stats().failed_commands)
    outage = [r.getMessage() for r in caplog.records if r.name == "cobalt_async.sinks.sqlite"]
    assert 2 == len(outage), outage
    assert "is locked" in outage[0]
    assert "SQLite answers again" in outage[1]
    await receiver.sink.aclose()


async def test_a_file_that_is_not_a_database_is_an_outage_until_it_is_fixed(
    database: Path, new_sink: Callable[..., SQLiteSink]
) -> None:
    """Errors name the file and the cause; once the file is usable again, so is the sink."""
    await anyio.Path(database).write_bytes(b"this is not an SQLite database, " * 100)
    sink = new_sink()
    with anyio.fail_after(LIMIT):
        with pytest.raises(SinkUnavailableError, match=r"cobalt\.sqlite cannot be used"):
            await sink.publish(event("n1"))
        with pytest.raises(SinkUnavailableError, match="SQLITE_NOTADB"):
            await sink.list_pending()
        await anyio.Path(database).unlink()
        assert "accepted" == await sink.publish(event("n1"))
    assert (1, 2) == (sink.stats().outages, sink.stats().failed_commands)


async def test_waits_survive_a_database_unusable_at_start(
    database: Path, new_sink: Callable[..., SQLiteSink]
) -> None:
    """The listener cannot pin its cursor: waits go on, and resolve once the file is fixed."""
    await anyio.Path(database).write_bytes(b"not a database " * 100)
    results: list[Outcome] = []
    with anyio.fail_after(LIMIT):
        async with new_sink() as sink:

            async def wait() -> None:
                results.append(await sink.wait_for("u1", timeout=None))

            async with anyio.create_task_group() as group:
                group.start_soon(wait)
                with pytest.raises(JobTimeoutError):
                    await sink.wait_for("u2", timeout=0.2)
                await anyio.Path(database).unlink()
                assert "accepted" == await new_sink().publish(event("u1"))
            # Woken by a re-read or by the listener; either way the listener polls again.
            await until(lambda: sink.stats().reconnects == 1, timeout=LIMIT)
    assert "evt_ok_u1" == results[0].event.id


async def test_a_sink_closes_its_connections_and_opens_again(
    database: Path, new_sink: Callable[..., SQLiteSink]
) -> None:
    sink = new_sink()
    with anyio.fail_after(LIMIT):
        async with sink:
            await sink.publish(event("r1"))
        assert [] == sink._db._idle
        async with sink:
            assert "evt_ok_r1" == (await sink.wait_for("r1", timeout=5)).event.id
        assert [] == sink._db._idle


async def test_a_failed_write_is_rolled_back_whole(
    database: Path, holder: sqlite3.Connection, new_sink: Callable[..., SQLiteSink]
) -> None:
    """A write that fails inside its transaction leaves no row and no lock behind."""
    holder.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON cobalt_outcomes BEGIN SELECT RAISE(FAIL, "
        "'refused by a trigger'); END"
    )
    sink = new_sink()
    with anyio.fail_after(LIMIT):
        with pytest.raises(SinkUnavailableError, match="refused by a trigger"):
            await sink.publish(event("x1"))
        holder.execute("DROP TRIGGER refuse")
        holder.execute("BEGIN IMMEDIATE")  # not locked by the failed write
        holder.execute("ROLLBACK")
        assert {} == await sink.get_outcomes(["x1"])
        assert "accepted" == await sink.publish(event("x1"))


async def test_a_connection_in_use_as_the_sink_closes_is_closed_after_its_call(
    new_sink: Callable[..., SQLiteSink],
) -> None:
    sink = new_sink()
    counting(sink, "see", before=lambda call: sink._db.close())
    with anyio.fail_after(LIMIT):
        assert await sink.first_seen("k1")
        assert {} == await sink.get_outcomes([])
        await sink.aclose()  # not open: closes its connections
    assert [] == sink._db._idle


async def test_a_file_that_cannot_run_in_wal_mode_is_refused_with_the_reason(
    new_sink: Callable[..., SQLiteSink], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filesystem without shared memory (NFS, say) refuses WAL, and SQLite says so."""

    class NoWal(sqlite3.Connection):
        def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
            return super().execute(sql.replace("= WAL", "= DELETE"), *args)

    connect = sqlite3.connect
    monkeypatch.setattr(
        _sqlite.sqlite3, "connect", lambda *args, **kwargs: connect(*args, **kwargs, factory=NoWal)
    )
    sink = new_sink()
    with anyio.fail_after(LIMIT):
        with pytest.raises(
            SinkUnavailableError, match=r"cannot run in WAL mode \(journal_mode is delete\)"
        ):
            await sink.publish(event("v1"))


def test_the_repr_names_the_file_and_the_pending_count(
    database: Path, new_sink: Callable[..., SQLiteSink]
) -> None:
    assert f"<SQLiteSink path='{database}' pending=0>" == repr(new_sink())


# -- worker processes sharing one file -----------------------------------------------------------


def sqlite_worker(path: Path, backend: str = "asyncio") -> list[str]:
    """The arguments of a ``_worker.py`` process on the database *path*, on *backend*."""
    return ["--sink", "sqlite", "--path", str(path), "--backend", backend]


@pytest.mark.e2e
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("workers_backend", ["asyncio", "trio"])
async def test_fan_out_across_three_processes(
    database: Path, tmp_path: Path, workers_backend: str
) -> None:
    """1,000 jobs, each awaited in two processes, half the webhooks early, 30% twice; the
    worker processes run on asyncio, or on trio."""
    rng = random.Random(20240602)
    job_ids = [f"fan-{index}" for index in range(1000)]
    plans, payloads, late_share = fan_out_plan(job_ids, 3, window=3.0, rng=rng)
    assert 0.4 < late_share < 0.6
    with anyio.fail_after(60):
        arguments = sqlite_worker(database, workers_backend)
        async with worker_pool(arguments, 3, tmp_path / "logs") as workers:
            results = await run_plans(workers, plans, retry_for=5.0)
            figures = check_fan_out(results, payloads, faults=False)
            stats = await final_stats(workers)
    assert [0, 0, 0] == [worker["pending"] for worker in stats]
    assert 0 == sum(worker["failed_commands"] for worker in stats)
    assert 2000 == figures["awaits"]
    assert {"webhook"} == set(figures["vias"])
    print(f"\nsqlite fan-out on {workers_backend}: {figures}, early {late_share:.0%}")


@pytest.mark.e2e
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_workers_sigkilled_mid_write_lose_nothing(
    database: Path, tmp_path: Path, new_sink: Callable[..., SQLiteSink]
) -> None:
    """
    Four workers share the file. One holds the write lock with an uncommitted write and is
    SIGKILLed; another is SIGKILLed while it stores webhooks as fast as it can. The other two
    run 600 jobs meanwhile: every wait resolves, every delivery is finally answered 200,
    every webhook a killed worker answered 200 for is stored, the uncommitted write is not,
    and the file is intact.
    """
    rng = random.Random(99)
    job_ids = [f"kill-{index}" for index in range(600)]
    plans, payloads, _ = fan_out_plan(job_ids, 2, window=3.0, rng=rng)
    with anyio.fail_after(60):
        async with worker_pool(sqlite_worker(database), 4, tmp_path / "logs") as workers:
            survivors, (holding, flooding) = workers[:2], workers[2:]
            await flooding.send({"cmd": "flood", "prefix": "flood", "tag": "f"})
            stored: list[str] = []
            while len(stored) < 50:
                stored.append((await flooding.expect("stored", "f"))["job"])
            results: list[dict[str, Any]] = []

            async def run() -> None:
                results.extend(await run_plans(survivors, plans, retry_for=10.0))

            async with anyio.create_task_group() as group:
                group.start_soon(run)
                await anyio.sleep(1.0)  # into the plans' 3 s window, to kill amid their writes
                await holding.ask({"cmd": "hold"}, "holding")
                holding.kill()  # with the write lock held and a row written, uncommitted
                await holding.reap()
                stored.append((await flooding.expect("stored", "f"))["job"])
                flooding.kill()  # mid-flood: most likely inside a write
                await flooding.reap()
            figures = check_fan_out(results, payloads, faults=False)
            stats = await final_stats(survivors)
        stored += [message["job"] for message in flooding.messages if message["ev"] == "stored"]
        found = await new_sink().get_outcomes(stored + ["held"])
    assert [0, 0] == [worker["pending"] for worker in stats]
    assert 1200 == figures["awaits"]
    assert set(stored) == set(found), "a webhook answered 200 was lost"
    with raw(database) as connection:
        assert "ok" == connection.execute("PRAGMA integrity_check").fetchone()[0]
    print(f"\nsqlite kill: {figures}, flood stored {len(stored)}, 503s {figures['503s']}")


@pytest.mark.e2e
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_uvicorn_workers_share_one_file(
    database: Path, tmp_path: Path, new_sink: Callable[..., SQLiteSink]
) -> None:
    """
    ``uvicorn --workers 3`` receives 300 jobs' webhooks over real HTTP, each sent twice at
    once on connections of their own, so that the two copies often land on different
    workers: every answer is 200, each job accepted exactly once, and every wait in this
    process (a fourth one on the file) is woken by whichever worker stored its outcome.
    """
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COBALT_TEST_SQLITE_PATH": str(database)}
    uvicorn = [sys.executable, "-m", "uvicorn", "tests.sinks._sqlite_app:app", "--workers", "3",
               "--port", str(port), "--log-level", "warning"]  # fmt: skip
    job_ids = [f"uv-{index}" for index in range(300)]
    answers: list[tuple[str, int, str, str]] = []
    results: list[Outcome] = []

    async def post(client: httpx.AsyncClient, job_id: str) -> None:
        body, headers = delivery(event_payload(job_id))
        # A connection of its own (no pooling), for the kernel to hand to any worker.
        response = await client.post("/", content=body, headers={**headers, "connection": "close"})
        worker = response.headers["x-worker-pid"]
        answers.append((job_id, response.status_code, response.json()["status"], worker))

    async def wait(sink: SQLiteSink, job_id: str) -> None:
        results.append(await sink.wait_for(job_id, timeout=30))

    log = tmp_path / "uvicorn.log"
    with log.open("wb") as output, anyio.fail_after(90):
        server = await anyio.open_process(
            uvicorn, stdout=output, stderr=output, env=env, cwd=str(ROOT), start_new_session=True
        )
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                await serving(client, server, log)
                async with new_sink() as sink, anyio.create_task_group() as group:
                    for job_id in job_ids:
                        group.start_soon(wait, sink, job_id)
                    await until(lambda: sink.stats().pending == len(job_ids), timeout=LIMIT)
                    for job_id in job_ids * 2:
                        group.start_soon(post, client, job_id)
        finally:
            if server.returncode is None:
                os.killpg(server.pid, signal.SIGTERM)
            with anyio.move_on_after(10):
                await server.wait()
            await server.aclose()
    assert {200} == {status for _, status, _, _ in answers}, log.read_text()[-3000:]
    accepted = sorted(job_id for job_id, _, result, _ in answers if result == "accepted")
    assert sorted(job_ids) == accepted
    assert sorted(job_ids) == sorted(str(outcome.event.job_id) for outcome in results)
    workers = Counter(pid for *_, pid in answers)
    assert len(workers) >= 2, workers
    print(f"\nuvicorn --workers 3, one SQLite file: answers per worker {sorted(workers.values())}")


async def serving(client: httpx.AsyncClient, server: Process, log: Path) -> None:
    """Return once the server answers (a GET: 405); fail if it exits first."""
    while True:
        if server.returncode is not None:
            tail = (await anyio.Path(log).read_text())[-3000:]
            pytest.fail(f"uvicorn exited with {server.returncode}: {tail}")
        try:
            await client.get("/")
            return
        except httpx.TransportError:
            await anyio.sleep(0.1)  # a process has no readiness event to wait on
