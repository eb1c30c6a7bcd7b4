"""Metric 2: webhook ingestion through ``WebhookApp``, driven by direct ASGI calls."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from cobalt_async import CobaltClient, InMemorySink, WebhookReceiver
from cobalt_async._outcome import Outcome
from cobalt_async._signing import _Key
from cobalt_async._types import ASGIApp, Message, Scope
from cobalt_async.asgi import WebhookApp
from cobalt_async.models._events import _validate_job_event_json as validate_job_event_json
from cobalt_async.testing import make_task_created_event, signed_delivery

from ._common import WEBHOOK_SECRET, Metric, Sizes, Target, gc_settled, median, until

NAME = "webhook_ingest"
TITLE = "WebhookApp (verify, parse, dedup, store, wake a waiter) vs HMAC + json.loads app"
TARGET = Target("ratio", ">=", 0.90)
WORN_TARGET = Target("ratio", ">=", 0.85)
UNIT = "events/s"

# Headers as uvicorn hands them over for one of Cobalt's deliveries.
_TRANSPORT_HEADERS = [
    (b"host", b"127.0.0.1:8000"),
    (b"user-agent", b"axios/1.6.8"),
    (b"accept", b"application/json, text/plain, */*"),
    (b"accept-encoding", b"gzip, compress, deflate, br"),
    (b"connection", b"keep-alive"),
]


@dataclass(frozen=True, slots=True)
class Delivery:
    job_id: str
    body: bytes
    scope: Scope


def deliveries(count: int, first_job: int = 1_000_000) -> list[Delivery]:
    """Signed ``task.created`` deliveries for consecutive job ids, with their ASGI scopes."""
    made = []
    for number in range(first_job, first_job + count):
        event = make_task_created_event(
            job_id=str(number),
            event_id=f"evt_{number:024x}",
            task_id=f"{number:024x}",
            emr_task_id=f"00000000-0000-4000-8000-{number:012x}",
            created="2025-01-01T00:00:00.000Z",
        )
        body, headers = signed_delivery(event, WEBHOOK_SECRET)
        raw = [(name.encode(), value.encode()) for name, value in headers.items()]
        raw_headers = [*_TRANSPORT_HEADERS, (b"content-length", str(len(body)).encode()), *raw]
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/webhooks/cobalt",
            "raw_path": b"/webhooks/cobalt",
            "query_string": b"",
            "root_path": "",
            "headers": raw_headers,
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
        }
        made.append(Delivery(str(number), body, scope))
    return made


class Exchange:
    """One reusable request/response channel for direct ASGI calls."""

    __slots__ = ("message", "statuses")

    def __init__(self) -> None:
        self.message: Message = {}
        self.statuses: dict[int, int] = {}

    async def receive(self) -> Message:
        return self.message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            status = message["status"]
            self.statuses[status] = self.statuses.get(status, 0) + 1


async def drive(app: ASGIApp, items: Sequence[Delivery], exchange: Exchange) -> None:
    """Call *app* once per delivery, as a server would, yielding to the loop in between."""
    for item in items:
        exchange.message = {"type": "http.request", "body": item.body, "more_body": False}
        await app(item.scope, exchange.receive, exchange.send)
        await anyio.lowlevel.checkpoint()


def minimal_app(secret: str) -> ASGIApp:
    """The least a webhook endpoint can do: check the HMAC, ``json.loads``, answer 200."""
    key = secret.encode()

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        message = await receive()
        body: bytes = message.get("body", b"")
        signature = b""
        for name, value in scope["headers"]:
            if name == b"cobalt-verification":
                signature = value
                break
        expected = hmac.new(key, body, hashlib.sha256).hexdigest().encode()
        status = 401
        if hmac.compare_digest(expected, signature):
            json.loads(body)
            status = 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b'{"status":"accepted"}'})

    return app


def floor_app(sink: InMemorySink | None, secret: str) -> ASGIApp:
    """
    The least the SDK's own parts can do: its HMAC and its model validation, the outcome put
    straight into the sink's dict and the waiting slot settled, a pre-built answer. No dedup,
    conflict check, receipt, telemetry or layers: what no rework of the receiver could beat.

    With no *sink*, the event is dropped once parsed: a webhook endpoint that stores nothing
    and wakes nobody, which the baseline is.
    """
    key = _Key(secret.encode())
    start = {"type": "http.response.start", "status": 200, "headers": [], "trailers": False}
    answer = {"type": "http.response.body", "body": b'{"status":"accepted"}'}

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        signature = dict(scope["headers"]).get(b"cobalt-verification", b"")
        body: bytes = (await receive())["body"]
        if not hmac.compare_digest(key.hexdigest(body), signature):
            raise RuntimeError("the floor app could not verify a delivery")
        event = validate_job_event_json(body)
        if sink is not None:
            outcome = Outcome(event, "webhook")
            sink._outcomes[event.job_id] = (outcome, math.inf)
            slot = sink._correlator._slots.get(event.job_id)
            if slot is not None:
                slot.resolve(event.job_id, outcome)
        await send({**start})
        await send(answer)

    return app


class Waiters:
    """
    One task per job awaiting ``sink.wait_for`` (or a handle); counts those that woke.

    Without a task group, each waiter is a plain asyncio task, as the request handlers of
    an ASGI server are. An anyio task group adds its own per-task bookkeeping (a task
    handle, a cancel scope, a done callback), which ``measure`` reports on its own line.
    """

    def __init__(self, sink: InMemorySink, client: CobaltClient | None = None) -> None:
        self.sink = sink
        self.client = client
        self.woken = 0
        self.target = 0
        self.done = anyio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def expect(self, count: int) -> None:
        self.woken, self.target, self.done = 0, count, anyio.Event()

    async def wait_one(self, job_id: str) -> None:
        if self.client is None:
            await self.sink.wait_for(job_id, timeout=None)
        else:
            await self.client.jobs.attach(job_id, "task").wait(timeout=None)
        self.woken += 1
        if self.woken >= self.target:
            self.done.set()

    async def start(self, task_group: TaskGroup | None, job_ids: Sequence[str]) -> None:
        """Start a waiter per job id; return once all of them are registered."""
        wanted = self.sink.stats().pending + len(job_ids)
        for job_id in job_ids:
            if task_group is None:
                self._tasks.append(asyncio.create_task(self.wait_one(job_id)))
            else:
                task_group.start_soon(self.wait_one, job_id)
        await until(lambda: self.sink.stats().pending >= wanted, timeout=600)

    async def aclose(self) -> None:
        """Cancel the plain tasks still waiting, and let them finish."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def sdk_app(max_outcomes: int) -> tuple[WebhookApp, InMemorySink]:
    sink = InMemorySink(max_outcomes=max(max_outcomes, 10_000))
    receiver = WebhookReceiver(sink, secrets=[WEBHOOK_SECRET])
    return WebhookApp(receiver), sink


