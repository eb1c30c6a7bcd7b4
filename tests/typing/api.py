"""
Type tests of the public API: never run, only checked by ``mypy --strict`` (test_typing.py).

Each ``assert_type`` pins what a user's editor and type checker infer. Each line ending in
``# type: ignore[code]`` must NOT type-check: strict mode warns about unused ignores, so a
line that stops erroring fails the check too.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any, Literal, assert_type

import httpx

from cobalt_async import (
    NOT_GIVEN,
    APIError,
    BatchProgress,
    CobaltClient,
    CobaltError,
    Completed,
    Event,
    InMemorySink,
    JobEvent,
    JobFailedError,
    JobHandle,
    JobKind,
    JobStatus,
    JobTimeoutError,
    PatientLiveFetchCompletedEvent,
    PatientTask,
    PollPolicy,
    PostgresSink,
    RateLimitError,
    Receipt,
    ReplaySummary,
    RequestValidationError,
    SinkStats,
    TaskCreatedEvent,
    TaskNoteCreatedEvent,
    WaitResult,
    WebhookEventPage,
    WebhookReceiver,
    as_completed,
    sign_webhook,
    verify_webhook,
    wait_all,
)
from cobalt_async.asgi import WebhookApp
from cobalt_async.models import FailureReason
from cobalt_async.testing import FakeCobalt, FakeStats, make_task_created_event, signed_delivery


async def submit_and_await(client: CobaltClient) -> None:
    handle = await client.tasks.create(patient_mrn="MRN-1", description="Call the patient")
    assert_type(handle, JobHandle[TaskCreatedEvent])
    assert_type(handle.job_id, str)
    assert_type(handle.kind, Literal["task", "task_note", "patient_fetch"])
    assert_type(handle.status, JobStatus)
    assert_type(handle.done(), bool)
    assert_type(handle.event, JobEvent | None)
    assert_type(handle.resolved_via, Literal["webhook", "poll"] | None)

    event = await handle
    assert_type(event, TaskCreatedEvent)
    assert_type(event.data.emr_task_id, str)
    assert_type(event.data.task_id, str | None)
    assert_type(event.job_id, str | None)
    assert_type(await handle.wait(timeout=5.0), TaskCreatedEvent)
    assert_type(await handle.wait(timeout=None), TaskCreatedEvent)
    assert_type(await handle.wait(NOT_GIVEN), TaskCreatedEvent)

    optional = await client.tasks.create(
        patient_mrn="MRN-1",
        description="Call the patient",
        subject="Follow-up",
        assignee_user_id=None,
        notify_list=["user-1"],
    )
    assert_type(optional, JobHandle[TaskCreatedEvent])

    note = await client.tasks.notes.create(emr_task_id=event.data.emr_task_id, note="Called")
    assert_type(note, JobHandle[TaskNoteCreatedEvent])
    note_event = await note
    assert_type(note_event, TaskNoteCreatedEvent)
    assert_type(note_event.data.emr_note_id, str)

    # The handle's type follows the call: a task's outcome is not a note's.
    wrong: TaskNoteCreatedEvent = await handle  # type: ignore[assignment]
    await client.tasks.create(patient_mrn="MRN-1", description="x", priority=1)  # type: ignore[call-arg]
    await client.tasks.create(patient_mrn="MRN-1")  # type: ignore[call-arg]
    await client.tasks.create(patient_mrn=12345, description="x")  # type: ignore[arg-type]
    await client.tasks.notes.create(patient_mrn="MRN-1", note="x")  # type: ignore[call-arg]
    event.data.note  # type: ignore[attr-defined]  # noqa: B018
    event.job_id = "2"  # type: ignore[misc]  # events are frozen
    del wrong


async def attach(client: CobaltClient, kind: JobKind) -> None:
    assert_type(client.jobs.attach("10001", "task"), JobHandle[TaskCreatedEvent])
    assert_type(client.jobs.attach(10001, "task_note"), JobHandle[TaskNoteCreatedEvent])
    assert_type(
        client.jobs.attach("10001", kind),
        JobHandle[TaskCreatedEvent]
        | JobHandle[TaskNoteCreatedEvent]
        | JobHandle[PatientLiveFetchCompletedEvent],
    )
    assert_type(
        client.jobs.attach("job_1", "patient_fetch"), JobHandle[PatientLiveFetchCompletedEvent]
    )


async def fetch_then_note(client: CobaltClient) -> None:
    fetch = await client.patients.fetch(search_by="mrn", mrn="MRN-1", include=["tasks"])
    assert_type(fetch, JobHandle[PatientLiveFetchCompletedEvent])
    found = await fetch
    task = found.data.patients[0].tasks[0]
    assert_type(task, PatientTask)
    assert_type(found.data.tasks[0].emr_task_id, str)
    await client.patients.fetch(search_by="dob", dob=date(1990, 1, 31), include="tasks")
    await client.patients.fetch(search_by="nickname")  # type: ignore[arg-type]
    await client.patients.fetch(search_by="mrn", mrn="1", include=["task"])  # type: ignore[list-item]
    note = await client.tasks.notes.create(emr_task_id=task.emr_task_id, note="Called")
    assert_type(note, JobHandle[TaskNoteCreatedEvent])
    assert_type(await client.jobs.attach("10001", "task"), TaskCreatedEvent)
    client.jobs.attach("10001", "note")  # type: ignore[call-overload]


async def batches(client: CobaltClient) -> None:
    def on_progress(progress: BatchProgress) -> None:
        assert_type(progress.done, int)
        assert_type(progress.result, JobHandle[Any] | CobaltError)

    results = await client.tasks.create_many(
        [{"patient_mrn": "MRN-1", "description": "a"}], concurrency=8, on_progress=on_progress
    )
    assert_type(results, list[JobHandle[TaskCreatedEvent] | CobaltError])
    handles = [result for result in results if isinstance(result, JobHandle)]
    assert_type(handles, list[JobHandle[TaskCreatedEvent]])
    notes = await client.tasks.notes.create_many([{"emr_task_id": "emr-1", "note": "n"}])
    assert_type(notes, list[JobHandle[TaskNoteCreatedEvent] | CobaltError])

    settled = await wait_all(handles, timeout=60.0)
    assert_type(settled, WaitResult[JobHandle[TaskCreatedEvent]])
    assert_type(settled.succeeded, list[JobHandle[TaskCreatedEvent]])
    assert_type(settled.failed, list[JobHandle[TaskCreatedEvent]])
    assert_type(settled.unknown_job_ids, list[str])

    async with as_completed(handles, timeout=60.0) as finished:
        assert_type(finished, Completed[JobHandle[TaskCreatedEvent]])
        async for done in finished:
            assert_type(done, JobHandle[TaskCreatedEvent])
            assert_type(await done, TaskCreatedEvent)
        assert_type(finished.pending, list[JobHandle[TaskCreatedEvent]])

    await wait_all(["10001"])  # type: ignore[type-var]


async def errors(client: CobaltClient, handle: JobHandle[TaskCreatedEvent]) -> None:
    try:
        await handle
    except JobFailedError as exc:
        assert_type(exc.event, JobEvent)
        assert_type(exc.failure_reason, str | None)
        assert_type(exc.reasons, tuple[FailureReason, ...])
        len(exc.failure_reason)  # type: ignore[arg-type]
    except JobTimeoutError as exc:
        assert_type(exc.job_id, str)
        assert_type(exc.timeout, float)
    try:
        await client.tasks.create(patient_mrn="MRN-1", description="x")
    except RateLimitError as exc:
        assert_type(exc.retry_after, float | None)
        assert_type(exc.status_code, int)
        seconds: float = exc.retry_after  # type: ignore[assignment]
        del seconds
    except RequestValidationError as exc:
        assert_type(exc.field, str | None)
    except APIError as exc:
        assert_type(exc.outcome_unknown, bool)
        assert_type(exc.status_code, int | None)
        assert_type(exc.method, str)


async def receiving(sink: InMemorySink) -> None:
    async def on_event(event: Event) -> None:
        assert_type(event.type, str)

    def on_event_sync(event: Event) -> None: ...

    receiver = WebhookReceiver(sink, secrets=["whsec_new", "whsec_old"], on_event=on_event)
    WebhookReceiver(sink, secrets=["whsec"], max_body_bytes=1 << 16, on_event=on_event_sync)
    receipt = await receiver.receive(b"", {})
    assert_type(receipt, Receipt)
    assert_type(receipt.status_code, int)
    assert_type(receipt.event, Event | None)
    assert_type(await receiver.receive(b"", [(b"cobalt-verification", b"00")]), Receipt)
    await receiver.receive("a parsed body", {})  # type: ignore[arg-type]
    receiver.rotate_secret("whsec_new", retire_old_after=3600)
    receiver.expect_new_secret(within=60)

    stats = sink.stats()
    assert_type(stats, SinkStats)
    assert_type(stats.pending, int)
    assert_type(verify_webhook(b"", {"cobalt-verification": "00"}, ["whsec"]), Event)
    assert_type(sign_webhook({"type": "task.created"}, "whsec"), str)
    assert_type(WebhookApp(receiver), WebhookApp)


async def webhook_events(client: CobaltClient, receiver: WebhookReceiver) -> None:
    page = await client.webhook_events.list(job_id=1, delivery_status="failed", page_size=100)
    assert_type(page, WebhookEventPage)
    assert_type(page.events, list[Event])
    assert_type(page.records, list[dict[str, Any]])
    async for event in client.webhook_events.iter(job_id="1", start_date=date(2026, 1, 1)):
        assert_type(event, Event)
    async for listed in client.webhook_events.pages(event_type="task.created", sort="created_at"):
        assert_type(listed, WebhookEventPage)
    client.webhook_events.iter(page=2)  # type: ignore[call-arg]
    client.webhook_events.iter(delivery_status="pending")  # type: ignore[arg-type]
    summary = await client.webhook_events.replay(since=datetime.now(UTC), into=receiver)
    assert_type(summary, ReplaySummary)
    assert_type(summary.replayed, int)
    assert_type(summary.newest, datetime | None)
    await client.webhook_events.replay(since=date(2026, 1, 1), until=summary.newest, into=receiver)
    await client.webhook_events.replay(since=date(2026, 1, 1), into=receiver.sink)  # type: ignore[arg-type]
    receipt = await receiver.receive_event(page.events[0], via="poll")
    assert_type(receipt, Receipt)


async def postgres() -> None:
    sink = PostgresSink("postgresql://app@db:5432/app", schema="cobalt", outcome_ttl=3600)
    assert_type(await sink.migrate(), tuple[int, int])
    assert_type(await sink.delete_expired(), int)
    assert_type(sink.host, str)
    async with CobaltClient(sink=sink) as client:
        assert_type(client, CobaltClient)
    PostgresSink("postgresql://app@db/app", namespace="cobalt")  # type: ignore[call-arg]


async def testing() -> None:
    sink = InMemorySink(outcome_ttl=60.0, max_outcomes=100)
    receiver = WebhookReceiver(sink, secrets=["whsec_test"])
    async with FakeCobalt(
        receiver=receiver, webhook_secret="whsec_test", latency=(0.01, 0.05), seed=1
    ) as fake:
        assert_type(fake, FakeCobalt)
        assert_type(fake.transport, httpx.ASGITransport)
        assert_type(fake.stats, FakeStats)
        assert_type(fake.stats.jobs_finished, int)
        async with CobaltClient(
            client_id="ci_test",
            client_secret="cs_test",
            access_token="at_test",
            base_url=fake.base_url,
            transport=fake.transport,
            sink=sink,
            timeout=httpx.Timeout(5.0),
            max_retries=0,
            poll=PollPolicy(interval=0.1, silence=1.0),
            job_timeout=None,
        ) as client:
            assert_type(client, CobaltClient)
            assert_type(
                await client.tasks.create(patient_mrn="M", description="d"),
                JobHandle[TaskCreatedEvent],
            )
        await fake.drain()
    body, headers = signed_delivery(make_task_created_event(job_id=10001), "whsec_test")
    assert_type(body, bytes)
    assert_type(headers, dict[str, str])
    FakeCobalt(failure_rate="often")  # type: ignore[arg-type]
    CobaltClient(api_key="k")  # type: ignore[call-arg]
