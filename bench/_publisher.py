"""
The other process of the cross-process wake-up benchmarks: it plays the webhook receiver.

Reads commands from stdin, one per line, and answers each with two ``time.monotonic_ns()``
readings, right before the write was issued and right after it returned (CLOCK_MONOTONIC is
system-wide, so the benchmark process can subtract them from its own readings):

- ``sdk <job_id>``: ``WebhookReceiver.receive()`` of a signed ``task.created`` into the sink:
  a RedisSink for a ``redis://`` URL, a PostgresSink for a ``postgresql://`` one;
- ``raw <job_id>``: the bare write the sink's wake-up rides on: an ``XADD`` with redis-py,
  or a ``NOTIFY`` with asyncpg;
- ``quit``.

Run as ``python -m bench._publisher URL NAMESPACE RAW_CHANNEL`` (NAMESPACE: the Redis
namespace or the PostgreSQL schema).
"""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio

from cobalt_async import WebhookReceiver
from cobalt_async.sinks import Sink
from cobalt_async.testing import make_task_created_event, signed_delivery

from ._common import WEBHOOK_SECRET

RawWrite = Callable[[str], Awaitable[object]]


@asynccontextmanager
async def _redis(url: str, namespace: str, channel: str) -> AsyncIterator[tuple[Sink, RawWrite]]:
    import redis.asyncio as redis

    from cobalt_async.sinks import RedisSink

    raw = redis.Redis.from_url(url)
    try:
        await raw.ping()
        yield RedisSink(url, namespace=namespace), lambda job_id: raw.xadd(channel, {"job": job_id})
    finally:
        await raw.aclose()


@asynccontextmanager
async def _postgres(dsn: str, schema: str, channel: str) -> AsyncIterator[tuple[Sink, RawWrite]]:
    import asyncpg

    from cobalt_async.sinks import PostgresSink

    raw = await asyncpg.connect(dsn)
    sink = PostgresSink(dsn, schema=schema)
    try:
        await sink.migrate()  # not inside the first timed write
        yield sink, lambda job_id: raw.execute("SELECT pg_notify($1, $2)", channel, job_id)
    finally:
        await raw.close()


async def serve(url: str, namespace: str, raw_channel: str) -> None:
    backend = _postgres if url.startswith("postgres") else _redis
    async with backend(url, namespace, raw_channel) as (sink, raw):
        receiver = WebhookReceiver(sink, secrets=[WEBHOOK_SECRET])
        stdin = anyio.wrap_file(sys.stdin)
        try:
            print("ready", flush=True)
            while True:
                command, _, job_id = (await stdin.readline()).strip().partition(" ")
                if command == "sdk":
                    event = make_task_created_event(job_id=job_id)
                    body, headers = signed_delivery(event, WEBHOOK_SECRET)
                    issued = time.monotonic_ns()
                    receipt = await receiver.receive(body, headers)
                    returned = time.monotonic_ns()
                    if receipt.status_code != 200:
                        raise RuntimeError(f"receive() answered {receipt}")
                elif command == "raw":
                    issued = time.monotonic_ns()
                    await raw(job_id)
                    returned = time.monotonic_ns()
                else:
                    return
                print(issued, returned, flush=True)
        finally:
            await sink.aclose()


def main() -> None:
    url, namespace, raw_channel = sys.argv[1:4]
    anyio.run(serve, url, namespace, raw_channel, backend="asyncio")


if __name__ == "__main__":
    main()
