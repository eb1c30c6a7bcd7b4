"""Metric 5: cost per resolved event with many pending handles vs with few (no linear scans)."""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence

import anyio
from anyio.abc import TaskGroup

from cobalt_async.asgi import WebhookApp

from ._common import NO_POLL, Metric, Sizes, Target, median, offline_client
from ._ingest import Delivery, Exchange, Waiters, deliveries, drive, sdk_app

NAME = "scaling"
TITLE = "CPU per resolved event (WebhookApp + `await handle` resuming), many pending handles / few"
TARGET = Target("ratio", "<=", 1.3)
UNIT = "us/event"


class _Bench:
    """
    One WebhookApp whose sink keeps *pending* handles awaited while events resolve.

    Each handle is awaited as users do, ``await handle.wait()``, so each waiter also holds
    a backstop timer (the first poll is an hour away: none fires while this runs).
    """

    def __init__(self, pending: int, events: int, label: str) -> None:
        self.app: WebhookApp
        self.app, sink = sdk_app(events * 64)
        self.client = offline_client(sink, poll=NO_POLL, job_timeout=None)
        self.waiters = Waiters(sink, self.client)
        self.bystanders = pending - events
        self.label = label
        self.exchange = Exchange()

    async def start(self, task_group: TaskGroup) -> None:
        # Waiters that never resolve: with one round's own waiters, *pending* are awaited.
        ids = [f"{self.label}-{index}" for index in range(self.bystanders)]
        await self.waiters.start(task_group, ids)

    async def round(self, task_group: TaskGroup, batch: Sequence[Delivery]) -> float:
        """Seconds per event to ingest *batch* until each of its waiters ran."""
        await self.waiters.start(task_group, [item.job_id for item in batch])
        self.waiters.expect(len(batch))
        gc.collect()
        started = time.process_time()
        await drive(self.app, batch, self.exchange)
        await self.waiters.done.wait()
        return (time.process_time() - started) / len(batch)


async def measure(sizes: Sizes) -> Metric:
    events, rounds = sizes.scaling_events, sizes.scaling_rounds
    items = deliveries(events * (rounds + 1))
    batches = [items[index * events : (index + 1) * events] for index in range(rounds + 1)]
    small = _Bench(sizes.scaling_small, events, "small")
    large = _Bench(sizes.scaling_large, events, "large")
    costs: dict[str, list[float]] = {"small": [], "large": []}
    # Open clients, as users run them: the sinks' shared timers serve every wait.
    async with small.client, large.client, anyio.create_task_group() as task_group:
        gc.disable()  # set-up only: collections of a growing heap would take minutes
        try:
            await small.start(task_group)
            # The few-pending figure alone, before the large heap exists (drift-prone).
            alone = await small.round(task_group, batches[0])
            await large.start(task_group)
        finally:
            gc.enable()
        # Long-lived waiters leave the collector's generations, as in a server that ran a
        # while: the per-round gc.collect() then stays cheap. Both sinks share the heap.
        gc.freeze()
        try:
            for index, batch in enumerate(batches[1:]):
                order = (small, large) if index % 2 == 0 else (large, small)
                for bench in order:
                    costs[bench.label].append(await bench.round(task_group, batch))
        finally:
            gc.unfreeze()
        task_group.cancel_scope.cancel()
    pairs = [big / few for big, few in zip(costs["large"], costs["small"], strict=True)]
    return Metric(
        NAME,
        TITLE,
        median(costs["large"]) * 1e6,
        median(costs["small"]) * 1e6,
        UNIT,
        TARGET,
        value_label=f"{sizes.scaling_large:,} pending",
        baseline_label=f"{sizes.scaling_small:,} pending",
        details={
            "clock": "CPU time of this process: other processes on the machine do not count",
            "events resolved per round": events,
            "paired rounds (order alternated, both sinks in one process)": rounds,
            f"{sizes.scaling_small:,} pending, before the large heap existed, us/event": alone
            * 1e6,
            "ratio of medians": median(costs["large"]) / median(costs["small"]),
        },
        paired_ratio=median(pairs),
    )
