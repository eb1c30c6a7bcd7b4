"""
``client.webhook_events``: the parameters of ``list()``, ``pages()``, ``iter()`` and
``replay()`` are checked locally, like the create fields, before any request is sent.
"""

from __future__ import annotations

import datetime
from typing import Any

import anyio
import httpx
import pytest

from cobalt_async import CobaltClient, InMemorySink, RequestValidationError, WebhookReceiver

pytestmark = pytest.mark.anyio

EMPTY_PAGE = {"success": True, "webhook_events": [], "pagination": {"current_page": 1}}


def client(requests: list[httpx.Request]) -> CobaltClient:
    def answer(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, json=EMPTY_PAGE)

    return CobaltClient(
        client_id="c",
        client_secret="s",
        access_token="t",
        base_url="https://api.cobalt.test/v1",
        transport=httpx.MockTransport(answer),
    )


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"page": 0}, "page"),
        ({"page": "2"}, "page"),
        ({"page_size": 101}, "page_size"),
        ({"page_size": 0}, "page_size"),
        ({"sort": "created"}, "sort"),
        ({"delivery_status": "pending"}, "delivery_status"),
        ({"start_date": "2026-1-2"}, "start_date"),
        ({"end_date": "2026-02-30"}, "end_date"),
        ({"end_date": datetime.datetime(2026, 1, 2, 3, 4)}, "end_date"),
        ({"job_id": ""}, "job_id"),
        ({"job_id": True}, "job_id"),
        ({"job_id": 4.0}, "job_id"),
        ({"event_type": 5}, "event_type"),
        ({"event_type": ""}, "event_type"),
        ({"start_date": "2026-02-01", "end_date": "2026-01-31"}, "end_date"),
        ({"page": True}, "page"),
        ({"page_size": 50.0}, "page_size"),
    ],
)
async def test_a_bad_parameter_is_refused_before_anything_is_sent(
    arguments: dict[str, Any], field: str
) -> None:
    """The error names the parameter; no request reaches Cobalt."""
    requests: list[httpx.Request] = []
    async with client(requests) as cobalt:
        with pytest.raises(RequestValidationError, match=f"Invalid parameter {field}:") as caught:
            await cobalt.webhook_events.list(**arguments)

    assert (field, []) == (caught.value.field, requests)


async def test_the_documented_filters_are_sent_as_cobalt_spells_them() -> None:
    requests: list[httpx.Request] = []
    async with client(requests) as cobalt:
        await cobalt.webhook_events.list(
            job_id=42,
            event_type="task.created",
            delivery_status="failed",
            start_date=datetime.date(2026, 1, 2),
            end_date="2026-01-31",
            page=2,
            page_size=100,
            sort="created_at",
        )

    assert {
        "job_id": "42",
        "event_type": "task.created",
        "delivery_status": "failed",
        "start_date": "2026-01-02",
        "end_date": "2026-01-31",
        "page": "2",
        "page_size": "100",
        "sort": "created_at",
    } == dict(requests[0].url.params)


WALK_ERRORS = [
    ({"page_size": 101}, "page_size"),
    ({"sort": "newest"}, "sort"),
    ({"delivery_status": "pending"}, "delivery_status"),
    ({"start_date": "2026-01-32"}, "start_date"),
    ({"page": 2}, "page"),  # a walk starts at the first page
    ({"status": "failed"}, "status"),  # the older API's name: refused, not ignored
]


@pytest.mark.parametrize("method", ["pages", "iter"])
@pytest.mark.parametrize(("arguments", "field"), WALK_ERRORS)
async def test_a_walk_with_a_bad_filter_is_refused_by_the_call_itself(
    method: str, arguments: dict[str, Any], field: str
) -> None:
    """``iter(...)`` raises when called, before its first page is asked for."""
    requests: list[httpx.Request] = []
    async with client(requests) as cobalt:
        with pytest.raises(RequestValidationError, match=f"Invalid parameter {field}:") as caught:
            getattr(cobalt.webhook_events, method)(**arguments)

    assert (field, []) == (caught.value.field, requests)


async def test_a_walk_sends_the_filters_and_pages_of_100_by_default() -> None:
    requests: list[httpx.Request] = []
    async with client(requests) as cobalt:
        events = [
            event
            async for event in cobalt.webhook_events.iter(
                job_id=7, event_type="task.failed", delivery_status="failed", sort="created_at"
            )
        ]

    assert [] == events
    assert {
        "job_id": "7",
        "event_type": "task.failed",
        "delivery_status": "failed",
        "page": "1",
        "page_size": "100",
        "sort": "created_at",
    } == dict(requests[0].url.params)


SINCE = datetime.datetime(2026, 3, 1, 12, tzinfo=datetime.UTC)
REPLAY_ERRORS = [
    ({"since": datetime.datetime(2026, 3, 1, 12)}, "since"),  # naive: which zone?
    ({"since": "2026-03-01"}, "since"),
    ({"since": SINCE, "until": SINCE - datetime.timedelta(seconds=1)}, "until"),
    ({"since": SINCE, "delivery_status": "pending"}, "delivery_status"),
    ({"since": SINCE, "event_type": ""}, "event_type"),
    ({"since": SINCE, "job_id": ""}, "job_id"),
]


@pytest.mark.parametrize(("arguments", "field"), REPLAY_ERRORS)
async def test_a_replay_with_a_bad_parameter_sends_nothing(
    arguments: dict[str, Any], field: str
) -> None:
    requests: list[httpx.Request] = []
    receiver = WebhookReceiver(InMemorySink(), secrets=["whsec_test"])
    async with client(requests) as cobalt:
        with pytest.raises(RequestValidationError, match=f"Invalid parameter {field}:") as caught:
            await cobalt.webhook_events.replay(into=receiver, **arguments)

    assert (field, []) == (caught.value.field, requests)


async def test_a_replay_into_something_that_is_not_a_receiver_sends_nothing() -> None:
    """A sink passed as *into* by mistake is a TypeError that says what *into* takes."""
    requests: list[httpx.Request] = []
    async with client(requests) as cobalt:
        with pytest.raises(TypeError, match="into= takes a WebhookReceiver, not InMemorySink"):
            await cobalt.webhook_events.replay(since=SINCE, into=InMemorySink())  # type: ignore[arg-type]

    assert [] == requests


async def test_a_replay_asks_for_a_day_of_margin_each_side_oldest_first() -> None:
    """Cobalt's days may not be UTC days: the window's edges are applied to the times."""
    requests: list[httpx.Request] = []
    receiver = WebhookReceiver(InMemorySink(), secrets=["whsec_test"])
    async with client(requests) as cobalt:
        with anyio.fail_after(5):
            summary = await cobalt.webhook_events.replay(
                since=datetime.date(2026, 3, 1),
                until=SINCE,
                into=receiver,
                delivery_status="failed",
            )

    assert (0, None) == (summary.read, summary.newest)
    assert {
        "delivery_status": "failed",
        "start_date": "2026-02-28",
        "end_date": "2026-03-02",
        "page": "1",
        "page_size": "100",
        "sort": "created_at",
    } == dict(requests[0].url.params)
