"""Helpers shared by the test modules, so that none imports another; fixtures are in conftest.py."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import anyio
import httpx

from cobalt_async import (
    CobaltClient,
    JobHandle,
    PollPolicy,
    Sink,
    TaskCreatedEvent,
    WebhookReceiver,
    sign_webhook,
)
from cobalt_async.sinks import _memory

SECRET = "whsec_test"
"""The webhook secret the shared deliveries are signed with."""

# -- waiting and time --------------------------------------------------------------------------


async def until(predicate: Callable[[], bool], *, timeout: float = 5.0) -> None:
    """Yield to other tasks until *predicate* holds; fail after *timeout* seconds."""
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.lowlevel.checkpoint()


class FakeClock:
    """Stands in for the ``time`` module of ``cobalt_async.sinks._memory``."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@contextmanager
def fake_clock() -> Iterator[FakeClock]:
    """InMemorySink's time is a FakeClock while this is open."""
    clock = FakeClock()
    with mock.patch.object(_memory, "time", clock):
        yield clock


# -- a stubbed Cobalt, for JobHandle and polling -----------------------------------------------

JOB_NUMBER = 12345
JOB = "12345"
QUIET = PollPolicy(silence=60.0, max_silence=60.0)
"""A sink-backed policy whose backstop never polls within a test (except before a timeout)."""


def task_created_payload(job_id: str = JOB, *, emr_task_id: str = "emr-9") -> dict[str, Any]:
    return {
        "id": f"evt_created_{job_id}",
        "access_token_reference_id": "atr_test",
        "object": "event",
        "created": "2026-01-01T00:00:00.000Z",
        "type": "task.created",
        "job_id": job_id,
        "data": {"task_id": "t", "emr_task_id": emr_task_id, "subject": "Follow-up"},
    }


def task_failed_payload(job_id: str = JOB) -> dict[str, Any]:
    return {
        "id": f"evt_failed_{job_id}",
        "access_token_reference_id": "atr_test",
        "object": "event",
        "created": "2026-01-01T00:00:00.000Z",
        "type": "task.failed",
        "job_id": job_id,
        "data": {
            "task_id": "t",
            "failure_reason": "Patient not found; Assignee unknown",
            "reasons": [
                {"code": "patient_not_found", "description": "Patient not found"},
                {"code": "assignee_unknown", "description": "Assignee unknown"},
            ],
        },
    }


class StubCobalt:
    """Cobalt's task API as an ``httpx.MockTransport``; the test controls every answer."""

    def __init__(self, job_id: int | str = JOB_NUMBER) -> None:
        self.job_id = job_id
        self.records: list[dict[str, Any]] = []
        """Items of ``GET /v1/webhook-events``, filtered by its job_id unless told not to."""
        self.records_from_poll = 1
        """The first poll (1-based) that sees ``records``; earlier polls see none."""
        self.ignore_job_filter = False
        self.fail_polls = 0
        """The next N polls answer 500."""
        self.garbage_polls = 0
        """The next N polls answer 200 with a body that is not Cobalt's JSON."""
        self.first_poll_gate: anyio.Event | None = None
        """When set, the first poll hangs until this event is set."""
        self.polls: list[httpx.Request] = []
        self.poll_times: list[float] = []
        self.on_create: Callable[[], Awaitable[None]] | None = None
        """Runs before the POST answers, e.g. to deliver the webhook early."""
        self.transport = httpx.MockTransport(self.handle)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path == "/v1/tasks":
            if self.on_create is not None:
                await self.on_create()
            return httpx.Response(
                200, json={"success": True, "task_id": "t", "job_id": self.job_id}
            )
        if request.method == "GET" and request.url.path == "/v1/webhook-events":
            self.polls.append(request)
            self.poll_times.append(anyio.current_time())
            if self.first_poll_gate is not None and len(self.polls) == 1:
                await self.first_poll_gate.wait()
            if self.fail_polls:
                self.fail_polls -= 1
                return httpx.Response(500, json={"success": False, "message": "boom"})
            if self.garbage_polls:
                self.garbage_polls -= 1
                return httpx.Response(200, text="<html>upstream maintenance</html>")
            wanted = request.url.params.get("job_id")
            visible = self.records if len(self.polls) >= self.records_from_poll else []
            records = [
                record
                for record in visible
                if self.ignore_job_filter or wanted is None or str(record["job_id"]) == wanted
            ]
            return httpx.Response(
                200,
                json={
                    "success": True,
                    "webhook_events": records,
                    "pagination": {"current_page": 1, "total_pages": 1, "page_size": 100},
                },
            )
        return httpx.Response(404, json={"success": False, "message": "no such route"})


def make_client(
    stub: StubCobalt,
    *,
    sink: Sink | None,
    poll: PollPolicy = QUIET,
    job_timeout: float | None = 5.0,
) -> CobaltClient:
    return CobaltClient(
        client_id="cid",
        client_secret="csecret",
        access_token="tok",
        base_url="https://api.cobalt.test/v1",
        sink=sink,
        transport=stub.transport,
        max_retries=0,
        poll=poll,
        job_timeout=job_timeout,
    )


async def deliver(receiver: WebhookReceiver, payload: dict[str, Any]) -> None:
    """POST a signed webhook into the receiver, as Cobalt would."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = {"cobalt-verification": sign_webhook(body, SECRET), "webhook-id": payload["id"]}
    receipt = await receiver.receive(body, headers)
    assert receipt.status_code == 200, receipt


async def create_task(client: CobaltClient) -> JobHandle[TaskCreatedEvent]:
    return await client.tasks.create(patient_mrn="MRN-1", description="Call the patient back")
