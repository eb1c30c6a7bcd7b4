"""Metrics 8-10: ``wait_all`` and ``as_completed`` over many handles, vs a task per handle."""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import anyio

from cobalt_async import CobaltClient, InMemorySink, JobHandle, as_completed, wait_all
from cobalt_async.models import parse_event
from cobalt_async.testing import make_task_created_event

from ._common import NO_POLL, Metric, Sizes, Target, median, offline_client, until

CPU_TARGET = Target("ratio", "<=", 0.2)
MEMORY_TARGET = Target("value", "<=", 512)

Waiter = Callable[[Sequence[JobHandle[Any]]], Coroutine[Any, Any, object]]


async def _gather(handles: Sequence[JobHandle[Any]]) -> object:
    """The baseline: a task per handle, ``asyncio.gather(*(h.wait() for h in handles))``."""
    return await asyncio.gather(*(handle.wait() for handle in handles))


async def _wait_all(handles: Sequence[JobHandle[Any]]) -> object:
    return await wait_all(handles)


async def _as_completed(handles: Sequence[JobHandle[Any]]) -> object:
    async with as_completed(handles) as finished:
        return [handle async for handle in finished]


WAYS: dict[str, Waiter] = {"gather": _gather, "wait_all": _wait_all, "as_completed": _as_completed}


def _events(count: int) -> list[Any]:
    """Parsed ``task.created`` events (``JobEvent``), one per job."""
    return [parse_event(make_task_created_event(job_id=str(20_000_000 + n))) for n in range(count)]


def _client(sink: InMemorySink) -> CobaltClient:
    # No job timeout: ``h.wait()`` then waits as wait_all(handles) does, without a deadline.
    return offline_client(sink, poll=NO_POLL, job_timeout=None)


async def _round(way: Waiter, events: Sequence[Any]) -> float:
    """
    CPU seconds of one wait over ``len(events)`` handles, from its start to its end.

    Half the outcomes are stored before the wait starts (webhooks that beat it: found by
    its store read), half arrive while it waits; publishing them is counted for every way
    alike.
    """
    sink = InMemorySink(max_outcomes=len(events))
    early, late = events[: len(events) // 2], events[len(events) // 2 :]
    async with _client(sink) as client, anyio.create_task_group() as task_group:
        handles = [client.jobs.attach(str(event.job_id), "task") for event in events]
        for event in early:
            await sink.publish(event)
        done = anyio.Event()

        async def wait() -> None:
            await way(handles)
            done.set()

        gc.collect()
        started = time.process_time()
        task_group.start_soon(wait)
        await until(lambda: sink.stats().pending == len(late), interval=0.01, timeout=600)
        for event in late:
            await sink.publish(event)
        await done.wait()
        elapsed = time.process_time() - started
    if not all(handle.done() for handle in handles):
        raise RuntimeError("a wait returned before every handle resolved")
    return elapsed


async def _bytes_per_handle(way: Waiter, events: Sequence[Any]) -> float:
    """tracemalloc bytes per handle while the wait is pending, the handles not counted."""
    sink = InMemorySink(max_outcomes=len(events))
    async with _client(sink) as client, anyio.create_task_group() as task_group:
        handles = [client.jobs.attach(str(event.job_id), "task") for event in events]
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            task_group.start_soon(way, handles)
            await until(lambda: sink.stats().pending == len(handles), interval=0.01, timeout=600)
            await anyio.sleep(0.01)  # past the store read: every wait sleeps
            gc.collect()
            during = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        for event in events:
            await sink.publish(event)
    return (during - before) / len(events)


async def measure(sizes: Sizes) -> list[Metric]:
    count, rounds = sizes.waits_handles, sizes.waits_rounds
    events = _events(count)
    await _round(_wait_all, events[:200])  # warm-up
    cpu: dict[str, list[float]] = {name: [] for name in WAYS}
    for index in range(rounds):
        names = list(WAYS)[index % len(WAYS) :] + list(WAYS)[: index % len(WAYS)]
        for name in names:
            cpu[name].append(await _round(WAYS[name], events))
    memory = {name: await _bytes_per_handle(WAYS[name], events) for name in WAYS}
    base = median(cpu["gather"])
    details = {
        "handles": count,
        "clock": "CPU time of this process, outcomes' publishing included for every way",
        "paired rounds (order rotated)": rounds,
        "asyncio.gather CPU s": base,
    }
    metrics = []
    for name in ("wait_all", "as_completed"):
        pairs = [mine / theirs for mine, theirs in zip(cpu[name], cpu["gather"], strict=True)]
        metrics.append(
            Metric(
                f"{name}_cpu",
                f"CPU of {name}() over {count:,} handles vs asyncio.gather(h.wait() ...)",
                median(cpu[name]),
                base,
                "s",
                CPU_TARGET,
                value_label=name,
                baseline_label="asyncio.gather, a task per handle",
                details={**details, f"{name} CPU s": median(cpu[name])},
                paired_ratio=median(pairs),
            )
        )
    metrics.append(
        Metric(
            "wait_all_memory",
            f"bytes per handle while wait_all() waits for {count:,}, the handles not counted",
            memory["wait_all"],
            memory["gather"],
            "B/handle",
            MEMORY_TARGET,
            value_label="wait_all",
            baseline_label="asyncio.gather, a task per handle",
            details={"handles": count, "as_completed B/handle": memory["as_completed"]},
        )
    )
    return metrics
