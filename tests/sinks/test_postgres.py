"""
PostgresSink against a real PostgreSQL: the schema and its migration (in the sink and by
``cobalt-async db migrate``), the store, retention, wake-ups through a reconnect, outages,
and the invariants of docs/correlation.md across processes with connections terminated and
the server restarted.

Every test is bounded by ``anyio.fail_after``; every server and process is stopped in
``finally``. Synchronisation is by events, replies and deadlines, never by sleeping.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from cobalt_async import ConfigurationError, JobTimeoutError, SinkUnavailableError, WebhookReceiver
from cobalt_async.models import TaskCreatedEvent, parse_event
from cobalt_async.sinks import Outcome, PendingJob
from cobalt_async.testing._contract import StoreReads
from tests import _postgres_server
from tests._postgres_server import PostgresServer
from tests.sinks._fleet import (
    ROOT,
    SECRET,
    WorkerProcess,
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

try:
    import asyncpg

    from cobalt_async.sinks import PostgresSink
    from cobalt_async.sinks._postgres import APPLICATION_NAME, LISTENER_NAME
except ImportError:
    if os.environ.get("CI") == "true":
        raise  # CI installs the postgres extra: a missing one must fail, not skip
    pytest.skip("asyncpg is not installed", allow_module_level=True)

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

# A receiver's deadline for a publish; a down database must be answered 503 within it.
ANSWER_WITHIN = 1.5


@pytest.fixture
def anyio_backend() -> str:
    """asyncpg is asyncio only, and so is PostgresSink."""
    return "asyncio"


@asynccontextmanager
async def admin(server: PostgresServer) -> AsyncIterator[Any]:
    """A superuser connection, to look at tables or cut sessions."""
    connection = await asyncpg.connect(server.dsn, timeout=5)
    try:
        yield connection
    finally:
        await connection.close()


async def terminate(server: PostgresServer, application_name: str) -> int:
    """``pg_terminate_backend`` every session of *application_name*; how many there were."""
    async with admin(server) as connection:
        return int(
            await connection.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = $1",
                application_name,
            )
        )


# The cluster fixture.


@pytest.mark.parametrize(
    ("ci", "outcome"), [("true", pytest.fail.Exception), ("", pytest.skip.Exception)]
)
def test_without_initdb_the_tests_skip_except_under_ci_where_they_fail(
    monkeypatch: pytest.MonkeyPatch, ci: str, outcome: type[BaseException]
) -> None:
    monkeypatch.setattr(_postgres_server.shutil, "which", lambda name: None)
    monkeypatch.setattr(_postgres_server.glob, "glob", lambda pattern: [])
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="apt-get install postgresql"):
        _postgres_server.postgres_bin_dir()


# The store, across two sinks of one schema.


async def test_publish_then_wait_across_sinks(
    postgres_server: PostgresServer, postgres_schema: str
) -> None:
    publisher = PostgresSink(postgres_server.dsn, schema=postgres_schema)
    with anyio.fail_after(10):
        assert await publisher.publish(event("j1")) == "accepted"
        async with PostgresSink(postgres_server.dsn, schema=postgres_schema) as waiter:
            outcome = await waiter.wait_for("j1", timeout=5)
            assert outcome.event.id == "evt_ok_j1"
            assert outcome.via == "webhook"
            assert waiter.stats().pending == 0
        await publisher.aclose()


@pytest.mark.parametrize(
    ("description", "reads"),
    [(None, 1), ("x" * 9_000, 2)],
    ids=["the-notification-carries-the-outcome", "too-big-to-carry-so-read-back"],
)
async def test_wait_then_publish_wakes_through_the_listener(
    postgres_server: PostgresServer, postgres_schema: str, description: str | None, reads: int
) -> None:
    payload = event_payload("j2")
    payload["data"]["description"] = description
    publisher = PostgresSink(postgres_server.dsn, schema=postgres_schema)
    results: list[Outcome] = []
    with anyio.fail_after(10):
        # A recheck an hour away: only a notification can wake the wait in time.
        async with PostgresSink(
            postgres_server.dsn, schema=postgres_schema, recheck_interval=3600
        ) as waiter:
            store_reads = StoreReads(waiter)

            async def wait() -> None:
                results.append(await waiter.wait_for("j2", timeout=8))

            async with anyio.create_task_group() as group:
                group.start_soon(wait)
                await store_reads.wait_for(1)  # registered, and its store read found nothing
                assert await publisher.publish(parse_event(payload)) == "accepted"
            assert results[0].event == parse_event(payload)
            assert store_reads.count == reads
        await publisher.aclose()


async def test_duplicate_and_conflict_store_and_announce_once(
    postgres_server: PostgresServer, postgres_schema: str
) -> None:
    sink = PostgresSink(postgres_server.dsn, schema=postgres_schema)
    other = PostgresSink(postgres_server.dsn, schema=postgres_schema)
    notified: list[str] = []
    with anyio.fail_after(10):
        await sink.migrate()
        async with admin(postgres_server) as listener:
            await listener.add_listener(sink.channel, lambda *args: notified.append(args[3]))
            assert await sink.publish(event("j3")) == "accepted"
            assert await other.publish(event("j3")) == "duplicate"
            assert await other.publish(event("j3", failed=True)) == "conflict"
            assert await sink.publish(event("j3", variant="b")) == "conflict"
            kept = await other.get_outcomes(["j3", "absent"])
            assert list(kept) == ["j3"]
            assert kept["j3"].event.id == "evt_ok_j3"
            assert (other.stats().duplicates, other.stats().conflicts) == (1, 1)
            assert (sink.stats().duplicates, sink.stats().conflicts) == (0, 1)
            await listener.execute("SELECT 1")  # notifications sent so far have arrived
            assert len(notified) == 1  # a duplicate or conflict announces nothing
            assert notified[0].startswith("1:2:j3{")  # seq, job id, the outcome kept
        await sink.aclose()
        await other.aclose()


async def test_pending_registry(postgres_server: PostgresServer, postgres_schema: str) -> None:
    sink = PostgresSink(postgres_server.dsn, schema=postgres_schema, outcome_ttl=60)
    other = PostgresSink(postgres_server.dsn, schema=postgres_schema, outcome_ttl=60)
    now = time.time()
    with anyio.fail_after(10):
        await sink.add_pending(PendingJob("a", "task", now - 2, now + 100))
        await sink.add_pending(PendingJob("b", "task_note", now - 1))
        await sink.add_pending(PendingJob("old", "task", now - 61))  # past the outcome TTL
        await sink.add_pending(PendingJob("b", "task_note", now - 1))  # recorded again
        listed = await other.list_pending()
        assert listed == [
            PendingJob("a", "task", now - 2, now + 100),
            PendingJob("b", "task_note", now - 1, None),
        ]
        await other.remove_pending("a")
        assert [job.job_id for job in await sink.list_pending()] == ["b"]
        async with admin(postgres_server) as connection:
            # The expired entry was deleted, not only hidden.
            rows = await connection.fetch(f'SELECT job_id FROM "{postgres_schema}".pending')
            assert [row[0] for row in rows] == ["b"]
        await sink.aclose()
        await other.aclose()


async def test_client_pending_and_attach(
    postgres_server: PostgresServer, postgres_schema: str
) -> None:
    receiver = WebhookReceiver(PostgresSink(postgres_server.dsn, schema=postgres_schema),
                               secrets=[SECRET])  # fmt: skip
    sink = PostgresSink(postgres_server.dsn, schema=postgres_schema)
    with anyio.fail_after(10):
        async with client_for(sink) as client:
            handle = await client.tasks.create(patient_mrn="MRN-1", description="call back")
            assert [(job.job_id, job.kind) for job in await client.jobs.pending()] == [
                ("job-1", "task")
            ]
            receipt = await receiver.receive(*delivery(event_payload("job-1")))
            assert (receipt.status_code, receipt.result) == (200, "accepted")
            again = client.jobs.attach("job-1", "task")
            result = await again.wait(timeout=5)
            assert isinstance(result, TaskCreatedEvent)
            assert result.data.emr_task_id == "emr-job-1"
            assert await client.jobs.pending() == []
            assert (await handle.wait(timeout=5)).id == result.id
        await receiver.sink.aclose()


# The schema.


async def test_the_schema_holds_readable_outcomes_and_indexes_every_hot_path(
    postgres_server: PostgresServer, postgres_schema: str
) -> None:
    sink = PostgresSink(postgres_server.dsn, schema=postgres_schema)
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with anyio.fail_after(10):
        assert await sink.put_if_absent("s1", Outcome(event("s1"), "poll", trace)) is None
        assert await sink.first_seen("delivery-1")
        (stored,) = (await sink.get_outcomes(["s1"])).values()
        assert stored == Outcome(event("s1"), "poll", trace)
        async with admin(postgres_server) as connection:
            tables = await connection.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = $1",
                postgres_schema,
            )
            assert {row[0] for row in tables} == {"outcomes", "seen", "pending", "schema_version"}
            # The audit trail, readable with SQL: the encoding RedisSink uses, trace included.
            row = await connection.fetchrow(
                f"SELECT seq, outcome::jsonb ->> 'via' AS via, outcome::jsonb ->> 'trace' AS trace,"
                f" outcome::jsonb -> 'event' ->> 'type' AS type, stored_at <= now() AS past,"
                f" expires_at > now() + interval '23 hours' AS ttl"
                f' FROM "{postgres_schema}".outcomes'
            )
            assert (row["past"], row["ttl"]) == (True, True)
            assert row["seq"] >= 1
            assert (row["via"], row["trace"], row["type"]) == ("poll", trace, "task.created")
            await connection.execute("SET enable_seqscan = off")  # an index if there is one
            s = f'"{postgres_schema}"'
            for query in (
                f"SELECT outcome FROM {s}.outcomes WHERE job_id = ANY(ARRAY['s1', 's2'])",
                f"SELECT job_id FROM {s}.outcomes WHERE seq > 0 ORDER BY seq LIMIT 10",
                f"SELECT job_id FROM {s}.outcomes WHERE expires_at <= now() LIMIT 10",
                f"SELECT key FROM {s}.seen WHERE expires_at <= now() LIMIT 10",
                f"SELECT job_id FROM {s}.pending WHERE forget_at <= 0 LIMIT 10",
            ):
                plan = "\n".join(row[0] for row in await connection.fetch(f"EXPLAIN {query}"))
                assert "Seq Scan" not in plan, (query, plan)
        await sink.aclose()


async def test_processes_starting_together_migrate_once(
    postgres_server: PostgresServer, postgres_schema: str
) -> None:
    sinks = [PostgresSink(postgres_server.dsn, schema=postgres_schema) for _ in range(6)]
    results: list[tuple[int, int]] = []
    with anyio.fail_after(20):
        async with anyio.create_task_group() as group:
            for sink in sinks:

                async def migrate(sink: PostgresSink = sink) -> None:
                    results.append(await sink.migrate())

                group.start_soon(migrate)
        assert sorted(results) == [(0, 1)] + [(1, 1)] * 5
        assert await sinks[0].migrate() == (1, 1)
        for sink in sinks:
            await sink.aclose()


async def test_a_dropped_schema_is_created_again(
    postgres_server: PostgresServer, postgres_schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    sink = PostgresSink(postgres_server.dsn, schema=postgres_schema)
    with anyio.fail_after(10):
        assert await sink.publish(event("g1")) == "accepted"
        async with admin(postgres_server) as connection:
            await connection.execute(f'DROP SCHEMA "{postgres_schema}" CASCADE')
        assert await sink.publish(event("g2")) == "accepted"
        assert list(await sink.get_outcomes(["g1", "g2"])) == ["g2"]
        await sink.aclose()
    assert "is gone: re-creating it" in caplog.text


async def test_a_role_that_may_not_create_the_schema_is_told_to_run_migrate(
    postgres_server: PostgresServer, postgres_schema: str
) -> None:
    role, password = f"app_{postgres_schema}", "app-password-1"
    app_dsn = postgres_server.dsn.replace(
        f"{postgres_server.user}:{postgres_server.password}", f"{role}:{password}"
    )
    with anyio.fail_after(15):
        async with admin(postgres_server) as connection:
            await connection.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        app = PostgresSink(app_dsn, schema=postgres_schema)
        with pytest.raises(SinkUnavailableError, match="cobalt-async db migrate") as refused:
            await app.publish(event("p1"))
        assert "permission denied" in str(refused.value)
        # The operator's path: migrate as the owner, grant the application's role.
        owner = PostgresSink(postgres_server.dsn, schema=postgres_schema)
        assert await owner.migrate() == (0, 1)
        async with admin(postgres_server) as connection:
            s = f'"{postgres_schema}"'
            await connection.execute(
                f"GRANT USAGE ON SCHEMA {s} TO {role};"
                f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {s} TO {role};"
                f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA {s} TO {role}"
            )
        assert await app.publish(event("p1")) == "accepted"
        assert await app.first_seen("k1")
        await app.add_pending(PendingJob("p2", "task", time.time()))
        assert [job.job_id for job in await app.list_pending()] == ["p2"]
        await app.aclose()
        await owner.aclose()


def migrate_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {name: value for name, value in os.environ.items() if name != "DATABASE_URL"}
    environment.update(PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "cobalt_async", "db", "migrate", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
        cwd=ROOT,
        check=False,
    )


@pytest.mark.e2e
def test_db_migrate_creates_the_schema_once_and_never_prints_the_password(
    postgres_server: PostgresServer, postgres_schema: str
) -> None:
    url = postgres_server.dsn
    host = f"127.0.0.1:{postgres_server.port}"

    created = migrate_cli("--database-url", url, "--schema", postgres_schema)
    again = migrate_cli("--schema", postgres_schema, env={"DATABASE_URL": url})
    wrong = migrate_cli("--database-url", url.replace(postgres_server.password, "not-it"))
    missing = migrate_cli()
    bad_schema = migrate_cli("--database-url", url, "--schema", "Bad-Name")

    assert (created.returncode, created.stderr) == (0, ""), created.stderr
    assert created.stdout == f"schema {postgres_schema!r} at {host}: version 1, created\n"
    assert again.returncode == 0, again.stderr
    assert again.stdout.endswith("version 1, already current\n")
    assert wrong.returncode == 1
    assert wrong.stderr.splitlines() == [
        f"cobalt-async db migrate: PostgreSQL at {host} is unreachable (InvalidPasswordError: "
        f'password authentication failed for user "{postgres_server.user}")'
    ]
    assert missing.returncode == 2
    assert "give --database-url, or set DATABASE_URL" in missing.stderr
    assert bad_schema.returncode == 2
    assert "schema must be a lowercase name" in bad_schema.stderr
    for done in (created, again, wrong, missing, bad_schema):
        assert postgres_server.password not in done.stdout + done.stderr


def test_db_migrate_help_shows_examples(capsys: pytest.CaptureFixture[str]) -> None:
    from cobalt_async._cli import main

    with pytest.raises(SystemExit) as exited:
        main(["db", "migrate", "--help"])
    out = capsys.readouterr().out
    assert exited.value.code == 0
    assert "python -m cobalt_async db migrate --database-url" in out.partition("examples:")[2]


# Retention.


async def test_expired_rows_are_deleted_in_batches_past_rows_another_session_holds(
    postgres_server: PostgresServer, postgres_schema: str
) -> None:
    """A cleanup never waits on a lock, and an insert never waits on a cleanup."""
    expiring = PostgresSink(
        postgres_server.dsn,
        schema=postgres_schema,
        outcome_ttl=0.001,
        dedup_ttl=0.001,
        cleanup_batch=10,
    )
    kept = PostgresSink(postgres_server.dsn, schema=postgres_schema)
    s = f'"{postgres_schema}"'
    with anyio.fail_after(20):
        for index in range(25):
            await expiring.publish(event(f"x{index}"))
        for index in range(5):
            assert await expiring.first_seen(f"d{index}")
        await kept.publish(event("live"))
        await expiring.add_pending(PendingJob("gone", "task", time.time() - 1))
        async with admin(postgres_server) as holder:
            async with holder.transaction():
                # A long transaction holds one expired row, as a slow cleanup would.
                await holder.execute(f"SELECT 1 FROM {s}.outcomes WHERE job_id = 'x3' FOR UPDATE")
                started = time.monotonic()
                assert await expiring.delete_expired() == 24 + 5 + 1
                assert await kept.publish(event("fresh")) == "accepted"
                assert time.monotonic() - started < 5.0
            assert await expiring.delete_expired() == 1  # x3, released
        remaining = await kept.get_outcomes([f"x{index}" for index in range(25)] + ["live"])
        assert list(remaining) == ["live"]
        assert expiring.stats().evicted == 30
        assert await expiring.first_seen("d0")  # forgotten: seen anew
        await expiring.aclose()
        await kept.aclose()


async def test_the_background_cleanup_runs_every_interval(
    postgres_server: PostgresServer, postgres_schema: str
) -> None:
    sink = PostgresSink(
        postgres_server.dsn, schema=postgres_schema, outcome_ttl=0.001, cleanup_interval=0.05
    )
    cleaned = anyio.Event()
    delete_expired = sink.delete_expired

    async def observed() -> int:
        count = await delete_expired()
        if count:
            cleaned.set()
        return count

    sink.delete_expired = observed  # type: ignore[method-assign]
    with anyio.fail_after(10):
        await sink.publish(event("c1"))
        async with sink:
            await cleaned.wait()
        assert await sink.get_outcomes(["c1"]) == {}
        await sink.aclose()


# Wake-ups through a lost listener connection.


async def test_a_terminated_listener_reconnects_and_loses_no_wake_up(
    postgres_server: PostgresServer, postgres_schema: str
) -> None:
    """The outcome is stored while the listener is away: only the re-read can find it."""
    publisher = PostgresSink(postgres_server.dsn, schema=postgres_schema)
    sink = PostgresSink(
        postgres_server.dsn, schema=postgres_schema, recheck_interval=3600, heartbeat_interval=0.05
    )
    connect = sink._listener_connection
    reconnecting, released = anyio.Event(), anyio.Event()
    connections = 0

    async def gated() -> Any:
        nonlocal connections
        connections += 1
        if connections > 1:
            reconnecting.set()
            await released.wait()
        return await connect()

    sink._listener_connection = gated  # type: ignore[method-assign]
    results: list[Outcome] = []
    with anyio.fail_after(15):
        async with sink:
            reads = StoreReads(sink)

            async def wait() -> None:
                results.append(await sink.wait_for("k1", timeout=12))

            async with anyio.create_task_group() as group:
                group.start_soon(wait)
                await reads.wait_for(1)
                assert await terminate(postgres_server, LISTENER_NAME) == 1
                await reconnecting.wait()
                assert await publisher.publish(event("k1")) == "accepted"  # nobody listens
                released.set()
            assert results[0].event.id == "evt_ok_k1"
            assert sink.stats().reconnects == 1
            async with admin(postgres_server) as connection:
                last = await connection.fetchval(
                    f'SELECT max(seq) FROM "{postgres_schema}".outcomes'
                )
            assert sink._cursor == last  # the catch-up read it: the next one starts after it
        await publisher.aclose()


async def test_an_idle_listener_checks_its_connection(
    postgres_server: PostgresServer, postgres_schema: str
) -> None:
    """A half-open connection looks idle: the listener asks it a question when it is."""
    sink = PostgresSink(postgres_server.dsn, schema=postgres_schema, heartbeat_interval=0.02)
    connect = sink._listener_connection
    checked = anyio.Event()

    async def observed() -> Any:
        connection = await connect()
        connection.add_query_logger(lambda record: record.query == "SELECT 1" and checked.set())
        return connection

    sink._listener_connection = observed  # type: ignore[method-assign]
    with anyio.fail_after(10):
        async with sink:
            await checked.wait()
            assert await sink.get_outcomes([]) == {}


async def test_a_failed_store_read_is_retried_without_a_reconnect(
    postgres_server: PostgresServer, postgres_schema: str
) -> None:
    """The outcome was stored before the wait: no notification will come for it."""
    publisher = PostgresSink(postgres_server.dsn, schema=postgres_schema)
    sink = PostgresSink(postgres_server.dsn, schema=postgres_schema, recheck_interval=3600)
    run = sink._run
    failures = 0

    async def failing_once(*args: Any) -> Any:
        nonlocal failures
        if failures == 0:
            failures += 1
            raise ConnectionResetError("injected")
        return await run(*args)

    with anyio.fail_after(10):
        assert await publisher.publish(event("f1")) == "accepted"
        async with sink:
            await sink.armed()
            sink._run = failing_once  # type: ignore[method-assign]
            outcome = await sink.wait_for("f1", timeout=None)
            assert outcome.event.id == "evt_ok_f1"
            assert failures == 1
            assert sink.stats().reconnects == 0
            assert sink.stats().outages == 1
        await publisher.aclose()


async def test_waits_on_a_sink_not_open_are_refused(
    postgres_server: PostgresServer, postgres_schema: str
) -> None:
    sink = PostgresSink(postgres_server.dsn, schema=postgres_schema)
    with anyio.fail_after(5), pytest.raises(ConfigurationError, match="PostgresSink is not open"):
        await sink.wait_for("n1", timeout=1)


# Outages.


async def test_publish_fails_fast_when_postgres_is_down(
    fresh_postgres_server: PostgresServer, postgres_schema: str
) -> None:
    fresh_postgres_server.stop()
    sink = PostgresSink(fresh_postgres_server.dsn, schema=postgres_schema)
    with anyio.fail_after(10):
        for call in (
            lambda: sink.publish(event("d1")),
            lambda: sink.get_outcomes(["d1"]),
            lambda: sink.list_pending(),
            lambda: sink.first_seen("d1"),
        ):
            started = time.monotonic()
            with pytest.raises(SinkUnavailableError, match="ConnectionRefusedError"):
                await call()
            assert time.monotonic() - started < ANSWER_WITHIN
        assert sink.stats().outages == 1
        assert sink.stats().failed_commands == 4
        await sink.aclose()


async def test_postgres_down_at_webhook_time_is_a_503_within_1_5_s_and_the_retry_lands(
    fresh_postgres_server: PostgresServer, postgres_schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = fresh_postgres_server
    receiver = WebhookReceiver(PostgresSink(server.dsn, schema=postgres_schema), secrets=[SECRET])
    sink = PostgresSink(server.dsn, schema=postgres_schema)
    body, headers = delivery(event_payload("w1"))
    results: list[Any] = []
    with anyio.fail_after(40):
        await receiver.sink.migrate()
        async with client_for(sink) as client, anyio.create_task_group() as group:
            reads = StoreReads(sink)
            handle = client.jobs.attach("w1", "task")

            async def wait() -> None:
                results.append(await handle.wait(timeout=35))

            group.start_soon(wait)
            await reads.wait_for(1)
            await anyio.to_thread.run_sync(server.stop)
            for _attempt in range(2):  # Cobalt's delivery and its retry a second later
                started = time.monotonic()
                receipt = await receiver.receive(body, headers)
                elapsed = time.monotonic() - started
                assert (receipt.status_code, receipt.result) == (503, "unavailable")
                assert elapsed < ANSWER_WITHIN, f"503 took {elapsed:.2f} s"
            assert not handle.done()
            await anyio.to_thread.run_sync(server.start)
            receipt = await receiver.receive(body, headers)
            assert (receipt.status_code, receipt.result) == (200, "accepted")
        assert results[0].data.emr_task_id == "emr-w1"
        assert handle.resolved_via == "webhook"
        assert sink.stats().reconnects >= 1
        assert receiver.sink.stats().outages == 1
        assert receiver.sink.stats().failed_commands == 2
        await receiver.sink.aclose()
    outage_lines = [r.getMessage() for r in caplog.records if r.name.endswith(".postgres")]
    assert sum("its commands fail until it answers again" in line for line in outage_lines) >= 1
    assert any("answers again after" in line for line in outage_lines)


@contextmanager
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers: a hung database."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(5)
        for connection in accepted:
            connection.close()
        listener.close()


async def test_a_database_that_never_answers_is_a_503_within_1_5_s() -> None:
    with silent_server() as port:
        dsn = f"postgresql://app:secret-pw@127.0.0.1:{port}/app"
        receiver = WebhookReceiver(PostgresSink(dsn, connect_timeout=1.0), secrets=[SECRET])
        with anyio.fail_after(10):
            started = time.monotonic()
            receipt = await receiver.receive(*delivery(event_payload("h1")))
            elapsed = time.monotonic() - started
            assert receipt.status_code == 503
            assert elapsed < ANSWER_WITHIN, f"503 took {elapsed:.2f} s"
            await receiver.sink.aclose()


async def test_errors_name_the_host_and_never_the_password(
    postgres_server: PostgresServer, postgres_schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    password = "s3cret-not-this-one"
    dsn = (
        f"postgresql://{postgres_server.user}:{password}@127.0.0.1:{postgres_server.port}/postgres"
    )
    sink = PostgresSink(dsn, schema=postgres_schema)
    with anyio.fail_after(10):
        with pytest.raises(SinkUnavailableError) as failed:
            await sink.publish(event("e1"))
        await sink.aclose()
    message = str(failed.value)
    assert f"PostgreSQL at 127.0.0.1:{postgres_server.port}" in message
    assert "InvalidPasswordError" in message
    for text in (message, repr(failed.value.__cause__), repr(sink), caplog.text):
        assert password not in text


@pytest.mark.parametrize(
    ("dsn", "options", "match"),
    [
        ("redis://127.0.0.1/0", {}, "postgresql:// or postgres:// URL"),
        ("127.0.0.1:5432", {}, "needs a postgresql:// URL"),
        ("postgresql://app:pw@db:port/app", {}, "port that is not a number"),
        ("postgresql://db/app", {"schema": "Cobalt"}, "schema must be a lowercase name"),
        ("postgresql://db/app", {"schema": "a;drop"}, "schema must be a lowercase name"),
        ("postgresql://db/app", {"command_timeout": 0}, "command_timeout"),
        ("postgresql://db/app", {"max_connections": 0}, "max_connections"),
    ],
)
def test_bad_settings_are_configuration_errors(
    dsn: str, options: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match) as refused:
        PostgresSink(dsn, **options)
    assert "pw" not in str(refused.value)


def test_the_repr_names_host_and_schema_only() -> None:
    sink = PostgresSink("postgres://app:hunter2@db.internal:6543,db2:6543/app", schema="audit")
    assert repr(sink) == "<PostgresSink host='db.internal:6543,db2:6543' schema='audit' pending=0>"
    assert PostgresSink("postgresql:///app?host=/run/pg").host == "localhost"


async def test_postgres_down_at_startup(
    fresh_postgres_server: PostgresServer, postgres_schema: str
) -> None:
    """Waits neither hang nor fail while PostgreSQL is down; they resolve once it is back."""
    fresh_postgres_server.stop()
    results: list[Outcome] = []
    with anyio.fail_after(30):
        async with PostgresSink(fresh_postgres_server.dsn, schema=postgres_schema) as sink:

            async def wait() -> None:
                results.append(await sink.wait_for("s1", timeout=None))

            async with anyio.create_task_group() as group:
                group.start_soon(wait)
                with anyio.fail_after(5), pytest.raises(JobTimeoutError):
                    await sink.wait_for("s2", timeout=1.0)
                assert not results
                await anyio.to_thread.run_sync(fresh_postgres_server.start)
                publisher = PostgresSink(fresh_postgres_server.dsn, schema=postgres_schema)
                while True:  # the first command after the start may meet it still starting
                    try:
                        assert await publisher.publish(event("s1")) == "accepted"
                        break
                    except SinkUnavailableError:
                        await anyio.sleep(0.05)
                await publisher.aclose()
            assert results[0].event.id == "evt_ok_s1"
            assert sink.stats().pending == 0


async def test_a_fast_restart_mid_run_loses_nothing_and_resolves_nothing_twice(
    fresh_postgres_server: PostgresServer, postgres_schema: str
) -> None:
    """``pg_ctl restart -m fast`` while 200 jobs are awaited and delivered, with retries."""
    server = fresh_postgres_server
    receiving = PostgresSink(server.dsn, schema=postgres_schema)
    receiver = WebhookReceiver(receiving, secrets=[SECRET])
    jobs = [f"r{index}" for index in range(200)]
    payloads = {job: event_payload(job, failed=index % 7 == 0) for index, job in enumerate(jobs)}
    answers: Counter[str] = Counter()
    resolved: dict[str, list[str]] = {job: [] for job in jobs}
    rng = random.Random(15)
    with anyio.fail_after(60):
        await receiving.migrate()
        async with PostgresSink(server.dsn, schema=postgres_schema) as waiting:

            async def wait(job: str) -> None:
                outcome = await waiting.wait_for(job, timeout=45)
                resolved[job].append(str(outcome.event.id))

            async def deliver(job: str, delay: float) -> None:
                await anyio.sleep(delay)
                for _copy in range(2 if rng.random() < 0.3 else 1):
                    while True:
                        receipt = await receiver.receive(*delivery(payloads[job]))
                        answers[receipt.result] += 1
                        if receipt.status_code != 503:
                            break
                        await anyio.sleep(0.1)  # Cobalt's retry, made patient

            async with anyio.create_task_group() as group:
                for index, job in enumerate(jobs):
                    group.start_soon(wait, job)
                    group.start_soon(deliver, job, index * 0.01)
                await anyio.sleep(0.8)
                await anyio.to_thread.run_sync(server.restart)
            assert waiting.stats().reconnects >= 1
    assert server.starts == 2
    assert {job: ids for job, ids in resolved.items() if ids != [payloads[job]["id"]]} == {}
    assert answers["conflict"] == 0
    assert answers["accepted"] <= len(jobs)  # a reply lost in the restart: "duplicate"
    await receiving.aclose()


# Across processes.


def postgres_workers(
    server: PostgresServer, schema: str, count: int, directory: Path, *extra: str
) -> AbstractAsyncContextManager[list[WorkerProcess]]:
    """*count* worker processes sharing *schema* through PostgresSink."""
    args = ["--sink", "postgres", "--url", server.dsn, "--namespace", schema, *extra]
    return worker_pool(args, count, directory)


async def fan_out(
    server: PostgresServer,
    schema: str,
    directory: Path,
    *,
    jobs: int,
    chaos: bool,
) -> dict[str, Any]:
    """3 processes, each job awaited in 2 of them, half the webhooks early, 30 % twice."""
    rng = random.Random(jobs)
    job_ids = [f"fan-{index}" for index in range(jobs)]
    window = max(1.0, jobs / 300)
    plans, payloads, late_share = fan_out_plan(job_ids, 3, window=window, rng=rng)
    assert 0.35 < late_share < 0.65  # about half the webhooks come before their waiter
    terminated = 0

    async def faults() -> None:
        nonlocal terminated
        deadline = anyio.current_time() + window / 2
        while anyio.current_time() < deadline:
            await anyio.sleep(0.2)
            for name in (APPLICATION_NAME, LISTENER_NAME):
                terminated += await terminate(server, name)
        await anyio.to_thread.run_sync(server.restart)

    started = time.monotonic()
    async with postgres_workers(server, schema, 3, directory) as workers:
        async with anyio.create_task_group() as group:
            if chaos:
                group.start_soon(faults)
            results = await run_plans(workers, plans, retry_for=20.0)
        figures = check_fan_out(results, payloads, faults=chaos)
        stats = await final_stats(workers)
    assert [worker["pending"] for worker in stats] == [0, 0, 0]
    assert figures["awaits"] == 2 * jobs
    if chaos:
        assert all(worker["reconnects"] >= 1 for worker in stats), stats
    figures.update(
        late=f"{late_share:.0%}",
        terminated=terminated,
        reconnects=[worker["reconnects"] for worker in stats],
        wall=f"{time.monotonic() - started:.1f} s",
    )
    return figures


async def test_three_processes_lose_nothing(
    postgres_server: PostgresServer, postgres_schema: str, tmp_path: Path
) -> None:
    with anyio.fail_after(60):
        figures = await fan_out(postgres_server, postgres_schema, tmp_path, jobs=150, chaos=False)
    print(f"\nfan-out: {figures}")


@pytest.mark.e2e
async def test_a_thousand_jobs_across_three_processes_survive_cut_sessions_and_a_restart(
    fresh_postgres_server: PostgresServer, postgres_schema: str, tmp_path: Path
) -> None:
    """``pg_terminate_backend`` of every session five times a second, then ``pg_ctl restart
    -m fast``, mid-run: 0 lost, 0 stored twice, 0 outcomes that change."""
    server = fresh_postgres_server
    with anyio.fail_after(120):
        figures = await fan_out(server, postgres_schema, tmp_path, jobs=1000, chaos=True)
    assert server.starts == 2
    print(f"\nchaos: {figures}")
