"""
Metric 4: wake-up latency, from ``receive()`` returning to the awaiting coroutine running.

In-process (InMemorySink) against an ``anyio.Event`` set -> wake; across processes, with a
publisher subprocess: RedisSink against a raw redis-py ``XADD`` -> ``XREAD`` wake,
SQLiteSink against a bare ``INSERT`` into the same file -> a poll at the sink's interval, and
PostgresSink against a bare asyncpg ``NOTIFY`` -> ``LISTEN`` callback.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from contextlib import closing
from typing import Any, TypeAlias

import anyio
import anyio.lowlevel
from anyio.abc import Process, TaskStatus
from anyio.streams.buffered import BufferedByteReceiveStream

from cobalt_async import CobaltClient, InMemorySink, SQLiteSink, WebhookReceiver
from cobalt_async.sinks import Sink

from ._common import (
    NO_POLL,
    WEBHOOK_SECRET,
    Metric,
    Sizes,
    Target,
    median,
    offline_client,
    percentile,
    skipped,
    until,
)
from ._ingest import deliveries
from ._procs import postgres_bin_dir, postgres_server, redis_server, redis_server_binary

NAME = "wakeup_inprocess"
TITLE = "receive() returned -> `await handle` resumes, InMemorySink, vs anyio.Event set -> wake"
TARGET = Target("value", "<=", 1.0)
REDIS_NAME = "wakeup_redis"
REDIS_TITLE = (
    "receive() returned in process A -> `await handle` resumes in process B via RedisSink, "
    "vs raw XADD issued -> XREAD BLOCK woke"
)
# Against the bare wake-up on the same server in the same run: absolute milliseconds move with
# the machine's load, the ratio much less.
REDIS_TARGET = Target("ratio", "<=", 1.5)
SQLITE_NAME = "wakeup_sqlite"
SQLITE_TITLE = (
    "receive() returned in process A -> `await handle` resumes in process B via SQLiteSink, "
    "vs a bare INSERT issued -> a poll every poll_interval saw it"
)
SQLITE_TARGET = Target("value", "<=", 50.0)
POSTGRES_NAME = "wakeup_postgres"
POSTGRES_TITLE = (
    "receive() returned in process A -> `await handle` resumes in process B via PostgresSink, "
    "vs bare NOTIFY issued -> LISTEN callback ran"
)
POSTGRES_TARGET = Target("ratio", "<=", 2.0)
UNIT = "ms p99"

RawListener: TypeAlias = Callable[..., Coroutine[Any, Any, None]]
"""
``listen(woken, *, task_status)``: records, by job id, when this process noticed each bare
write of the publisher; started once no write can be missed any more.
"""


def client_for(sink: Sink) -> CobaltClient:
    return offline_client(sink, poll=NO_POLL, job_timeout=None)


def _summary(prefix: str, latencies: Sequence[float]) -> dict[str, float]:
    return {
        f"{prefix} p50 ms": percentile(latencies, 50) * 1e3,
        f"{prefix} p99 ms": percentile(latencies, 99) * 1e3,
        f"{prefix} max ms": max(latencies) * 1e3,
    }


# In-process.


async def inprocess_sdk(samples: int, *, through_handle: bool = True) -> list[float]:
    """Seconds from ``receive()`` returning to the code after ``await handle`` running."""
    sink = InMemorySink()
    receiver = WebhookReceiver(sink, secrets=[WEBHOOK_SECRET])
    client = client_for(sink)
    latencies: list[float] = []
    woke_at = 0.0

    async def waiter(job_id: str, done: anyio.Event) -> None:
        nonlocal woke_at
        if through_handle:
            await client.jobs.attach(job_id, "task").wait(timeout=None)
        else:
            await sink.wait_for(job_id, timeout=None)
        woke_at = time.perf_counter()
        done.set()

    async with client, anyio.create_task_group() as task_group:
        for item in deliveries(samples):
            done = anyio.Event()
            task_group.start_soon(waiter, item.job_id, done)
            while not sink.stats().pending:
                await anyio.lowlevel.checkpoint()
            receipt = await receiver.receive(item.body, item.scope["headers"])
            returned = time.perf_counter()
            await done.wait()
            if receipt.status_code != 200:
                raise RuntimeError(f"receive() answered {receipt}")
            latencies.append(woke_at - returned)
    return latencies


async def inprocess_event(samples: int) -> list[float]:
    """Seconds from ``Event.set()`` returning to the code after ``await event.wait()``."""
    latencies: list[float] = []
    woke_at = 0.0
    parked = False

    async def waiter(event: anyio.Event, done: anyio.Event) -> None:
        nonlocal woke_at, parked
        parked = True
        await event.wait()
        woke_at = time.perf_counter()
        done.set()

    async with anyio.create_task_group() as task_group:
        for _ in range(samples):
            event, done, parked = anyio.Event(), anyio.Event(), False
            task_group.start_soon(waiter, event, done)
            while not parked:
                await anyio.lowlevel.checkpoint()
            event.set()
            returned = time.perf_counter()
            await done.wait()
            latencies.append(woke_at - returned)
    return latencies


async def measure_inprocess(sizes: Sizes) -> Metric:
    warm_up = min(200, sizes.wake_samples)
    await inprocess_sdk(warm_up)
    await inprocess_event(warm_up)
    sdk: list[float] = []
    base: list[float] = []
    direct: list[float] = []
    chunk = max(1, sizes.wake_samples // 10)
    for _ in range(10):  # interleaved chunks: machine noise hits both alike
        sdk += await inprocess_sdk(chunk)
        base += await inprocess_event(chunk)
        direct += await inprocess_sdk(chunk, through_handle=False)
    return Metric(
        NAME,
        TITLE,
        percentile(sdk, 99) * 1e3,
        percentile(base, 99) * 1e3,
        UNIT,
        TARGET,
        value_label="SDK p99",
        baseline_label="anyio.Event p99",
        details={
            "samples each": len(sdk),
            **_summary("SDK (await handle)", sdk),
            **_summary("sink.wait_for alone", direct),
            **_summary("anyio.Event", base),
            "p50 ratio": median(sdk) / median(base),
        },
    )


# Across processes, through Redis.


class _Publisher:
    """The publisher subprocess (``bench._publisher``) and its line protocol."""

    def __init__(self, process: Process) -> None:
        assert process.stdin is not None
        assert process.stdout is not None
        self.process = process
        self._stdin = process.stdin
        self._stdout = BufferedByteReceiveStream(process.stdout)

    async def readline(self) -> bytes:
        with anyio.fail_after(20):
            return await self._stdout.receive_until(b"\n", 100)

    async def publish(self, mode: str, job_id: str) -> tuple[int, int]:
        """Have the publisher write: ``monotonic_ns`` before it issued it, after it returned."""
        await self._stdin.send(f"{mode} {job_id}\n".encode())
        issued, returned = (await self.readline()).split()
        return int(issued), int(returned)


async def _raw_listener(
    url: str, stream: str, woken: dict[str, int], *, task_status: TaskStatus[None]
) -> None:
    import redis.asyncio as redis

    listener = redis.Redis.from_url(url)
    cursor: bytes | str = "0-0"  # a new stream: read it from its start
    task_status.started()
    try:
        while True:
            reply: Any = await listener.xread({stream: cursor}, block=0)
            now = time.monotonic_ns()
            for _name, entries in reply:
                for entry_id, fields in entries:
                    cursor = entry_id
                    woken[fields[b"job"].decode()] = now
    finally:
        with anyio.CancelScope(shield=True):
            await listener.aclose()


async def _ping_rtt(url: str, count: int) -> list[float]:
    import redis.asyncio as redis

    client = redis.Redis.from_url(url)
    try:
        await client.ping()
        rtts = []
        for _ in range(count):
            started = time.perf_counter()
            await client.ping()
            rtts.append(time.perf_counter() - started)
        return rtts
    finally:
        await client.aclose()


def warm_ups(samples: int) -> int:
    """How many rounds of :func:`cross_process_samples` warm up, before *samples* count."""
    return min(20, samples)


async def cross_process_samples(
    sink: Sink, publisher_args: Sequence[str], raw_listener: RawListener, samples: int
) -> dict[str, list[float]]:
    """
    Wake-ups in this process of writes made by a publisher process: through *sink* to a
    handle, through it to a bare ``wait_for``, and the bare write *raw_listener* notices.
    """
    client = client_for(sink)
    results: dict[str, list[float]] = {"handle": [], "handle+receive": [], "sink": [], "raw": []}
    woken: dict[str, int] = {}

    async def waiter(job_id: str, through_handle: bool) -> None:
        if through_handle:
            await client.jobs.attach(job_id, "task").wait(timeout=None)
        else:
            await sink.wait_for(job_id, timeout=None)
        woken[job_id] = time.monotonic_ns()

    command = [sys.executable, "-m", "bench._publisher", *publisher_args]
    async with (
        await anyio.open_process(command, stderr=subprocess.DEVNULL) as process,
        client,
        anyio.create_task_group() as task_group,
    ):
        publisher = _Publisher(process)
        if await publisher.readline() != b"ready":
            raise RuntimeError("the publisher process did not start")
        await task_group.start(raw_listener, woken)
        warm_up = warm_ups(samples)
        for index in range(samples + warm_up):  # the first ones warm up
            for mode in ("handle", "sink", "raw"):
                job_id = f"{mode}-{index}"
                if mode != "raw":
                    task_group.start_soon(waiter, job_id, mode == "handle")
                    await until(lambda: sink.stats().pending > 0, interval=0.0005)
                    await anyio.sleep(0.005)  # past its store read: asleep on the slot
                issued, returned = await publisher.publish(
                    "raw" if mode == "raw" else "sdk", job_id
                )
                await until(lambda: job_id in woken, interval=0.0005)  # noqa: B023
                if mode != "raw":
                    await until(lambda: sink.stats().pending == 0, interval=0.0005)
                woke = woken.pop(job_id)
                if index < warm_up:
                    continue
                if mode == "raw":
                    # From the bare write being issued: with Redis, its reply and the XREAD's
                    # leave the server together.
                    results["raw"].append((woke - issued) / 1e9)
                else:
                    results[mode].append((woke - returned) / 1e9)
                if mode == "handle":
                    results["handle+receive"].append((woke - issued) / 1e9)
        await process.stdin.send(b"quit\n")  # type: ignore[union-attr]
        task_group.cancel_scope.cancel()
    return results


async def redis_samples(url: str, samples: int) -> dict[str, list[float]]:
    from cobalt_async.sinks import RedisSink

    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    raw_stream = f"bench-raw-{namespace}"

    async def raw_listener(woken: dict[str, int], *, task_status: TaskStatus[None]) -> None:
        await _raw_listener(url, raw_stream, woken, task_status=task_status)

    sink = RedisSink(url, namespace=namespace)
    removals: list[float] = []
    remove = sink.remove_pending

    async def timed_remove(job_id: str) -> None:
        # The round trip each wait makes before it returns: off the pending registry.
        started = time.perf_counter()
        await remove(job_id)
        removals.append(time.perf_counter() - started)

    sink.remove_pending = timed_remove  # type: ignore[method-assign]
    results = await cross_process_samples(
        sink, ["redis", url, namespace, raw_stream], raw_listener, samples
    )
    # Two waits a round (a handle's, sink.wait_for's): the warm-up rounds' removals go too.
    return {**results, "removal": removals[2 * warm_ups(samples) :]}


async def measure_redis(sizes: Sizes) -> Metric:
    if redis_server_binary() is None:
        reason = "skipped: no redis-server on PATH (apt-get install redis-server)"
        return skipped(REDIS_NAME, REDIS_TITLE, UNIT, REDIS_TARGET, reason)
    with redis_server() as url:
        ping = await _ping_rtt(url, 500)
        results = await redis_samples(url, sizes.redis_samples)
    removal = results.pop("removal")
    return _cross_process_metric(
        REDIS_NAME,
        REDIS_TITLE,
        REDIS_TARGET,
        "raw XADD issued->XREAD woke",
        results,
        **{
            "redis PING round-trip p50 ms": percentile(ping, 50) * 1e3,
            "redis PING round-trip p99 ms": percentile(ping, 99) * 1e3,
            "the wait's pending-registry removal, p50 ms": percentile(removal, 50) * 1e3,
            "the same, p99 ms": percentile(removal, 99) * 1e3,
        },
    )


def _cross_process_metric(
    name: str,
    title: str,
    target: Target,
    baseline: str,
    results: dict[str, list[float]],
    **details: float,
) -> Metric:
    """The metric of :func:`cross_process_samples`: the SDK's p99 against the raw write's."""
    handle, raw = results["handle"], results["raw"]
    return Metric(
        name,
        title,
        percentile(handle, 99) * 1e3,
        percentile(raw, 99) * 1e3,
        UNIT,
        target,
        value_label="SDK p99",
        baseline_label=f"{baseline} p99",
        details={
            "samples each": len(handle),
            **_summary("SDK (await handle)", handle),
            **_summary("sink.wait_for alone", results["sink"]),
            **_summary("SDK from receive() called", results["handle+receive"]),
            **_summary(baseline, raw),
            **details,
            "p50 ratio": median(handle) / median(raw),
        },
    )


# Across processes, through one SQLite file.


async def _raw_sqlite_listener(
    path: str, table: str, interval: float, woken: dict[str, int], *, task_status: TaskStatus[None]
) -> None:
    """The bare mechanism SQLiteSink's listener rides on: poll the table from a thread."""
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    cursor = 0
    task_status.started()  # from the table's first row: nothing written can be missed

    def poll() -> list[tuple[int, str]]:
        query = f"SELECT seq, job FROM {table} WHERE seq > ? ORDER BY seq"
        return connection.execute(query, (cursor,)).fetchall()

    try:
        while True:
            rows = await anyio.to_thread.run_sync(poll)
            now = time.monotonic_ns()
            for cursor, job_id in rows:  # noqa: B007  (the last one is the next cursor)
                woken[job_id] = now
            await anyio.sleep(interval)
    finally:
        connection.close()


