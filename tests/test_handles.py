"""JobHandle through CobaltClient: a stubbed Cobalt, webhooks through WebhookReceiver."""

from __future__ import annotations

import json
import random

import anyio
import httpx
import pytest

from cobalt_async import (
    CobaltClient,
    InMemorySink,
    JobFailedError,
    JobHandle,
    JobStatus,
    JobTimeoutError,
    TaskCreatedEvent,
    TaskFailedEvent,
    WebhookReceiver,
    sign_webhook,
)
from tests.support import (
    JOB,
    JOB_NUMBER,
    QUIET,
    SECRET,
    StubCobalt,
    create_task,
    deliver,
    make_client,
    task_created_payload,
    task_failed_payload,
    until,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def stub() -> StubCobalt:
    return StubCobalt()


@pytest.fixture
def receiver(sink: InMemorySink) -> WebhookReceiver:
    return WebhookReceiver(sink, secrets=[SECRET])


class TestIdentity:
    async def test_job_id_is_a_string_even_when_cobalt_sends_a_number(
        self, stub: StubCobalt, sink: InMemorySink
    ) -> None:
        """Cobalt's numeric job_id becomes the string every event carries."""
        async with make_client(stub, sink=sink) as client:
            handle = await create_task(client)
        assert handle.job_id == JOB
        assert isinstance(handle.job_id, str)

    async def test_task_id_and_kind_come_from_the_create(
        self, stub: StubCobalt, sink: InMemorySink
    ) -> None:
        """The POST answer's task_id is kept on the handle."""
        async with make_client(stub, sink=sink) as client:
            handle = await create_task(client)
        assert (handle.task_id, handle.kind, handle.task_note_id) == ("t", "task", None)

    async def test_repr_names_kind_status_and_job_id(
        self, stub: StubCobalt, sink: InMemorySink, receiver: WebhookReceiver
    ) -> None:
        """The repr follows the status."""
        async with make_client(stub, sink=sink) as client:
            handle = await create_task(client)
            assert repr(handle) == "<JobHandle task pending job_id='12345'>"
            await deliver(receiver, task_created_payload())
            with anyio.fail_after(2):
                await handle
        assert repr(handle) == "<JobHandle task succeeded job_id='12345'>"


class TestOutcome:
    async def test_pending_handle_knows_nothing_yet(
        self, stub: StubCobalt, sink: InMemorySink
    ) -> None:
        """Before an outcome: PENDING, not done, no event, no resolved_via."""
        async with make_client(stub, sink=sink) as client:
            handle = await create_task(client)
        assert handle.status is JobStatus.PENDING
        assert not handle.done()
        assert handle.event is None
        assert handle.resolved_via is None

    async def test_await_returns_the_task_created_event_from_the_webhook(
        self, stub: StubCobalt, sink: InMemorySink, receiver: WebhookReceiver
    ) -> None:
        """``await handle`` returns the TaskCreatedEvent delivered by webhook."""
        async with make_client(stub, sink=sink) as client:
            handle = await create_task(client)
            async with anyio.create_task_group() as tg:
                results: list[TaskCreatedEvent] = []

                async def waiter() -> None:
                    results.append(await handle)

                with anyio.fail_after(2):
                    tg.start_soon(waiter)
                    await until(lambda: sink.stats().pending == 1)
                    await deliver(receiver, task_created_payload())
        [event] = results
        assert isinstance(event, TaskCreatedEvent)
        assert event.data.emr_task_id == "emr-9"
        assert handle.status is JobStatus.SUCCEEDED
        assert handle.done()
        assert handle.event is event
        assert handle.resolved_via == "webhook"
        assert stub.polls == []

    async def test_webhook_before_the_post_answer_still_resolves_the_handle(
        self, stub: StubCobalt, sink: InMemorySink, receiver: WebhookReceiver
    ) -> None:
        """The early arrival race: the webhook lands while the POST is still in flight."""
        stub.on_create = lambda: deliver(receiver, task_created_payload())
        async with make_client(stub, sink=sink) as client:
            handle = await create_task(client)
            with anyio.fail_after(2):
                event = await handle
        assert event.job_id == JOB
        assert handle.resolved_via == "webhook"

    async def test_failure_event_raises_job_failed_error_with_its_reasons(
        self, stub: StubCobalt, sink: InMemorySink, receiver: WebhookReceiver
    ) -> None:
        """A task.failed outcome raises JobFailedError carrying the event and reasons."""
        async with make_client(stub, sink=sink) as client:
            handle = await create_task(client)
            await deliver(receiver, task_failed_payload())
            with anyio.fail_after(2), pytest.raises(JobFailedError) as caught:
                await handle
        error = caught.value
        assert isinstance(error.event, TaskFailedEvent)
        assert error.job_id == JOB
        assert error.failure_reason == "Patient not found; Assignee unknown"
        assert [reason.code for reason in error.reasons] == [
            "patient_not_found",
            "assignee_unknown",
        ]
        assert handle.status is JobStatus.FAILED
        assert handle.done()
        assert handle.event is error.event

    async def test_failed_handle_raises_again_on_every_await(
        self, stub: StubCobalt, sink: InMemorySink, receiver: WebhookReceiver
    ) -> None:
        """A known failure is re-raised, without waiting again."""
        async with make_client(stub, sink=sink) as client:
            handle = await create_task(client)
            await deliver(receiver, task_failed_payload())
            with anyio.fail_after(2):
                for _ in range(2):
                    with pytest.raises(JobFailedError):
                        await handle.wait(timeout=0)


class TestTimeouts:
    async def test_wait_timeout_raises_and_a_later_await_gets_the_outcome(
        self, stub: StubCobalt, sink: InMemorySink, receiver: WebhookReceiver
    ) -> None:
        """A timed-out wait detaches only; awaiting the same handle later resolves it."""
        async with make_client(stub, sink=sink) as client:
            handle = await create_task(client)
            with anyio.fail_after(2):
                with pytest.raises(JobTimeoutError) as caught:
                    await handle.wait(timeout=0.05)
                assert caught.value.job_id == JOB
                assert handle.status is JobStatus.PENDING
                assert sink.stats().pending == 0
                await deliver(receiver, task_created_payload())
                event = await handle
        assert event.type == "task.created"
        assert handle.done()

    async def test_await_uses_the_client_job_timeout(
        self, stub: StubCobalt, sink: InMemorySink
    ) -> None:
        """A bare ``await handle`` is bounded by the client's job_timeout."""
        async with make_client(stub, sink=sink, job_timeout=0.05) as client:
            handle = await create_task(client)
            with anyio.fail_after(2), pytest.raises(JobTimeoutError):
                await handle


class TestConcurrentWaiters:
    async def test_several_waiters_on_one_handle_share_the_outcome(
        self, stub: StubCobalt, sink: InMemorySink, receiver: WebhookReceiver
    ) -> None:
        """Three coroutines await one handle: one slot, one event for all."""
        results: list[TaskCreatedEvent] = []
        async with make_client(stub, sink=sink) as client:
            handle = await create_task(client)

            async def waiter() -> None:
                results.append(await handle)

            with anyio.fail_after(2):
                async with anyio.create_task_group() as tg:
                    for _ in range(3):
                        tg.start_soon(waiter)
                    await until(lambda: sink.stats().pending == 1)
                    await deliver(receiver, task_created_payload())
        assert len(results) == 3
        assert all(event is results[0] for event in results)
        assert sink.stats().pending == 0

    async def test_cancelling_one_waiter_of_a_handle_leaves_the_others(
        self, stub: StubCobalt, sink: InMemorySink, receiver: WebhookReceiver
    ) -> None:
        """A cancelled waiter detaches; its siblings still get the outcome."""
        results: list[TaskCreatedEvent] = []
        async with make_client(stub, sink=sink) as client:
            handle = await create_task(client)
            doomed = anyio.CancelScope()

            async def waiter(scope: anyio.CancelScope | None = None) -> None:
                with scope or anyio.CancelScope():
                    results.append(await handle)

            with anyio.fail_after(2):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(waiter, doomed)
                    tg.start_soon(waiter)
                    await until(lambda: sink.stats().pending == 1)
                    doomed.cancel()
                    await until(lambda: doomed.cancelled_caught)
                    assert sink.stats().pending == 1
                    await deliver(receiver, task_created_payload())
        assert len(results) == 1
        assert handle.done()


class TestAttach:
    async def test_attach_rebuilds_a_handle_that_resolves(
        self, stub: StubCobalt, sink: InMemorySink, receiver: WebhookReceiver
    ) -> None:
        """A handle rebuilt from the numeric job_id alone resolves from the sink."""
        async with make_client(stub, sink=sink) as client:
            await deliver(receiver, task_created_payload())
            handle = client.jobs.attach(JOB_NUMBER, "task")
            assert (handle.job_id, handle.kind, handle.task_id) == (JOB, "task", None)
            with anyio.fail_after(2):
                event = await handle
        assert event.data.emr_task_id == "emr-9"
        assert stub.polls == []

    async def test_attached_and_original_handles_share_the_outcome(
        self, stub: StubCobalt, sink: InMemorySink, receiver: WebhookReceiver
    ) -> None:
        """Two handles of one job wait on one slot and see one event."""
        async with make_client(stub, sink=sink) as client:
            original = await create_task(client)
            attached = client.jobs.attach(JOB, "task")
            results: dict[str, TaskCreatedEvent] = {}

            async def waiter(name: str, handle: JobHandle[TaskCreatedEvent]) -> None:
                results[name] = await handle

            with anyio.fail_after(2):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(waiter, "original", original)
                    tg.start_soon(waiter, "attached", attached)
                    await until(lambda: sink.stats().pending == 1)
                    await deliver(receiver, task_created_payload())
        assert results["original"] is results["attached"]

    async def test_attach_refuses_an_unknown_kind(
        self, stub: StubCobalt, sink: InMemorySink
    ) -> None:
        """Only 'task' and 'task_note' are kinds of jobs."""
        async with make_client(stub, sink=sink) as client:
            with pytest.raises(ValueError, match="kind"):
                client.jobs.attach(JOB, "appointment")  # type: ignore[call-overload]


class TestManyHandles:
    async def test_ten_thousand_handles_resolve_in_random_order_and_leave_nothing_pending(
        self,
    ) -> None:
        """10,000 waiting handles, webhooks in random order (half before the wait): all resolve."""
        count = 10_000
        sink = InMemorySink(max_outcomes=2 * count)
        receiver = WebhookReceiver(sink, secrets=[SECRET])
        transport = httpx.MockTransport(lambda request: httpx.Response(500))
        order = list(range(count))
        random.Random(4).shuffle(order)
        early, late = order[: count // 2], order[count // 2 :]
        resolved: dict[str, str] = {}

        async def deliver(numbers: list[int]) -> None:
            for number in numbers:
                body = json.dumps(task_created_payload(str(number), emr_task_id=f"emr-{number}"))
                raw = body.encode()
                signature = sign_webhook(raw, SECRET)
                receipt = await receiver.receive(raw, {"cobalt-verification": signature})
                assert 200 == receipt.status_code

        client = CobaltClient(
            client_id="cid",
            client_secret="csecret",
            access_token="atoken",
            sink=sink,
            transport=transport,
            poll=QUIET,
            job_timeout=None,
        )
        async with client:
            handles = [client.jobs.attach(number, "task") for number in range(count)]

            async def wait(handle: JobHandle[TaskCreatedEvent]) -> None:
                resolved[handle.job_id] = (await handle).data.emr_task_id

            with anyio.fail_after(60):
                await deliver(early)
                async with anyio.create_task_group() as tg:
                    for handle in handles:
                        tg.start_soon(wait, handle)
                    await deliver(late)

        assert {str(n): f"emr-{n}" for n in range(count)} == resolved
        assert all(handle.status is JobStatus.SUCCEEDED for handle in handles)
        stats = sink.stats()
        assert (0, count) == (stats.pending, stats.buffered)
        assert (0, 0) == (stats.duplicates, stats.conflicts)
