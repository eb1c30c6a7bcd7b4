"""
Profiles of the hot paths behind metrics 1, 2 and 4.

Each workload runs twice: under cProfile, summarised here as the top functions by self time
and the SDK's own functions by cumulative time (both as % of the profiled CPU), and under
pyinstrument, whose call tree is written to ``--profile-dir`` as text and HTML.
"""

from __future__ import annotations

import cProfile
import pstats
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from pyinstrument import Profiler

from cobalt_async._client import DEFAULT_LIMITS

from ._common import Sizes
from ._ingest import Exchange, Waiters, deliveries, drive, sdk_app
from ._procs import redis_server, redis_server_binary, simulator
from ._submit import raw_op, run_round, sdk_client, sdk_op
from ._wakeup import inprocess_sdk, redis_samples

Workload = Callable[[Callable[[], Any], Callable[[], Any]], Awaitable[None]]
"""Runs its set-up, calls ``start()``, the hot path, ``stop()``, then cleans up."""

# Time spent waiting for I/O or timers, not computing: left out of the "top" tables.
_IDLE = ("method 'poll' of 'select.epoll'", "method 'select' of", "method 'control' of")
_SDK = "cobalt_async"


def _label(key: tuple[str, int, str]) -> str:
    filename, line, function = key
    if filename == "~":
        return function
    parts = Path(filename).parts
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1 :]
    elif _SDK in parts:
        parts = parts[parts.index(_SDK) :]
    elif "bench" in parts:
        parts = parts[parts.index("bench") :]
    else:
        parts = parts[-2:]
    return f"{'/'.join(parts)}:{line}({function})"


def summarise(profile: cProfile.Profile, top: int = 15) -> str:
    raw: dict[tuple[str, int, str], tuple[Any, ...]] = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    busy = {key: row for key, row in raw.items() if not any(idle in key[2] for idle in _IDLE)}
    total = sum(row[2] for row in busy.values()) or 1e-12
    sdk_self = sum(row[2] for key, row in busy.items() if f"/{_SDK}/" in key[0])
    lines = [
        f"profiled CPU (idle waits excluded): {total:.3f} s; self time in {_SDK}/: "
        f"{100 * sdk_self / total:.1f}%",
        f"  top {top} by self time:",
        "    %self   %cum     calls  function",
    ]
    for key, row in sorted(busy.items(), key=lambda item: -item[1][2])[:top]:
        lines.append(
            f"    {100 * row[2] / total:5.1f}  {100 * row[3] / total:5.1f}  {row[1]:8d}  "
            f"{_label(key)}"
        )
    lines.append(f"  {_SDK} functions by cumulative time:")
    own = [(key, row) for key, row in busy.items() if f"/{_SDK}/" in key[0]]
    for key, row in sorted(own, key=lambda item: -item[1][3])[:top]:
        lines.append(
            f"    {100 * row[2] / total:5.1f}  {100 * row[3] / total:5.1f}  {row[1]:8d}  "
            f"{_label(key)}"
        )
    return "\n".join(lines)


async def _under_cprofile(workload: Workload) -> cProfile.Profile:
    profile = cProfile.Profile()
    await workload(profile.enable, profile.disable)
    return profile


async def _under_pyinstrument(workload: Workload) -> Profiler:
    profiler = Profiler(interval=0.0005, async_mode="disabled")
    await workload(profiler.start, profiler.stop)
    return profiler


# Workloads.


def submit_workload(url: str, requests: int, sdk: bool) -> Workload:
    async def run(start: Callable[[], Any], stop: Callable[[], Any]) -> None:
        async with (
            sdk_client(url) as client,
            httpx.AsyncClient(limits=DEFAULT_LIMITS, timeout=30.0) as http,
        ):
            op = sdk_op(client) if sdk else raw_op(http, url)
            await run_round(op, 200, 32)
            start()
            try:
                await run_round(op, requests, 32)
            finally:
                stop()

    return run


def ingest_workload(events: int) -> Workload:
    items = deliveries(events)

    async def run(start: Callable[[], Any], stop: Callable[[], Any]) -> None:
        app, sink = sdk_app(events)
        waiters = Waiters(sink)  # plain tasks, as the metric has them
        await waiters.start(None, [item.job_id for item in items])
        waiters.expect(len(items))
        start()
        try:
            await drive(app, items, Exchange())
            await waiters.done.wait()
        finally:
            stop()
            await waiters.aclose()

    return run


def wakeup_workload(samples: int) -> Workload:
    async def run(start: Callable[[], Any], stop: Callable[[], Any]) -> None:
        await inprocess_sdk(100)
        start()
        try:
            await inprocess_sdk(samples)
        finally:
            stop()

    return run


def redis_workload(url: str, samples: int) -> Workload:
    import cobalt_async.sinks._redis  # noqa: F401  (imported now, not inside the profile)

    async def run(start: Callable[[], Any], stop: Callable[[], Any]) -> None:
        start()
        try:
            await redis_samples(url, samples)
        finally:
            stop()

    return run


async def _profile(name: str, title: str, workload: Workload, directory: Path) -> str:
    profile = await _under_cprofile(workload)
    profiler = await _under_pyinstrument(workload)
    text = profiler.output_text(unicode=False, color=False, show_all=False)
    (directory / f"{name}.txt").write_text(text)
    (directory / f"{name}.html").write_text(profiler.output_html())
    return f"== profile {name}: {title}\n{summarise(profile)}\n  call tree: {directory / name}.txt"


async def run_profiles(sizes: Sizes, only: set[str], directory: Path | None) -> list[str]:
    directory = directory or Path(tempfile.mkdtemp(prefix="cobalt-bench-profiles-"))
    directory.mkdir(parents=True, exist_ok=True)
    scale = sizes.profile_scale
    reports = []
    if "submit" in only:
        with simulator() as server:
            for sdk in (True, False):
                name = "submit_sdk" if sdk else "submit_raw"
                what = "client.tasks.create" if sdk else "raw httpx POST (the baseline)"
                title = f"{what} x{1000 * scale}, concurrency 32, simulator in another process"
                workload = submit_workload(server.url, 1000 * scale, sdk)
                reports.append(await _profile(name, title, workload, directory))
    if "ingest" in only:
        title = f"WebhookApp, {5000 * scale} deliveries with a waiter each, until all woke"
        reports.append(await _profile("ingest", title, ingest_workload(5000 * scale), directory))
    if "wakeup" in only:
        title = f"{2000 * scale} x (start a handle wait, receive(), resume): the whole wake path"
        reports.append(await _profile("wakeup", title, wakeup_workload(2000 * scale), directory))
    if "wakeup_redis" in only:
        if redis_server_binary() is None:
            reports.append("== profile wakeup_redis: skipped, no redis-server on PATH")
        else:
            with redis_server() as url:
                title = (
                    f"{100 * scale} x 3 cross-process wake-ups, waiting process "
                    "(RedisSink listener, waiters, raw listener)"
                )
                workload = redis_workload(url, 100 * scale)
                reports.append(await _profile("wakeup_redis", title, workload, directory))
    return reports
