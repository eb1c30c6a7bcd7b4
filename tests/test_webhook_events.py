"""
``client.webhook_events.iter()`` over every page and ``replay()`` through a real receiver,
against FakeCobalt: over real HTTP (uvicorn) on asyncio, in-process on trio.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any

import anyio
import pytest

from cobalt_async import (
    CobaltClient,
    Event,
    InMemorySink,
    JobFailedError,
    JobHandle,
    JobStatus,
    SinkUnavailableError,
    TaskCreatedEvent,
    WebhookReceiver,
)
from cobalt_async._reconcile import created_at
from cobalt_async._servers import serve
from cobalt_async.asgi import WebhookApp
from cobalt_async.models import parse_event
from cobalt_async.testing import (
    FakeCobalt,
    make_task_created_event,
    make_task_failed_event,
)
from tests.support import QUIET, StubCobalt, UnavailableSink, free_port, make_client

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

SECRET = "whsec_test"
LIMIT = 20.0


@asynccontextmanager
async def cobalt(
    fake: FakeCobalt, backend: str, *, sink: InMemorySink | None = None
) -> AsyncIterator[CobaltClient]:
    """A client of *fake*: over a loopback socket on asyncio (uvicorn), in-process on trio."""
    async with fake:
        if backend == "asyncio":
            async with serve(fake) as url, client_of(fake, url, sink) as client:
                yield client
        else:
            async with client_of(fake, None, sink) as client:
                yield client


def client_of(fake: FakeCobalt, url: str | None, sink: InMemorySink | None) -> CobaltClient:
    """A client of *fake* served at *url*, or in-process when *url* is None."""
    return CobaltClient(
        client_id=fake.client_id,
        client_secret=fake.client_secret,
        access_token=fake.access_token,
        base_url=fake.base_url if url is None else url + "/v1",
        transport=fake.transport if url is None else None,
        sink=sink,
        poll=QUIET,
        job_timeout=LIMIT,
    )


def listing_requests(lines: list[str]) -> int:
    return sum(line.startswith("GET /v1/webhook-events") for line in lines)


async def create_tasks(client: CobaltClient, count: int) -> list[JobHandle[TaskCreatedEvent]]:
    return [
        await client.tasks.create(patient_mrn="MRN-1", description="Call back")
        for _ in range(count)
    ]


class TestIter:
    async def test_it_walks_every_page_and_stops_at_the_last(self, anyio_backend: str) -> None:
        """25 events in pages of 10: three requests, every event once, typed as list() has them."""
        lines: list[str] = []
        fake = FakeCobalt(latency=0.0, on_log=lines.append)
        with anyio.fail_after(LIMIT):
            async with cobalt(fake, anyio_backend) as client:
                handles = await create_tasks(client, 25)
                await fake.drain()
                before = listing_requests(lines)
                walked = [event async for event in client.webhook_events.iter(page_size=10)]
                requests = listing_requests(lines) - before
                oldest_first = [
                    event.id
                    async for event in client.webhook_events.iter(sort="created_at", page_size=7)
                ]

        assert 3 == requests
        assert [event["id"] for event in reversed(fake.events)] == [event.id for event in walked]
        assert [event["id"] for event in fake.events] == oldest_first
        assert all(isinstance(event, TaskCreatedEvent) for event in walked)
        assert sorted(handle.job_id for handle in handles) == sorted(
            str(event.job_id) for event in walked
        )
        emr_task_ids = {event["data"]["emr_task_id"] for event in fake.events}
        assert emr_task_ids == {event.data.emr_task_id for event in walked}  # type: ignore[union-attr]

    async def test_the_older_record_shape_walks_alike(self, anyio_backend: str) -> None:
        """Items named id/type/created (the older API) come out as the same typed events."""
        fake = FakeCobalt(latency=0.0, record_shape="old")
        with anyio.fail_after(LIMIT):
            async with cobalt(fake, anyio_backend) as client:
                await create_tasks(client, 3)
                await fake.drain()
                walked = [event async for event in client.webhook_events.iter(page_size=2)]

        assert [event["id"] for event in reversed(fake.events)] == [event.id for event in walked]
        assert all(isinstance(event, TaskCreatedEvent) for event in walked)

    async def test_filters_select_at_the_server(self, anyio_backend: str) -> None:
        """job_id and event_type reach FakeCobalt, which filters as Cobalt documents."""
        fake = FakeCobalt(latency=0.0, failure_rate=0.5, seed=3)
        with anyio.fail_after(LIMIT):
            async with cobalt(fake, anyio_backend) as client:
                handles = await create_tasks(client, 8)
                await fake.drain()
                (one,) = [e async for e in client.webhook_events.iter(job_id=handles[2].job_id)]
                failed = [e async for e in client.webhook_events.iter(event_type="task.failed")]
                none = [e async for e in client.webhook_events.iter(job_id="no-such-job")]

        assert handles[2].job_id == one.job_id
        expected = sorted(fake.expected_failures)
        assert 0 < len(expected) < 8
        assert expected == sorted(str(event.job_id) for event in failed)
        assert [] == none

    async def test_an_event_pushed_onto_the_next_page_comes_once(self, anyio_backend: str) -> None:
        """A job finishing mid-walk moves every event down one place: none is yielded twice."""
        fake = FakeCobalt(latency=0.0)
        with anyio.fail_after(LIMIT):
            async with cobalt(fake, anyio_backend) as client:
                await create_tasks(client, 5)
                await fake.drain()
                known = [event["id"] for event in reversed(fake.events)]
                walk = client.webhook_events.iter(page_size=2)
                walked = [(await anext(walk)).id]  # page 1 read
                await create_tasks(client, 1)
                await fake.drain()  # now newest first: new, 5, 4 | 3, 2 | 1
                walked += [event.id async for event in walk]

        assert known == walked

    async def test_pages_carry_the_records_as_cobalt_sent_them(self, anyio_backend: str) -> None:
        """Beside the typed events, each page keeps its items, delivery status included."""
        fake = FakeCobalt(latency=0.0)  # no webhook registered: every delivery "failed"
        with anyio.fail_after(LIMIT):
            async with cobalt(fake, anyio_backend) as client:
                await create_tasks(client, 3)
                await fake.drain()
                pages = [page async for page in client.webhook_events.pages(page_size=2)]

        assert [2, 1] == [len(page.records) for page in pages]
        assert {"failed"} == {record["delivery_status"] for p in pages for record in p.records}
        assert [1, 2] == [page.pagination.current_page for page in pages]


class TestReplay:
    async def test_replaying_twice_through_a_real_receiver_resolves_nothing_twice(
        self, anyio_backend: str
    ) -> None:
        """Waiting handles resolve from the first replay; the second only counts duplicates."""
        hooked: list[Event] = []
        sink = InMemorySink()
        receiver = WebhookReceiver(sink, secrets=[SECRET], on_event=hooked.append)
        fake = FakeCobalt(latency=0.0, failure_rate=0.25, seed=7)  # no webhook: nothing delivered
        since = datetime.now(UTC) - timedelta(seconds=5)
        with anyio.fail_after(LIMIT):
            async with cobalt(fake, anyio_backend, sink=sink) as client:
                handles = await create_tasks(client, 12)
                await fake.drain()
                assert not any(handle.done() for handle in handles)
                first = await client.webhook_events.replay(since=since, into=receiver)
                for handle in handles:
                    with contextlib.suppress(JobFailedError):
                        await handle.wait(timeout=LIMIT)
                second = await client.webhook_events.replay(since=since, into=receiver)

        assert (12, 0, 12) == (first.replayed, first.duplicates, first.read)
        assert (0, 12, 0) == (second.replayed, second.duplicates, second.conflicts)
        assert 12 == len(hooked)
        assert {"poll"} == {handle.resolved_via for handle in handles}
        assert first.newest == datetime.fromtimestamp(max_created(fake), UTC)
        failed = {handle.job_id for handle in handles if handle.status is JobStatus.FAILED}
        assert (True, fake.expected_failures) == (all(h.done() for h in handles), failed)

    async def test_the_window_is_applied_to_the_events_times(self, anyio_backend: str) -> None:
        """Only events created from *since* to *until* are fed; the days around are only read."""
        fake = FakeCobalt(latency=0.01)
        sink = InMemorySink()
        receiver = WebhookReceiver(sink, secrets=[SECRET])
        with anyio.fail_after(LIMIT):
            async with cobalt(fake, anyio_backend, sink=sink) as client:
                await create_tasks(client, 3)
                await fake.drain()
                # Every later job is accepted after this and takes its 10 ms latency.
                mark = datetime.fromtimestamp(max_created(fake), UTC) + timedelta(milliseconds=1)
                late = await create_tasks(client, 2)
                await fake.drain()
                after = await client.webhook_events.replay(since=mark, into=receiver)
                before = await client.webhook_events.replay(
                    since=today() - timedelta(days=1), until=mark, into=receiver
                )

        assert (2, 0) == (after.replayed, after.duplicates)
        assert (3, 0) == (before.replayed, before.duplicates)
        assert {handle.job_id for handle in late} == set(
            (await sink.get_outcomes([h.job_id for h in late])).keys()
        )

    async def test_a_sink_that_cannot_store_stops_the_replay_with_a_way_out(
        self, anyio_backend: str
    ) -> None:
        """The error says nothing is lost and that running it again is safe."""
        receiver = WebhookReceiver(UnavailableSink(), secrets=[SECRET])
        fake = FakeCobalt(latency=0.0)
        with anyio.fail_after(LIMIT):
            async with cobalt(fake, anyio_backend) as client:
                await create_tasks(client, 2)
                await fake.drain()
                with pytest.raises(SinkUnavailableError, match="run the replay again"):
                    await client.webhook_events.replay(since=today(), into=receiver)


def max_created(fake: FakeCobalt) -> float:
    times = [created_at(parse_event(event)) for event in fake.events]
    return max(time for time in times if time is not None)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # uvicorn serves both sides
async def test_replay_of_events_missed_during_a_downtime_resolves_waiting_handles() -> None:
    """
    Webhooks go over HTTP to a receiver app; while it is down Cobalt's two attempts fail.

    The handles of those jobs wait on; a replay once the app is back resolves them, and
    the jobs delivered before the downtime come out as duplicates.
    """
    hooked: list[Event] = []
    sink = InMemorySink()
    receiver = WebhookReceiver(sink, secrets=[SECRET], on_event=hooked.append)
    since = datetime.now(UTC) - timedelta(seconds=5)
    down = f"http://127.0.0.1:{free_port()}/webhooks/cobalt"  # nothing listens there
    fake = FakeCobalt(latency=0.0, retry_delay=0.01, webhook_secret=SECRET)
    with anyio.fail_after(LIMIT):
        async with (
            fake,
            serve(fake) as cobalt_url,
            serve(WebhookApp(receiver)) as app_url,
            client_of(fake, cobalt_url, sink) as client,
        ):
            fake.webhook_url = app_url + "/webhooks/cobalt"
            delivered = await create_tasks(client, 3)
            for handle in delivered:
                await handle.wait(timeout=LIMIT)
            fake.webhook_url = down
            missed = await create_tasks(client, 4)
            await fake.drain()
            assert not any(handle.done() for handle in missed)
            fake.webhook_url = app_url + "/webhooks/cobalt"  # back up

            results: dict[str, Any] = {}
            async with anyio.create_task_group() as waits:
                for handle in missed:

                    async def wait(handle: JobHandle[TaskCreatedEvent] = handle) -> None:
                        results[handle.job_id] = await handle.wait(timeout=LIMIT)

                    waits.start_soon(wait)
                summary = await client.webhook_events.replay(since=since, into=receiver)
            again = await client.webhook_events.replay(since=since, into=receiver)
            failed = await client.webhook_events.list(delivery_status="failed")

    assert (4, 3) == (summary.replayed, summary.duplicates)
    assert (0, 7) == (again.replayed, again.duplicates)
    assert {handle.job_id for handle in missed} == set(results)
    assert {"poll"} == {handle.resolved_via for handle in missed}
    assert {"webhook"} == {handle.resolved_via for handle in delivered}
    assert 7 == len(hooked)
    assert {handle.job_id for handle in missed} == {str(e.job_id) for e in failed.events}


# -- what a replay does with events other than a job's first outcome ------------------------


def record(event: dict[str, Any]) -> dict[str, Any]:
    """*event* as an older-shape item of the listing (the whole body in ``data``)."""
    return {"job_id": event.get("job_id"), "delivery_status": "failed", "data": event}


async def test_other_events_reach_the_hook_once_and_conflicts_are_counted() -> None:
    """A sync event goes to on_event once over two replays; a second outcome is a conflict."""
    created = make_task_created_event(job_id="1", event_id="evt_1", created=now())
    conflicting = make_task_failed_event(job_id="1", event_id="evt_2", created=now())
    unreadable = {**make_task_created_event(job_id="2", event_id="evt_3"), "data": {}}
    sync = {"id": "evt_4", "object": "event", "type": "patient.updated", "data": {"mrn": "M"}}
    hooked: list[Event] = []
    receiver = WebhookReceiver(InMemorySink(), secrets=[SECRET], on_event=hooked.append)
    cobalt = StubCobalt()
    cobalt.records = [record(event) for event in (created, conflicting, unreadable, sync)]
    with anyio.fail_after(LIMIT):
        async with make_client(cobalt, sink=None) as client:
            first = await client.webhook_events.replay(since=today(), into=receiver)
            second = await client.webhook_events.replay(since=today(), into=receiver)

    assert (2, 1, 1, 0) == (first.replayed, first.conflicts, first.unreadable, first.duplicates)
    assert (0, 1, 0, 3) == (second.replayed, second.conflicts, second.unreadable, second.duplicates)
    assert ["task.created", "task.created", "patient.updated"] == [e.type for e in hooked]


def now() -> str:
    return datetime.now(UTC).isoformat()


def today() -> date:
    return datetime.now(UTC).date()