async def sdk_round(
    items: Sequence[Delivery], *, task_group_waiters: bool = False, floor: bool = False
) -> float:
    """
    Seconds to ingest *items* with a waiter pending per job, until every waiter ran: through
    ``WebhookApp``, or through :func:`floor_app` on the same sink.
    """
    webhook_app, sink = sdk_app(len(items))
    app: ASGIApp = floor_app(sink, WEBHOOK_SECRET) if floor else webhook_app
    waiters = Waiters(sink)
    exchange = Exchange()
    async with anyio.create_task_group() as task_group:
        await waiters.start(task_group if task_group_waiters else None, [i.job_id for i in items])
        waiters.expect(len(items))
        with gc_settled():
            started = time.process_time()
            await drive(app, items, exchange)
            await waiters.done.wait()
            elapsed = time.process_time() - started
    await waiters.aclose()
    if exchange.statuses != {200: len(items)}:
        raise RuntimeError(f"unexpected answers from the app: {exchange.statuses}")
    return elapsed


async def alone_round(
    items: Sequence[Delivery], *, through: Literal["app", "receive", "floor", "dropped"]
) -> float:
    """
    Seconds to ingest *items* with no waiter: through WebhookApp (``"app"``), ``receive()``
    itself (``"receive"``), :func:`floor_app` on the same sink (``"floor"``), or with none
    (``"dropped"``).
    """
    webhook_app, sink = sdk_app(len(items))
    app: ASGIApp = webhook_app
    if through in ("floor", "dropped"):
        app = floor_app(sink if through == "floor" else None, WEBHOOK_SECRET)
    exchange = Exchange()
    with gc_settled():
        started = time.process_time()
        if through == "receive":
            for item in items:
                await webhook_app.receiver.receive(item.body, item.scope["headers"])
                await anyio.lowlevel.checkpoint()
        else:
            await drive(app, items, exchange)
        return time.process_time() - started


async def baseline_round(items: Sequence[Delivery]) -> float:
    app = minimal_app(WEBHOOK_SECRET)
    exchange = Exchange()
    with gc_settled():
        started = time.process_time()
        await drive(app, items, exchange)
        elapsed = time.process_time() - started
    if exchange.statuses != {200: len(items)}:
        raise RuntimeError(f"unexpected answers from the minimal app: {exchange.statuses}")
    return elapsed