async def sqlite_samples(path: str, samples: int) -> dict[str, list[float]]:
    table = "bench_raw"
    with closing(sqlite3.connect(path)) as connection:
        # Both processes find the file in WAL mode and the bare table there.
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute(f"CREATE TABLE {table} (seq INTEGER PRIMARY KEY, job TEXT)")
    sink = SQLiteSink(path)

    async def raw_listener(woken: dict[str, int], *, task_status: TaskStatus[None]) -> None:
        await _raw_sqlite_listener(path, table, sink.poll_interval, woken, task_status=task_status)

    return await cross_process_samples(sink, ["sqlite", path, table], raw_listener, samples)


async def measure_sqlite(sizes: Sizes) -> Metric:
    with tempfile.TemporaryDirectory(prefix="cobalt-bench-sqlite-") as directory:
        results = await sqlite_samples(
            os.path.join(directory, "bench.sqlite"), sizes.sqlite_samples
        )
    return _cross_process_metric(
        SQLITE_NAME, SQLITE_TITLE, SQLITE_TARGET, "bare INSERT issued->poll saw it", results
    )


# Across processes, through PostgreSQL.


async def _raw_postgres_listener(
    dsn: str, channel: str, woken: dict[str, int], *, task_status: TaskStatus[None]
) -> None:
    import asyncpg

    listener = await asyncpg.connect(dsn)

    def notified(_connection: object, _pid: int, _channel: str, payload: str) -> None:
        woken[payload] = time.monotonic_ns()

    try:
        await listener.add_listener(channel, notified)
        task_status.started()  # LISTEN is in effect: no notification can be missed now
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            await listener.close()


async def postgres_samples(dsn: str, samples: int) -> dict[str, list[float]]:
    from cobalt_async.sinks import PostgresSink

    schema = f"bench_{uuid.uuid4().hex[:8]}"
    channel = f"bench_raw_{schema}"

    async def raw_listener(woken: dict[str, int], *, task_status: TaskStatus[None]) -> None:
        await _raw_postgres_listener(dsn, channel, woken, task_status=task_status)

    sink = PostgresSink(dsn, schema=schema)
    return await cross_process_samples(
        sink, ["postgres", dsn, schema, channel], raw_listener, samples
    )


async def measure_postgres(sizes: Sizes) -> Metric:
    if postgres_bin_dir() is None:
        reason = "skipped: no PostgreSQL initdb on PATH (apt-get install postgresql)"
        return skipped(POSTGRES_NAME, POSTGRES_TITLE, UNIT, POSTGRES_TARGET, reason)
    with postgres_server() as dsn:
        results = await postgres_samples(dsn, sizes.redis_samples)
    return _cross_process_metric(
        POSTGRES_NAME,
        POSTGRES_TITLE,
        POSTGRES_TARGET,
        "bare NOTIFY issued->LISTEN callback",
        results,
    )
