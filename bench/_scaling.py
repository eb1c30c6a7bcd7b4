"""
Metric 5: cost per resolved event with many pending handles vs with few (no linear scans).

Each size runs in fresh interpreters with the collector on and no ``gc.freeze()`` (but for
one detail measured after the rounds), so that the rounds pay what a real heap of that many
pending handles costs: the young collections that keep running, the memory a lookup reaches.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import anyio
from anyio.abc import TaskGroup

from cobalt_async.asgi import WebhookApp

from ._common import NO_POLL, Metric, Sizes, Target, in_fresh_interpreter, median, offline_client
from ._ingest import Delivery, Exchange, Waiters, deliveries, drive, sdk_app

NAME = "scaling"
TITLE = (
    "CPU per resolved event (WebhookApp + `await handle` resuming), many pending handles / "
    "few, each size in its own process, collector on"
)
TARGET = Target("ratio", "<=", 1.3)
UNIT = "us/event"


class _Collector:
    """The collections that ran in the timed sections, and the CPU they took (a gc callback)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.runs = [0, 0, 0]
        self._started = 0.0
        self.active = False

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if not self.active:
            return
        if phase == "start":
            self._started = time.process_time()
        else:
            self.seconds += time.process_time() - self._started
            self.runs[info["generation"]] += 1

    @contextmanager
    def watching(self) -> Iterator[None]:
        self.active = True
        try:
            yield
        finally:
            self.active = False


class _Bench:
    """
    One WebhookApp whose sink keeps *pending* handles awaited while events resolve.

    Each handle is awaited as users do, ``await handle.wait()``, so each waiter also holds
    a backstop timer (the first poll is an hour away: none fires while this runs).
    """

    def __init__(self, pending: int, events: int) -> None:
        self.app: WebhookApp
        self.app, sink = sdk_app(events * 64)
        self.client = offline_client(sink, poll=NO_POLL, job_timeout=None)
        self.waiters = Waiters(sink, self.client)
        self.bystanders = pending - events
        self.exchange = Exchange()

    async def start(self, task_group: TaskGroup) -> None:
        # Waiters that never resolve: with one round's own waiters, *pending* are awaited.
        ids = [f"bystander-{index}" for index in range(self.bystanders)]
        await self.waiters.start(task_group, ids)

    async def round(
        self, task_group: TaskGroup, batch: Sequence[Delivery], collector: _Collector | None
    ) -> tuple[float, float]:
        """
        CPU seconds per event to ingest *batch* until each of its waiters ran, and the same
        with the start of those waiters included (where most young collections run).
        """
        with collector.watching() if collector else nullcontext():
            begun = time.process_time()
            await self.waiters.start(task_group, [item.job_id for item in batch])
            self.waiters.expect(len(batch))
            started = time.process_time()
            await drive(self.app, batch, self.exchange)
            await self.waiters.done.wait()
            ended = time.process_time()
        return (ended - started) / len(batch), (ended - begun) / len(batch)


async def _pending(pending: int, events: int, rounds: int, frozen: bool) -> dict[str, Any]:
    """Per-round costs with *pending* handles awaited (then after ``gc.freeze()``, if *frozen*)."""
    items = deliveries(events * rounds * (2 if frozen else 1))
    batches = [items[index : index + events] for index in range(0, len(items), events)]
    bench = _Bench(pending, events)
    collector = _Collector()
    gc.callbacks.append(collector)
    result: dict[str, Any] = {}
    # An open client, as users run it: the sink's shared timers serve every wait.
    async with bench.client, anyio.create_task_group() as task_group:
        gc.disable()  # set-up only: collections of a growing heap would take minutes
        try:
            await bench.start(task_group)
        finally:
            gc.enable()
        gc.collect()  # the set-up's garbage gone: the rounds pay only for their own
        measured = [await bench.round(task_group, b, collector) for b in batches[:rounds]]
        result["costs"], result["with_start"] = zip(*measured, strict=True)
        result["collector_seconds"], result["collections"] = collector.seconds, collector.runs
        if frozen:
            # As a service that froze its heap after start-up: the pending handles leave
            # the collector's generations, the rounds' own objects are still collected.
            gc.freeze()
            try:
                after = [await bench.round(task_group, b, None) for b in batches[rounds:]]
                result["frozen"] = [cost for cost, _ in after]
            finally:
                gc.unfreeze()
        task_group.cancel_scope.cancel()
    gc.callbacks.remove(collector)
    return result


def _in_process(pending: int, events: int, rounds: int, frozen: bool) -> dict[str, Any]:
    result = anyio.run(_pending, pending, events, rounds, frozen, backend="asyncio")
    # The cancelled waiters are cycles, and the process ends next: at a million handles the
    # collection at exit would take about 20 s to free what the OS reclaims at once.
    gc.freeze()
    return result


def _pooled(found: Sequence[dict[str, Any]], key: str) -> float:
    """The median of every round's *key* cost over the processes *found*, in us/event."""
    return median([cost for each in found for cost in each[key]]) * 1e6


def _collector(found: Sequence[dict[str, Any]], events: int) -> str:
    """Collections by generation in the rounds of *found*, and their CPU per event."""
    runs = "/".join(str(sum(each["collections"][gen] for each in found)) for gen in range(3))
    seconds: float = sum(each["collector_seconds"] for each in found)
    return f"{runs}, {seconds / (events * len(found)) * 1e6:.2f} us/event"


async def measure(sizes: Sizes) -> Metric:
    events, rounds, processes = sizes.scaling_events, sizes.scaling_rounds, sizes.scaling_processes
    small: list[dict[str, Any]] = []
    large: list[dict[str, Any]] = []
    # Alternated, small then large, so that each pair of processes shares the machine's load.
    for index in range(processes):
        small.append(in_fresh_interpreter(_in_process, sizes.scaling_small, events, rounds, False))
        frozen = index == processes - 1  # the gc.freeze() figure is a detail: once is enough
        large.append(in_fresh_interpreter(_in_process, sizes.scaling_large, events, rounds, frozen))
    pairs = [
        median(big["costs"]) / median(few["costs"]) for big, few in zip(large, small, strict=True)
    ]
    value, baseline = _pooled(large, "costs"), _pooled(small, "costs")
    started_large, started_small = _pooled(large, "with_start"), _pooled(small, "with_start")
    return Metric(
        NAME,
        TITLE,
        value,
        baseline,
        UNIT,
        TARGET,
        value_label=f"{sizes.scaling_large:,} pending",
        baseline_label=f"{sizes.scaling_small:,} pending",
        details={
            "clock": "CPU time of the process: other processes on the machine do not count",
            "processes per size (alternated), rounds each, events a round": (
                f"{processes}, {rounds}, {events}"
            ),
            "ratio": "median over the pairs of processes of their medians' ratio",
            "ratio of the pooled medians": value / baseline,
            "with each waiter's start, large / small, us/event": (
                f"{started_large:.1f} / {started_small:.1f} = {started_large / started_small:.3f}"
            ),
            "collections gen 0/1/2 in the large rounds (waiters' start included), CPU": (
                _collector(large, events * rounds)
            ),
            "the same in the small rounds": _collector(small, events * rounds),
            "large, after gc.freeze() (its last process), us/event": median(large[-1]["frozen"])
            * 1e6,
        },
        paired_ratio=median(pairs),
    )
