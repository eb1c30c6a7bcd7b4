"""
Metric: webhooks stored per second through PostgresSink, against the same statements bare.

The SDK hands signed ``task.created`` deliveries to ``WebhookReceiver.receive`` (verify,
parse, store through the sink: one ``INSERT ... ON CONFLICT DO NOTHING`` with its
``pg_notify``); the baseline issues the sink's very statement with asyncpg, from a pool of the
same size at the same concurrency, with the outcome already encoded. Rounds alternate which
goes first; the ratio is the median of the paired rounds' ratios. Each round also times
``PostgresSink.publish`` of parsed events alone, to tell the sink's cost from the receiver's.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio

from cobalt_async import WebhookReceiver
from cobalt_async.models import parse_event
from cobalt_async.sinks import Outcome, Sink
from cobalt_async.sinks._shared import encode_outcome
from cobalt_async.testing import make_task_created_event, signed_delivery

from ._common import WEBHOOK_SECRET, Metric, Sizes, Target, median, skipped
from ._procs import postgres_bin_dir, postgres_server

NAME = "stores_postgres"
TITLE = (
    "webhooks stored/s, WebhookReceiver.receive into PostgresSink vs the sink's own "
    "INSERT ... ON CONFLICT + pg_notify issued bare with asyncpg"
)
TARGET = Target("ratio", ">=", 0.45)
UNIT = "webhooks/s"
CONCURRENCY = 16
POOL = 10


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


async def bare_round(
    pool: Any, statement: str, channel: str, ttl: float, job_ids: Sequence[str]
) -> float:
    events = [parse_event(make_task_created_event(job_id=job_id)) for job_id in job_ids]
    encoded = [encode_outcome(Outcome(event, "webhook")).decode() for event in events]  # type: ignore[arg-type]

    async def one(index: int) -> None:
        rows = await pool.fetch(statement, job_ids[index], encoded[index], ttl, channel)
        if len(rows) != 1:
            raise RuntimeError("the bare insert stored nothing")

    return await _concurrently(len(job_ids), one)


async def measure(sizes: Sizes) -> Metric:
    if postgres_bin_dir() is None:
        reason = "skipped: no PostgreSQL initdb on PATH (apt-get install postgresql)"
        return skipped(NAME, TITLE, UNIT, TARGET, reason)
    import asyncpg

    from cobalt_async.sinks import PostgresSink
    from cobalt_async.sinks._postgres import _keep_session

    with postgres_server() as dsn:
        sink = PostgresSink(dsn, schema=f"bench_{uuid.uuid4().hex[:8]}", max_connections=POOL)
        await sink.migrate()
        receiver = WebhookReceiver(sink, secrets=[WEBHOOK_SECRET])
        statement = sink._sql.insert_outcome
        settings = (sink.channel, sink.outcome_ttl)
        pool = await asyncpg.create_pool(dsn, min_size=POOL, max_size=POOL, reset=_keep_session)
        sdk: list[float] = []
        bare: list[float] = []
        alone: list[float] = []
        try:
            await sdk_round(receiver, _jobs("warm-sdk", 200))
            await bare_round(pool, statement, *settings, _jobs("warm-bare", 200))
            count = sizes.store_events
            for round_ in range(sizes.store_rounds):
                sdk_jobs, bare_jobs = _jobs(f"sdk{round_}", count), _jobs(f"bare{round_}", count)
                if round_ % 2:
                    bare.append(await bare_round(pool, statement, *settings, bare_jobs))
                sdk.append(await sdk_round(receiver, sdk_jobs))
                if not round_ % 2:
                    bare.append(await bare_round(pool, statement, *settings, bare_jobs))
                alone.append(await publish_round(sink, _jobs(f"alone{round_}", count)))
        finally:
            await pool.close()
            await sink.aclose()
    count = sizes.store_events
    return Metric(
        NAME,
        TITLE,
        count / median(sdk),
        count / median(bare),
        UNIT,
        TARGET,
        value_label="SDK",
        baseline_label="bare statement",
        details={
            "webhooks per round": count,
            "paired rounds (order alternated)": sizes.store_rounds,
            "concurrency": CONCURRENCY,
            "pool size, each": POOL,
            "SDK µs per webhook (wall)": median(sdk) / count * 1e6,
            "PostgresSink.publish alone, webhooks/s": count / median(alone),
            "bare µs per statement (wall)": median(bare) / count * 1e6,
        },
        paired_ratio=median([theirs / mine for mine, theirs in zip(sdk, bare, strict=True)]),
    )
