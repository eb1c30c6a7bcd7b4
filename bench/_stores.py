"""
Metrics: webhooks stored per second through each outside-store sink, against its own write bare.

The SDK hands signed ``task.created`` deliveries to ``WebhookReceiver.receive`` (verify,
parse, store through the sink); the baseline issues the sink's very store statement (or
script) with the store's own driver, as many connections at the same concurrency, with the
outcome already encoded. Rounds alternate which goes first; the ratio is the median of the
paired rounds' ratios. Each round also times ``sink.publish`` of parsed events alone, to tell
the sink's cost from the receiver's. Only the bare write differs from one store to the next:

- PostgreSQL: the sink's ``INSERT ... ON CONFLICT DO NOTHING`` with its ``pg_notify``, by
  asyncpg;
- SQLite: the sink's put (``BEGIN IMMEDIATE``, delete the expired row, ``INSERT ... ON
  CONFLICT DO NOTHING``) by the stdlib ``sqlite3`` from worker threads;
- Redis: the sink's publish script (``SET NX EX`` then ``XADD``), by redis-py.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio

from cobalt_async import WebhookReceiver
from cobalt_async.models import parse_event
from cobalt_async.sinks import Outcome, Sink
from cobalt_async.sinks._shared import encode_outcome
from cobalt_async.testing import make_task_created_event, signed_delivery

from ._common import WEBHOOK_SECRET, Metric, Sizes, Target, median, skipped
from ._procs import postgres_bin_dir, postgres_server, redis_server, redis_server_binary

UNIT = "webhooks/s"
CONCURRENCY = 16
POOL = 10
"""Connections of the PostgreSQL and Redis sinks, and of their bare drivers."""
SQLITE_POOL = 4
"""SQLiteSink's default ``max_connections``: its bare writer has as many connections."""

Write = Callable[[str, Any], Awaitable[None]]
"""The bare write of one job's encoded outcome."""


@dataclass(frozen=True, slots=True)
class Bare:
    """A sink on its store, and the sink's own write issued bare on the same store."""

    sink: Sink
    write: Write
    connections: int
    text: bool = True
    """Whether ``write`` takes the encoded outcome as text (else as bytes)."""


@dataclass(frozen=True, slots=True)
class Store:
    name: str
    title: str
    target: Target
    missing: Callable[[], str | None]
    """Why the store cannot run here, or ``None``."""
    open: Callable[[], AbstractAsyncContextManager[Bare]]


def _unless(found: Callable[[], object], reason: str) -> Callable[[], str | None]:
    """A store's ``missing``: *reason* when *found* finds nothing (its server's binary)."""
    return lambda: None if found() else f"skipped: {reason}"


