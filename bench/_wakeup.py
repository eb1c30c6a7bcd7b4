"""
Metric 4: wake-up latency, from ``receive()`` returning to the awaiting coroutine running.

In-process (InMemorySink) against an ``anyio.Event`` set -> wake; across processes
(RedisSink, a publisher subprocess) against a raw redis-py ``XADD`` -> ``XREAD`` wake.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from cobalt_async import CobaltClient, InMemorySink, WebhookReceiver
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
from ._procs import redis_server, redis_server_binary

NAME = "wakeup_inprocess"
TITLE = "receive() returned -> `await handle` resumes, InMemorySink, vs anyio.Event set -> wake"
TARGET = Target("value", "<=", 1.0)
REDIS_NAME = "wakeup_redis"
REDIS_TITLE = (
    "receive() returned in process A -> `await handle` resumes in process B via RedisSink, "
    "vs raw XADD issued -> XREAD BLOCK woke"
)
REDIS_TARGET = Target("value", "<=", 5.0)
UNIT = "ms p99"


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


async def _raw_listener(url: str, stream: str, woken: dict[str, int]) -> None:
    import redis.asyncio as redis

    listener = redis.Redis.from_url(url)
    cursor: bytes | str = "0-0"  # a new stream: read it from its start
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


async def redis_samples(url: str, samples: int) -> dict[str, list[float]]:
    from cobalt_async.sinks import RedisSink

    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    raw_stream = f"bench-raw-{namespace}"
    sink = RedisSink(url, namespace=namespace)
    client = client_for(sink)
    results: dict[str, list[float]] = {"handle": [], "handle+receive": [], "sink": [], "raw": []}
    woken: dict[str, int] = {}

    async def waiter(job_id: str, through_handle: bool) -> None:
        if through_handle:
            await client.jobs.attach(job_id, "task").wait(timeout=None)
        else:
            await sink.wait_for(job_id, timeout=None)
        woken[job_id] = time.monotonic_ns()

    command = [sys.executable, "-m", "bench._publisher", url, namespace, raw_stream]
    async with (
        await anyio.open_process(command, stderr=subprocess.DEVNULL) as process,
        client,
        anyio.create_task_group() as task_group,
    ):
        publisher = _Publisher(process)
        if await publisher.readline() != b"ready":
            raise RuntimeError("the publisher process did not start")
        task_group.start_soon(_raw_listener, url, raw_stream, woken)
        warm_up = min(20, samples)
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
                    # From the XADD being issued: its reply and the XREAD's leave Redis together.
                    results["raw"].append((woke - issued) / 1e9)
                else:
                    results[mode].append((woke - returned) / 1e9)
                if mode == "handle":
                    results["handle+receive"].append((woke - issued) / 1e9)
        await process.stdin.send(b"quit\n")  # type: ignore[union-attr]
        task_group.cancel_scope.cancel()
    return results


async def measure_redis(sizes: Sizes) -> Metric:
    if redis_server_binary() is None:
        reason = "skipped: no redis-server on PATH (apt-get install redis-server)"
        return skipped(REDIS_NAME, REDIS_TITLE, UNIT, REDIS_TARGET, reason)
    with redis_server() as url:
        ping = await _ping_rtt(url, 500)
        results = await redis_samples(url, sizes.redis_samples)
    handle, direct, raw = results["handle"], results["sink"], results["raw"]
    whole = results["handle+receive"]
    return Metric(
        REDIS_NAME,
        REDIS_TITLE,
        percentile(handle, 99) * 1e3,
        percentile(raw, 99) * 1e3,
        UNIT,
        REDIS_TARGET,
        value_label="SDK p99",
        baseline_label="raw XADD issued->XREAD woke p99",
        details={
            "samples each": len(handle),
            **_summary("SDK (await handle)", handle),
            **_summary("sink.wait_for alone", direct),
            **_summary("SDK from receive() called", whole),
            **_summary("raw XADD issued->XREAD woke", raw),
            "redis PING round-trip p50 ms": percentile(ping, 50) * 1e3,
            "redis PING round-trip p99 ms": percentile(ping, 99) * 1e3,
            "p50 ratio": median(handle) / median(raw),
        },
    )
