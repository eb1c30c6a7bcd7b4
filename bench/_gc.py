"""
Metrics 11-12: what pending handles cost the garbage collector.

Each way of waiting runs in a process of its own, without ``gc.freeze()``, so that a full
collection walks the heap a real server has: its pending waiters and nothing else.
"""

from __future__ import annotations

import gc
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import anyio

from cobalt_async import InMemorySink, wait_all

from ._common import Metric, Sizes, Target, in_fresh_interpreter, offline_client, until
from ._memory import Starter, start_events, start_handles

OBJECTS_TARGET = Target("value", "<=", 2)
PAUSE_TARGET = Target("ratio", "<=", 1.1)
COLLECTIONS = 3


async def start_wait_all(
    job_ids: Sequence[str], task_group: anyio.abc.TaskGroup
) -> Callable[[], None]:
    """One ``wait_all`` over a handle per job, from one task."""
    sink = InMemorySink()
    client = offline_client(sink)
    opened = anyio.Event()

    async def hold_open() -> None:
        async with client:
            opened.set()
            await anyio.sleep_forever()

    task_group.start_soon(hold_open)
    await opened.wait()
    handles = [client.jobs.attach(job_id, "task") for job_id in job_ids]
    task_group.start_soon(wait_all, handles)
    await until(lambda: sink.stats().pending == len(job_ids), interval=0.01, timeout=600)
    return task_group.cancel_scope.cancel


WAYS: dict[str, Starter] = {
    "event": start_events,
    "handle": start_handles,
    "wait_all": start_wait_all,
}


def _census(types: bool) -> Counter[str]:
    """Tracked objects by type name (or all under one name: much faster at millions)."""
    if types:
        return Counter(type(found).__name__ for found in gc.get_objects())
    return Counter({"object": len(gc.get_objects())})


def _least_pause() -> float:
    """The least of a few full collections: a shared machine's noise only adds to a pause."""
    pauses = []
    for _ in range(COLLECTIONS):
        started = time.perf_counter()
        gc.collect()
        pauses.append(time.perf_counter() - started)
    return min(pauses)


async def _pending(way: str, count: int, types: bool, frozen: bool) -> dict[str, Any]:
    """
    Tracked objects and full-collection pauses with *count* waiters of *way* pending; if
    *frozen*, the pause again after ``gc.freeze()``, as a service would call it after start-up.
    """
    job_ids = [str(30_000_000 + index) for index in range(count)]
    found: dict[str, Any] = {}
    async with anyio.create_task_group() as task_group:
        gc.collect()
        before = _census(types)
        release = await WAYS[way](job_ids, task_group)
        gc.collect()
        during = _census(types)
        found["pause"] = _least_pause()
        if frozen:
            gc.freeze()
            try:
                found["frozen_pause"] = _least_pause()
            finally:
                gc.unfreeze()
        release()
    added = during - before
    found["objects"] = sum(added.values()) / count
    found["types"] = {name: n / count for name, n in added.items() if n >= count / 2}
    found["heap"] = sum(during.values())
    return found


def _measure_in_process(way: str, count: int, types: bool, frozen: bool) -> dict[str, Any]:
    return anyio.run(_pending, way, count, types, frozen, backend="asyncio")


def _isolated(way: str, count: int, *, types: bool = True) -> dict[str, Any]:
    """:func:`_pending` in a fresh interpreter: a heap of that way's waiters only."""
    return in_fresh_interpreter(_measure_in_process, way, count, types, way == "handle")


async def measure(sizes: Sizes) -> list[Metric]:
    count = sizes.gc_pending
    found = {way: _isolated(way, count) for way in WAYS}
    # The pair once more, alternated: a pause is wall time, and another process's burst
    # inflates a whole run. The least of each way's pauses is kept.
    for way in ("event", "handle"):
        again = _isolated(way, count, types=False)
        for key in {"pause", "frozen_pause"} & again.keys():
            found[way][key] = min(found[way][key], again[key])
    event, handle, together = found["event"], found["handle"], found["wait_all"]
    net_types = {
        name: handle["types"].get(name, 0) - event["types"].get(name, 0)
        for name in {*handle["types"], *event["types"]}
    }
    differing = {
        f"net {name} per handle": round(number, 2)
        for name, number in sorted(net_types.items(), key=lambda item: -abs(item[1]))
        if abs(number) >= 0.5
    }
    objects = Metric(
        "gc_objects_per_handle",
        "GC-tracked objects per pending handle awaited in a task, net of a task awaiting a "
        "bare anyio.Event",
        handle["objects"] - event["objects"],
        event["objects"],
        "objects/handle",
        OBJECTS_TARGET,
        value_label="SDK objects per handle (net)",
        baseline_label="task awaiting anyio.Event",
        details={
            "pending handles, each way in its own process": count,
            "absolute per handle, task included": handle["objects"],
            "wait_all over the handles, per handle (handle included)": together["objects"],
            **differing,
        },
    )
    pause = Metric(
        "gc_pause",
        f"full gc.collect() with {count:,} pending handles, each in a task, no gc.freeze()",
        handle["pause"],
        event["pause"],
        "s",
        PAUSE_TARGET,
        value_label="awaited handles",
        baseline_label="tasks awaiting anyio.Event",
        details={
            "least of full collections, over two processes per way": COLLECTIONS * 2,
            "tracked objects in the heap, handles": handle["heap"],
            "tracked objects in the heap, baseline": event["heap"],
            "the same handles in one wait_all, s": together["pause"],
            "handles, after gc.freeze() once all are pending, s": handle["frozen_pause"],
        },
    )
    return [objects, pause]
