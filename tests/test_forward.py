"""
The forwarder behind ``listen --forward-to``: FakeCobalt polled, a WebhookReceiver app fed,
in-process on asyncio and trio (tests/test_cli.py runs the command over real sockets).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import anyio
import httpx
import pytest

from cobalt_async import (
    APIError,
    AuthenticationError,
    CobaltClient,
    Event,
    InMemorySink,
    WebhookReceiver,
)
from cobalt_async._forward import LOOKBACK, Forwarder
from cobalt_async._types import ASGIApp, Receive, Scope, Send
from cobalt_async.asgi import WebhookApp
from cobalt_async.testing import FakeCobalt
from tests.support import StubCobalt, make_client, task_created_payload

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

SECRET = "whsec_forward"
APP_URL = "http://app.test/webhooks/cobalt"
LIMIT = 20.0


@dataclass
class Setup:
    fake: FakeCobalt
    client: CobaltClient
    forwarder: Forwarder
    lines: list[str]
    hooked: list[Event] = field(default_factory=list)
    sink: InMemorySink = field(default_factory=InMemorySink)
    attempts: list[str] = field(default_factory=list)
    """The webhook-attempt header of each delivery a failing app was sent."""

    async def create(self, count: int) -> list[str]:
        """Submit *count* tasks and let them finish; their job ids, in the order they finished."""
        handles = [
            await self.client.tasks.create(patient_mrn="MRN-1", description="Call back")
            for _ in range(count)
        ]
        await self.fake.drain()
        ids = {handle.job_id for handle in handles}
        return [event["job_id"] for event in self.fake.events if event["job_id"] in ids]


@asynccontextmanager
async def forwarding(
    *, secret: str = SECRET, app_status: int | None = None
) -> AsyncIterator[Setup]:
    """FakeCobalt with no webhook registered, and a forwarder into a receiver app."""
    lines: list[str] = []
    hooked: list[Event] = []
    sink = InMemorySink()
    receiver = WebhookReceiver(sink, secrets=[secret], on_event=hooked.append)
    attempts: list[str] = []
    app = WebhookApp(receiver) if app_status is None else answering(app_status, attempts)
    transport = httpx.ASGITransport(app=app)
    fake = FakeCobalt(latency=0.0)
    client = CobaltClient(
        client_id=fake.client_id,
        client_secret=fake.client_secret,
        access_token=fake.access_token,
        base_url=fake.base_url,
        transport=fake.transport,
    )
    async with fake, client:
        forwarder = Forwarder(
            client.webhook_events,
            APP_URL,
            SECRET,
            on_line=lines.append,
            transport=transport,
            retry_delay=0.01,
        )
        try:
            yield Setup(fake, client, forwarder, lines, hooked, sink, attempts)
        finally:
            await forwarder.aclose()


def answering(status: int, attempts: list[str]) -> ASGIApp:
    """An app that answers every delivery *status*, as an app that is failing does."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        attempts.append(dict(scope["headers"])[b"webhook-attempt"].decode())
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    return app


async def test_only_events_recorded_after_priming_are_forwarded_oldest_first_once() -> None:
    """Each new event is delivered, verified and printed once, however many polls see it."""
    with anyio.fail_after(LIMIT):
        async with forwarding() as setup:
            await setup.create(3)
            assert 3 == await setup.forwarder.prime()
            new = await setup.create(4)
            assert 4 == await setup.forwarder.poll()
            assert 0 == await setup.forwarder.poll()
            later = await setup.create(1)
            assert 1 == await setup.forwarder.poll()
            stored = await setup.sink.get_outcomes(new + later)

    assert new + later == [str(event.job_id) for event in setup.hooked]
    assert set(new + later) == set(stored)
    assert all(
        f" job_id={job} " in line for line, job in zip(setup.lines, new + later, strict=True)
    )
    assert all(line.startswith("task.created ") for line in setup.lines)
    assert all(line.endswith(" -> 200") for line in setup.lines)
    assert 5 == len(setup.lines)


