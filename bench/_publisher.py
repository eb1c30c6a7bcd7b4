"""
The other process of the cross-process wake-up benchmarks: it plays the webhook receiver.

Reads commands from stdin, one per line, and answers each with two ``time.monotonic_ns()``
readings, right before the write was issued and right after it returned (CLOCK_MONOTONIC is
system-wide, so the benchmark process can subtract them from its own readings):

- ``sdk <job_id>``: ``WebhookReceiver.receive()`` of a signed ``task.created`` into the sink;
- ``raw <job_id>``: the bare write the sink's wake-up rides on: a redis-py ``XADD``, an
  ``INSERT`` into a table of the same SQLite file with the stdlib ``sqlite3``, or an asyncpg
  ``NOTIFY``;
- ``quit``.

Run as ``python -m bench._publisher redis REDIS_URL NAMESPACE RAW_STREAM``,
``python -m bench._publisher sqlite PATH RAW_TABLE`` or
``python -m bench._publisher postgres DSN SCHEMA RAW_CHANNEL``.
"""

from __future__ import annotations

import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

import anyio

from cobalt_async import SQLiteSink, WebhookReceiver
from cobalt_async.sinks import Sink
from cobalt_async.testing import make_task_created_event, signed_delivery

from ._common import WEBHOOK_SECRET

RawWrite = Callable[[str], Awaitable[object]]


async def redis_store(
    stack: AsyncExitStack, url: str, namespace: str, stream: str
) -> tuple[Sink, RawWrite]:
    import redis.asyncio as redis

    from cobalt_async.sinks import RedisSink

    raw = redis.Redis.from_url(url)
    stack.push_async_callback(raw.aclose)
    await raw.ping()

    async def write(job_id: str) -> object:
        return await raw.xadd(stream, {"job": job_id})

    return RedisSink(url, namespace=namespace), write


async def sqlite_store(stack: AsyncExitStack, path: str, table: str) -> tuple[Sink, RawWrite]:
    raw = sqlite3.connect(path, isolation_level=None)
    stack.callback(raw.close)
    raw.execute(f"CREATE TABLE IF NOT EXISTS {table} (seq INTEGER PRIMARY KEY, job TEXT)")

    async def write(job_id: str) -> object:
        # On the event loop, as a bare script would: the commit is the whole cost.
        return raw.execute(f"INSERT INTO {table} (job) VALUES (?)", (job_id,))

    return SQLiteSink(path), write


async def postgres_store(
    stack: AsyncExitStack, dsn: str, schema: str, channel: str
) -> tuple[Sink, RawWrite]:
    import asyncpg

    from cobalt_async.sinks import PostgresSink

    raw = await asyncpg.connect(dsn)
    stack.push_async_callback(raw.close)
    sink = PostgresSink(dsn, schema=schema)
    await sink.migrate()  # not inside the first timed write

    async def write(job_id: str) -> object:
        return await raw.execute("SELECT pg_notify($1, $2)", channel, job_id)

    return sink, write


_STORES: dict[str, Callable[..., Awaitable[tuple[Sink, RawWrite]]]] = {
    "redis": redis_store,
    "sqlite": sqlite_store,
    "postgres": postgres_store,
}


async def serve(store: str, *args: str) -> None:
    async with AsyncExitStack() as stack:
        sink, raw_write = await _STORES[store](stack, *args)
        stack.push_async_callback(sink.aclose)
        receiver = WebhookReceiver(sink, secrets=[WEBHOOK_SECRET])
        stdin = anyio.wrap_file(sys.stdin)
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
                await raw_write(job_id)
                returned = time.monotonic_ns()
            else:
                return
            print(issued, returned, flush=True)


def main() -> None:
    store, *args = sys.argv[1:]
    anyio.run(serve, store, *args, backend="asyncio")


if __name__ == "__main__":
    main()