async def _per_event(
    runs: dict[str, Callable[[], Awaitable[float]]], rounds: int, events: int
) -> dict[str, list[float]]:
    """Seconds per event of each run, over *rounds* rounds in alternating order."""
    per_event: dict[str, list[float]] = {name: [] for name in runs}
    for index in range(rounds):
        names = list(runs) if index % 2 == 0 else list(reversed(runs))
        for name in names:
            per_event[name].append(await runs[name]() / events)
    return per_event


async def measure(sizes: Sizes) -> list[Metric]:
    items = deliveries(sizes.ingest_events)
    await sdk_round(items[:200])  # warm-up: pydantic, hmac, the loop
    await baseline_round(items[:200])
    headline: dict[str, Callable[[], Awaitable[float]]] = {
        "sdk": lambda: sdk_round(items),
        "raw": lambda: baseline_round(items),
    }
    informational: dict[str, Callable[[], Awaitable[float]]] = {
        "grouped": lambda: sdk_round(items, task_group_waiters=True),
        "app": lambda: alone_round(items, through="app"),
        "receive": lambda: alone_round(items, through="receive"),
        "floor": lambda: sdk_round(items, floor=True),
        "floor alone": lambda: alone_round(items, through="floor"),
        "dropped": lambda: alone_round(items, through="dropped"),
    }
    # The pair that makes the ratio first, on its own: the other rounds leave a heap of
    # freed objects (an anyio task group's bookkeeping per waiter) that cost the SDK rounds
    # after them about 1.5%, and the ratio about 0.015: the harness's cost, not either side's.
    per_event = await _per_event(headline, sizes.ingest_rounds, len(items))
    per_event.update(await _per_event(informational, sizes.ingest_rounds, len(items)))
    sdk, raw = per_event["sdk"], per_event["raw"]
    with fragmented_heap(groups=200 * len(items)):
        worn = await _per_event(headline, sizes.ingest_rounds, len(items))
    us = {name: median(values) * 1e6 for name, values in per_event.items()}
    ingestion = Metric(
        NAME,
        TITLE,
        1 / median(sdk),
        1 / median(raw),
        UNIT,
        TARGET,
        value_label="WebhookApp",
        baseline_label="HMAC+json.loads app",
        details={
            "clock": "CPU time of this process: other processes on the machine do not count",
            "events per round": len(items),
            "paired rounds (order alternated)": sizes.ingest_rounds,
            "SDK us/event (WebhookApp, a waiter task per job)": us["sdk"],
            "same, waiters in an anyio task group, us/event": us["grouped"],
            "WebhookApp, no waiter, us/event": us["app"],
            "receive() called directly, no waiter, us/event": us["receive"],
            "the SDK's parts alone (floor_app), a waiter task per job, us/event": us["floor"],
            "baseline us/event": us["raw"],
            "floor_app's ratio, of medians": median(raw) / median(per_event["floor"]),
            "floor_app, no waiter, us/event": us["floor alone"],
            "floor_app storing nothing (the event dropped once parsed), no waiter, us/event": us[
                "dropped"
            ],
            "floor_app storing nothing: its ratio, of medians": median(raw)
            / median(per_event["dropped"]),
            "ratio of medians": median(raw) / median(sdk),
        },
        paired_ratio=_paired(sdk, raw),
    )
    fragmented = Metric(
        f"{NAME}_fragmented",
        "the same on a fragmented heap (a long-running server's): small objects of mixed "
        "sizes, four in five freed",
        1 / median(worn["sdk"]),
        1 / median(worn["raw"]),
        UNIT,
        WORN_TARGET,
        value_label="WebhookApp",
        baseline_label="HMAC+json.loads app",
        details={"groups of objects built, one in five kept": 200 * len(items)},
        paired_ratio=_paired(worn["sdk"], worn["raw"]),
    )
    return [ingestion, fragmented]


def _paired(sdk: Sequence[float], raw: Sequence[float]) -> float:
    """The median of per-round ratios, baseline time over SDK time."""
    return median([theirs / mine for mine, theirs in zip(sdk, raw, strict=True)])


@contextmanager
def fragmented_heap(groups: int) -> Iterator[None]:
    """
    A heap like a long-running process's: small objects of mixed sizes, four in five freed.

    New allocations then land on scattered free blocks rather than fresh, contiguous ones;
    the SDK, which keeps every outcome it stores, feels that more than the baseline. The
    kept fifth stays tracked by the garbage collector, as a server's live objects are.
    """
    made = [
        [{"n": n, "s": str(n)}, (n, n + 1), [n] * (n % 7), "x" * (n % 300)] for n in range(groups)
    ]
    kept = made[::5]
    del made
    try:
        yield
    finally:
        del kept