async def test_a_delivery_signed_with_another_secret_is_refused_and_said_so() -> None:
    """The line shows the app's 401: the secret given is not the one the app verifies with."""
    with anyio.fail_after(LIMIT):
        async with forwarding(secret="whsec_the_app_has") as setup:
            await setup.forwarder.prime()
            await setup.create(1)
            await setup.forwarder.poll()

    assert [] == setup.hooked
    (line,) = setup.lines
    assert line.endswith(" -> 401")


async def test_a_failing_app_gets_cobalts_retry_then_the_line_says_how_it_ended() -> None:
    """A 503 is retried once, as Cobalt retries; the event is not forwarded again later."""
    with anyio.fail_after(LIMIT):
        async with forwarding(app_status=503) as setup:
            await setup.forwarder.prime()
            await setup.create(1)
            await setup.forwarder.poll()
            await setup.forwarder.poll()

    (line,) = setup.lines
    assert line.endswith(" -> 503")
    assert ["1", "2"] == setup.attempts


async def test_an_empty_record_at_priming_forwards_everything_recorded_after() -> None:
    with anyio.fail_after(LIMIT):
        async with forwarding() as setup:
            assert 0 == await setup.forwarder.prime()
            assert 0 == await setup.forwarder.poll()
            new = await setup.create(2)
            assert 2 == await setup.forwarder.poll()

    assert new == [str(event.job_id) for event in setup.hooked]


NEWEST = datetime(2026, 3, 1, 12, tzinfo=UTC)


def ago(seconds: float) -> str:
    """A ``created`` *seconds* before NEWEST."""
    return (NEWEST - timedelta(seconds=seconds)).isoformat()


async def test_an_event_recorded_late_is_forwarded_within_the_lookback_only() -> None:
    """Cobalt may list an event after a newer one: within LOOKBACK it still goes out, once."""
    stub = StubCobalt()
    newest = {**task_created_payload("1"), "id": "evt_1", "created": NEWEST.isoformat()}
    stub.records = [newest]
    lines: list[str] = []
    with anyio.fail_after(LIMIT):
        async with make_client(stub, sink=None) as client:
            forwarder = Forwarder(
                client.webhook_events,
                APP_URL,
                SECRET,
                on_line=lines.append,
                transport=httpx.MockTransport(lambda request: httpx.Response(200)),
            )
            await forwarder.prime()
            late = {**newest, "id": "evt_2", "job_id": "2", "created": ago(LOOKBACK - 1)}
            lost = {**newest, "id": "evt_3", "job_id": "3", "created": ago(LOOKBACK + 1)}
            unnamed = {**newest, "id": None, "job_id": "4"}
            stub.records = [newest, unnamed, late, lost, {"data": "not an event"}]
            await forwarder.poll()
            await forwarder.poll()
            await forwarder.aclose()

    assert ["job_id=2", "job_id=4"] == sorted(line.split()[1] for line in lines)


async def test_run_polls_on_after_a_failed_poll_and_stops_at_refused_credentials() -> None:
    """A 503 is reported and polled past; a 401 ends the loop, since polling cannot mend it."""
    answers = iter([503, 200, 401])
    seen: list[int] = []

    def cobalt(request: httpx.Request) -> httpx.Response:
        status = next(answers)
        seen.append(status)
        if status != 200:
            return httpx.Response(status, json={"success": False, "message": "no"})
        return httpx.Response(200, json={"success": True, "webhook_events": []})

    errors: list[APIError] = []
    client = CobaltClient(
        client_id="c",
        client_secret="s",
        access_token="t",
        base_url="https://api.cobalt.test/v1",
        transport=httpx.MockTransport(cobalt),
        max_retries=0,
    )
    with anyio.fail_after(LIMIT):
        async with client:
            forwarder = Forwarder(client.webhook_events, APP_URL, SECRET, on_line=print)
            fatal = await forwarder.run(0.001, on_error=errors.append)
            await forwarder.aclose()

    assert [503, 200, 401] == seen
    assert [503] == [error.status_code for error in errors]
    assert isinstance(fatal, AuthenticationError)
