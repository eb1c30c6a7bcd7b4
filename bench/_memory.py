"""
Metric 3: memory per pending handle (tracemalloc), net of a task awaiting a bare Event; and
per handle against a naive dict-of-futures correlator awaited the same way.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections.abc import Awaitable, Callable, Sequence

import anyio

from cobalt_async import InMemorySink

from ._common import Metric, Sizes, Target, offline_client, until

NAME = "memory_per_handle"
TITLE = "bytes per pending handle awaited in a task, net of a task awaiting a bare anyio.Event"
TARGET = Target("value", "<=", 1024)
UNIT = "B/handle"

Starter = Callable[[Sequence[str], anyio.abc.TaskGroup], Awaitable[Callable[[], None]]]


async def _traced(count: int, start: Starter) -> float:
    """Bytes per waiter that *start* leaves allocated while its waiters are all pending."""
    job_ids = [str(10_000_000 + index) for index in range(count)]  # before: not counted
    async with anyio.create_task_group() as task_group:
        gc.collect()
        # Collections would only slow the set-up down: everything stays reachable anyway.
        gc.disable()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            release = await start(job_ids, task_group)
            gc.collect()
            during = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
            gc.enable()
        release()
    return (during - before) / count


async def start_events(
    job_ids: Sequence[str], task_group: anyio.abc.TaskGroup
) -> Callable[[], None]:
    """The baseline: one task per job awaiting its own ``anyio.Event``."""
    events: list[anyio.Event] = []
    parked = 0

    async def park(event: anyio.Event) -> None:
        nonlocal parked
        parked += 1
        await event.wait()

    for _ in job_ids:
        event = anyio.Event()
        events.append(event)
        task_group.start_soon(park, event)
    await until(lambda: parked == len(job_ids), interval=0.005, timeout=600)
    await anyio.sleep(0.01)  # every task is past its first step and parked in wait()

    def release() -> None:
        for event in events:
            event.set()

    return release


async def start_handles(
    job_ids: Sequence[str], task_group: anyio.abc.TaskGroup
) -> Callable[[], None]:
    """
    The SDK as users run it: an open client (``async with``), one ``JobHandle`` per job
    awaited with ``await handle`` (the default 180 s timeout and backstop timer) in its own task.
    """
    sink = InMemorySink()
    # The default policy: the first backstop poll is 60 s away, past the measurement.
    client = offline_client(sink)
    opened = anyio.Event()

    async def hold_open() -> None:
        async with client:
            opened.set()
            await anyio.sleep_forever()

    async def park(job_id: str) -> None:
        await client.jobs.attach(job_id, "task")

    task_group.start_soon(hold_open)
    await opened.wait()
    for job_id in job_ids:
        task_group.start_soon(park, job_id)
    await until(lambda: sink.stats().pending == len(job_ids), interval=0.005, timeout=600)
    await anyio.sleep(0.01)  # every waiter has read the store and sleeps
    return task_group.cancel_scope.cancel


async def start_correlator(
    job_ids: Sequence[str], task_group: anyio.abc.TaskGroup
) -> Callable[[], None]:
    """
    The correlator a user would write by hand: a ``dict`` of futures keyed by job id, one
    task per job awaiting its own. No timeout, no backstop, no store: the least that works.
    """
    loop = asyncio.get_running_loop()
    futures: dict[str, asyncio.Future[object]] = {}
    parked = 0

    async def park(job_id: str) -> None:
        nonlocal parked
        parked += 1
        await futures[job_id]

    for job_id in job_ids:
        futures[job_id] = loop.create_future()
        task_group.start_soon(park, job_id)
    await until(lambda: parked == len(job_ids), interval=0.005, timeout=600)
    await anyio.sleep(0.01)  # every task is past its first step and parked on its future
    return task_group.cancel_scope.cancel


async def start_sink_waits(
    job_ids: Sequence[str], task_group: anyio.abc.TaskGroup
) -> Callable[[], None]:
    """The sink alone: ``sink.wait_for(job_id, timeout=None)`` in a task per job."""
    sink = InMemorySink()

    async def park(job_id: str) -> None:
        await sink.wait_for(job_id, timeout=None)

    for job_id in job_ids:
        task_group.start_soon(park, job_id)
    await until(lambda: sink.stats().pending == len(job_ids), interval=0.005, timeout=600)
    await anyio.sleep(0.01)
    return task_group.cancel_scope.cancel


async def measure(sizes: Sizes) -> Metric:
    count = sizes.memory_handles
    baseline = await _traced(count, start_events)
    handles = await _traced(count, start_handles)
    sink_only = await _traced(count, start_sink_waits)
    return Metric(
        NAME,
        TITLE,
        handles - baseline,
        baseline,
        UNIT,
        TARGET,
        value_label="SDK structures per handle (net)",
        baseline_label="task awaiting anyio.Event",
        details={
            "pending handles": count,
            "absolute per handle, task included": handles,
            "sink.wait_for alone, net of baseline": sink_only - baseline,
            "sink.wait_for alone, task included": sink_only,
        },
    )


CORRELATOR_NAME = "memory_vs_correlator"
CORRELATOR_TITLE = (
    "bytes per pending handle awaited in a task vs a dict of futures awaited the same way, "
    "tasks included"
)
CORRELATOR_TARGET = Target("ratio", "<=", 1.5)


async def measure_correlator(sizes: Sizes) -> Metric:
    count = sizes.memory_handles
    correlator = await _traced(count, start_correlator)
    handles = await _traced(count, start_handles)
    return Metric(
        CORRELATOR_NAME,
        CORRELATOR_TITLE,
        handles,
        correlator,
        UNIT,
        CORRELATOR_TARGET,
        value_label="awaited handle, open client, task included",
        baseline_label="dict[str, Future] entry, task included",
        details={
            "pending handles (and futures)": count,
            "SDK minus correlator": handles - correlator,
        },
    )
