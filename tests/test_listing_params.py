"""``client.webhook_events.list()``: its parameters are checked locally, like the create fields."""

from __future__ import annotations

import datetime
from typing import Any

import httpx
import pytest

from cobalt_async import CobaltClient, RequestValidationError

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
        ({"event_type": 5}, "event_type"),
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