def _jobs(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{index}" for index in range(count)]


async def _concurrently(count: int, one: Callable[[int], Awaitable[object]]) -> float:
    """Seconds to run ``one(index)`` for every index, CONCURRENCY at a time."""
    limit = anyio.Semaphore(CONCURRENCY)

    async def run(index: int) -> None:
        async with limit:
            await one(index)

    started = time.perf_counter()
    async with anyio.create_task_group() as group:
        for index in range(count):
            group.start_soon(run, index)
    return time.perf_counter() - started


async def sdk_round(receiver: WebhookReceiver, job_ids: Sequence[str]) -> float:
    deliveries = [
        signed_delivery(make_task_created_event(job_id=job_id), WEBHOOK_SECRET)
        for job_id in job_ids
    ]

    async def one(index: int) -> None:
        receipt = await receiver.receive(*deliveries[index])
        if receipt.status_code != 200:
            raise RuntimeError(f"receive() answered {receipt}")

    return await _concurrently(len(job_ids), one)


async def publish_round(sink: Sink, job_ids: Sequence[str]) -> float:
    """``sink.publish`` of parsed events: the sink's share of the receiver's time."""
    events = [parse_event(make_task_created_event(job_id=job_id)) for job_id in job_ids]

    async def one(index: int) -> None:
        await sink.publish(events[index])

    return await _concurrently(len(job_ids), one)


async def bare_round(bare: Bare, job_ids: Sequence[str]) -> float:
    events = [parse_event(make_task_created_event(job_id=job_id)) for job_id in job_ids]
    encoded: list[Any] = [encode_outcome(Outcome(event, "webhook")) for event in events]  # type: ignore[arg-type]
    if bare.text:
        encoded = [value.decode() for value in encoded]

    async def one(index: int) -> None:
        await bare.write(job_ids[index], encoded[index])

    return await _concurrently(len(job_ids), one)


async def measure(store: Store, sizes: Sizes) -> Metric:
    reason = store.missing()
    if reason is not None:
        return skipped(store.name, store.title, UNIT, store.target, reason)
    sdk: list[float] = []
    bare: list[float] = []
    alone: list[float] = []
    count = sizes.store_events
    async with store.open() as opened:
        sink = opened.sink
        receiver = WebhookReceiver(sink, secrets=[WEBHOOK_SECRET])
        try:
            await sdk_round(receiver, _jobs("warm-sdk", 200))
            await bare_round(opened, _jobs("warm-bare", 200))
            for round_ in range(sizes.store_rounds):
                sdk_jobs, bare_jobs = _jobs(f"sdk{round_}", count), _jobs(f"bare{round_}", count)
                if round_ % 2:
                    bare.append(await bare_round(opened, bare_jobs))
                sdk.append(await sdk_round(receiver, sdk_jobs))
                if not round_ % 2:
                    bare.append(await bare_round(opened, bare_jobs))
                alone.append(await publish_round(sink, _jobs(f"alone{round_}", count)))
        finally:
            await sink.aclose()
    return Metric(
        store.name,
        store.title,
        count / median(sdk),
        count / median(bare),
        UNIT,
        store.target,
        value_label="SDK",
        baseline_label="bare write",
        details={
            "webhooks per round": count,
            "paired rounds (order alternated)": sizes.store_rounds,
            "concurrency": CONCURRENCY,
            "connections, each": opened.connections,
            "SDK µs per webhook (wall)": median(sdk) / count * 1e6,
            f"{type(sink).__name__}.publish alone, webhooks/s": count / median(alone),
            "bare µs per write (wall)": median(bare) / count * 1e6,
        },
        paired_ratio=median([theirs / mine for mine, theirs in zip(sdk, bare, strict=True)]),
    )


# PostgreSQL: a private cluster.


@asynccontextmanager
async def _postgres() -> AsyncIterator[Bare]:
    import asyncpg

    from cobalt_async.sinks import PostgresSink
    from cobalt_async.sinks._postgres import _keep_session

    with postgres_server() as dsn:
        sink = PostgresSink(dsn, schema=f"bench_{uuid.uuid4().hex[:8]}", max_connections=POOL)
        await sink.migrate()
        statement, channel, ttl = sink._sql.insert_outcome, sink.channel, sink.outcome_ttl
        pool = await asyncpg.create_pool(dsn, min_size=POOL, max_size=POOL, reset=_keep_session)

        async def write(job_id: str, encoded: str) -> None:
            if len(await pool.fetch(statement, job_id, encoded, ttl, channel)) != 1:
                raise RuntimeError("the bare insert stored nothing")

        try:
            yield Bare(sink, write, POOL)
        finally:
            await pool.close()


POSTGRES = Store(
    "stores_postgres",
    "webhooks stored/s, WebhookReceiver.receive into PostgresSink vs the sink's own "
    "INSERT ... ON CONFLICT + pg_notify issued bare with asyncpg",
    Target("ratio", ">=", 0.45),
    _unless(postgres_bin_dir, "no PostgreSQL initdb on PATH (apt-get install postgresql)"),
    _postgres,
)


# SQLite: a temporary file.


@asynccontextmanager
async def _sqlite() -> AsyncIterator[Bare]:
    from cobalt_async import SQLiteSink

    with tempfile.TemporaryDirectory(prefix="cobalt-bench-sqlite-") as directory:
        path = os.path.join(directory, "bench.sqlite")
        sink = SQLiteSink(path, max_connections=SQLITE_POOL)
        put, ttl = sink._db.put, sink.outcome_ttl
        idle: list[sqlite3.Connection] = []
        for _ in range(SQLITE_POOL):
            # As the sink opens its own (the file is in WAL mode from the sink's first use),
            # with SQLite's busy handler alone to wait for the write lock.
            connection = sqlite3.connect(
                path, timeout=5.0, isolation_level=None, check_same_thread=False
            )
            connection.execute(f"PRAGMA synchronous = {sink._db._synchronous}")
            idle.append(connection)
        threads = anyio.CapacityLimiter(SQLITE_POOL)

        def put_now(connection: sqlite3.Connection, job_id: str, encoded: str) -> None:
            now = time.time()
            if put(connection, job_id, encoded, now, now + ttl) is not None:
                raise RuntimeError("the bare put stored nothing")

        async def write(job_id: str, encoded: str) -> None:
            async with threads:  # a connection is free whenever the limiter admits
                connection = idle.pop()
                try:
                    await anyio.to_thread.run_sync(put_now, connection, job_id, encoded)
                finally:
                    idle.append(connection)

        try:
            yield Bare(sink, write, SQLITE_POOL)
        finally:
            for connection in idle:
                connection.close()


SQLITE = Store(
    "stores_sqlite",
    "webhooks stored/s, WebhookReceiver.receive into SQLiteSink vs the sink's own "
    "BEGIN IMMEDIATE + INSERT ... ON CONFLICT issued bare with sqlite3 from threads",
    # Higher than the servers' targets: the bare write (a thread hop and a transaction on
    # disk, about 230 µs here) costs the SDK as much, and dwarfs what the receiver adds to it
    # (verify, parse, encode: under 100 µs); measured 0.76 on the 2-core machine.
    Target("ratio", ">=", 0.6),
    lambda: None,  # the stdlib's sqlite3: always here
    _sqlite,
)


# Redis: a private redis-server.


@asynccontextmanager
async def _redis() -> AsyncIterator[Bare]:
    import redis.asyncio as redis

    from cobalt_async.sinks import RedisSink
    from cobalt_async.sinks._redis import _PUBLISH

    with redis_server() as url:
        sink = RedisSink(url, namespace=f"bench_{uuid.uuid4().hex[:8]}", max_connections=POOL)
        client = redis.Redis(
            connection_pool=redis.BlockingConnectionPool.from_url(url, max_connections=POOL)
        )
        script = client.register_script(_PUBLISH)
        stream, ttl, maxlen = sink._stream, sink.outcome_ttl, sink.stream_maxlen

        async def write(job_id: str, encoded: bytes) -> None:
            args: list[bytes | str | int | float] = [encoded, ttl, maxlen, job_id]
            if await script(keys=[sink._out_key(job_id), stream], args=args) is not None:
                raise RuntimeError("the bare script stored nothing")

        try:
            yield Bare(sink, write, POOL, text=False)
        finally:
            await client.aclose()


REDIS = Store(
    "stores_redis",
    "webhooks stored/s, WebhookReceiver.receive into RedisSink vs the sink's own "
    "publish script (SET NX EX + XADD) issued bare with redis-py",
    # As PostgreSQL's: a bare script round trip (about 125 µs here) costs no more than what
    # the receiver adds to it in Python (verify, parse, encode, admission), so about half the
    # bare rate is the ceiling; measured 0.59 on the 2-core machine.
    Target("ratio", ">=", 0.45),
    _unless(redis_server_binary, "no redis-server on PATH (apt-get install redis-server)"),
    _redis,
)


async def measure_postgres(sizes: Sizes) -> Metric:
    return await measure(POSTGRES, sizes)


async def measure_sqlite(sizes: Sizes) -> Metric:
    return await measure(SQLITE, sizes)


async def measure_redis(sizes: Sizes) -> Metric:
    return await measure(REDIS, sizes)
