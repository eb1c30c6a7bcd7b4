"""
The other process of the cross-process wake-up benchmark: it plays the webhook receiver.

Reads commands from stdin, one per line, and answers each with two ``time.monotonic_ns()``
readings, right before the write was issued and right after it returned (CLOCK_MONOTONIC is
system-wide, so the benchmark process can subtract them from its own readings):

- ``sdk <job_id>``: ``WebhookReceiver.receive()`` of a signed ``task.created`` into a RedisSink;
- ``raw <job_id>``: a bare ``XADD`` with redis-py;
- ``quit``.

Run as ``python -m bench._publisher REDIS_URL NAMESPACE RAW_STREAM``.
"""

from __future__ import annotations

import sys
import time

import anyio
import redis.asyncio as redis

from cobalt_async import WebhookReceiver
from cobalt_async.sinks import RedisSink
from cobalt_async.testing import make_task_created_event, signed_delivery

from ._common import WEBHOOK_SECRET


async def serve(url: str, namespace: str, raw_stream: str) -> None:
    sink = RedisSink(url, namespace=namespace)
    receiver = WebhookReceiver(sink, secrets=[WEBHOOK_SECRET])
    raw = redis.Redis.from_url(url)
    stdin = anyio.wrap_file(sys.stdin)
    try:
        await raw.ping()
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
                await raw.xadd(raw_stream, {"job": job_id})
                returned = time.monotonic_ns()
            else:
                return
            print(issued, returned, flush=True)
    finally:
        await raw.aclose()
        await sink.aclose()


def main() -> None:
    url, namespace, raw_stream = sys.argv[1:4]
    anyio.run(serve, url, namespace, raw_stream, backend="asyncio")


if __name__ == "__main__":
    main()
