"""
A signed terminal event this version cannot read settles its job at once, with an error
that says so, instead of leaving the waiter to time out (docs/webhooks.md, the 422 row).
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest

from cobalt_async import (
    InMemorySink,
    JobStatus,
    MalformedEventError,
    MalformedJobEvent,
    WebhookReceiver,
    sign_webhook,
    wait_all,
)
from cobalt_async.asgi import WebhookApp
from cobalt_async.models import parse_event
from cobalt_async.testing import make_task_created_event, make_task_note_created_event
from tests.support import JOB, SECRET, StubCobalt, create_task, make_client

pytestmark = pytest.mark.anyio

MARKER = "PHI-MARKER-Jane-Doe"


def without_emr_task_id(job_id: str = JOB) -> dict[str, Any]:
    event = make_task_created_event(job_id=job_id, description=MARKER, subject=MARKER)
    del event["data"]["emr_task_id"]
    return event


def deeply_nested(job_id: str = JOB, depth: int = 400) -> dict[str, Any]:
    nested: dict[str, Any] = {"note": MARKER}
    for _ in range(depth):
        nested = {"inner": nested}
    event = make_task_created_event(job_id=job_id)
    event["data"] = {"deep": nested}
    return event


def signed(event: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(event, separators=(",", ":")).encode()
    return body, {"cobalt-verification": sign_webhook(body, SECRET), "webhook-id": "d-1"}


class TestParsing:
    @pytest.mark.parametrize("build", [without_emr_task_id, deeply_nested])
    def test_a_terminal_event_with_a_job_id_parses_as_malformed(self, build: Any) -> None:
        """It keeps its job id, its type and the payload; the problem names paths, not text."""
        payload = build()
        event = parse_event(json.dumps(payload).encode())

        assert isinstance(event, MalformedJobEvent)
        assert (JOB, "task.created") == (event.job_id, event.type)
        assert payload == event.raw
        assert event.problem
        assert MARKER not in event.problem

    def test_a_note_created_without_its_emr_note_id_is_malformed(self) -> None:
        """The Create Task Note page sends ``emr_note_id`` with every success: it is required."""
        payload = make_task_note_created_event(job_id=JOB, note=MARKER)
        del payload["data"]["emr_note_id"]

        event = parse_event(json.dumps(payload).encode())

        assert isinstance(event, MalformedJobEvent)
        assert ("task_note.created", "data.emr_note_id: missing") == (event.type, event.problem)

    def test_it_serialises_as_sent_and_parses_back_the_same(self) -> None:
        """What a sink stores (the model's JSON dump) reads back as the same event."""
        event = parse_event(json.dumps(without_emr_task_id()).encode())

        again = parse_event(event.model_dump_json())

        assert event == again


class TestReceiver:
    async def test_it_is_stored_answered_422_and_wakes_its_waiter(self) -> None:
        """The waiter raises at once; Cobalt's record says the delivery failed, for recovery."""
        sink = InMemorySink()
        receiver = WebhookReceiver(sink, secrets=[SECRET])
        stub = StubCobalt()
        async with make_client(stub, sink=sink, job_timeout=60.0) as client:
            handle = await create_task(client)
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(receiver.receive, *signed(without_emr_task_id()))
                with anyio.fail_after(5), pytest.raises(MalformedEventError) as caught:
                    await handle

        assert "data.emr_task_id: missing" == caught.value.problem
        assert JobStatus.MALFORMED is handle.status
        assert MARKER not in str(caught.value)
        assert caught.value.event.raw["data"]["description"] == MARKER
        assert [] == stub.polls  # woken by the webhook, not by a poll

    async def test_through_the_asgi_app_the_answer_is_422_unreadable(self) -> None:
        """The app answers what the receiver decided, without the problem or the body."""
        sink = InMemorySink()
        app = WebhookApp(WebhookReceiver(sink, secrets=[SECRET]))
        body, headers = signed(deeply_nested())
        sent: list[dict[str, Any]] = []
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            return messages.pop(0)

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "method": "POST",
            "headers": [(name.encode(), value.encode()) for name, value in headers.items()],
        }
        await app(scope, receive, send)

        assert 422 == sent[0]["status"]
        assert b'{"status":"unreadable"}' == sent[1]["body"]
        assert isinstance((await sink.get_outcomes([JOB]))[JOB].event, MalformedJobEvent)

    async def test_a_repeat_of_it_is_a_duplicate(self) -> None:
        """Cobalt's retry of the same delivery is answered 200: nothing new to record."""
        receiver = WebhookReceiver(InMemorySink(), secrets=[SECRET])
        first = await receiver.receive(*signed(without_emr_task_id()))
        again = await receiver.receive(*signed(without_emr_task_id()))

        assert (422, 200) == (first.status_code, again.status_code)


class TestPollAndBatch:
    async def test_the_poll_backstop_settles_it_too(self) -> None:
        """Found by polling GET /v1/webhook-events, it raises the same error."""
        stub = StubCobalt()
        event = without_emr_task_id()
        stub.records = [{**event, "event_id": event["id"], "event_type": event["type"]}]
        async with make_client(stub, sink=None, job_timeout=30.0) as client:
            handle = await create_task(client)
            with anyio.fail_after(10), pytest.raises(MalformedEventError):
                await handle

    async def test_wait_all_sorts_it_apart_from_failures(self) -> None:
        """Neither succeeded nor failed: it is listed as malformed, never raised."""
        sink = InMemorySink()
        receiver = WebhookReceiver(sink, secrets=[SECRET])
        async with make_client(StubCobalt(), sink=sink) as client:
            handle = await create_task(client)
            await receiver.receive(*signed(without_emr_task_id()))
            with anyio.fail_after(5):
                result = await wait_all([handle])

        assert ([], [], [], [handle]) == (
            result.succeeded,
            result.failed,
            result.pending,
            result.malformed,
        )
