"""Resolving by polling GET /v1/webhook-events: the only way without a sink, a backstop with one."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import anyio
import pytest

from cobalt_async import (
    ClientClosedError,
    ConfigurationError,
    InMemorySink,
    JobFailedError,
    JobTimeoutError,
    PollPolicy,
    TaskCreatedEvent,
    WebhookReceiver,
)
from cobalt_async.sinks import Outcome
from tests.support import (
    JOB,
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

FAST = PollPolicy(interval=0.02, max_interval=0.08, backoff=2.0)
"""Polling without a sink, scaled down: 0.02, 0.04, 0.08, 0.08, ... seconds apart."""


def new_record(payload: dict[str, Any]) -> dict[str, Any]:
    """A ``GET /v1/webhook-events`` item in the newer shape."""
    return {
        "event_id": payload["id"],
        "event_type": payload["type"],
        "webhook_url": "https://example.test/webhooks/cobalt",
        "delivery_status": "failed",
        "data": payload["data"],
        "created_at": "2026-01-01T00:00:00Z",
        "job_id": payload["job_id"],
        "access_token_reference_id": "atr_test",
    }


def old_record(payload: dict[str, Any]) -> dict[str, Any]:
    """A ``GET /v1/webhook-events`` item in the older shape."""
    return {
        "id": payload["id"],
        "access_token_reference_id": "atr_test",
        "object": "event",
        "created": "2026-01-01T00:00:00.000Z",
        "type": payload["type"],
        "job_id": payload["job_id"],
        "status": "failed",
        "delivered": False,
        "delivery_attempts": 2,
        "last_delivery_attempt": "2026-01-01T00:00:03.000Z",
        "response_status_code": 503,
        "data": payload["data"],
    }


class CountingSink(InMemorySink):
    """An InMemorySink that counts store reads: each new waiter reads once."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def get_outcomes(self, job_ids: Sequence[str]) -> dict[str, Outcome]:
        self.reads += 1
        return await super().get_outcomes(job_ids)


def gaps(start: float, times: list[float]) -> list[float]:
    points = [start, *times]
    return [later - earlier for earlier, later in zip(points, points[1:], strict=False)]


class TestPollPolicy:
    @pytest.mark.parametrize("webhooks_expected", [False, True])
    def test_default_policy_never_polls_faster_than_once_a_second(
        self, webhooks_expected: bool
    ) -> None:
        """Cobalt's own helper polls every 1 s: the default never goes below that."""
        policy = PollPolicy()
        delay = policy.first_delay(webhooks_expected=webhooks_expected)
        delays = [delay]
        for _ in range(30):
            delay = policy.next_delay(delay, webhooks_expected=webhooks_expected)
            delays.append(delay)
        assert min(delays) >= 1.0
        assert delays == sorted(delays)

    def test_interval_grows_by_backoff_up_to_max_interval(self) -> None:
        """Without webhooks: interval, times backoff, capped at max_interval."""
        policy = PollPolicy(interval=1.0, backoff=2.0, max_interval=5.0)
        delay = policy.first_delay(webhooks_expected=False)
        delays = [delay]
        for _ in range(4):
            delay = policy.next_delay(delay, webhooks_expected=False)
            delays.append(delay)
        assert delays == [1.0, 2.0, 4.0, 5.0, 5.0]

    def test_silence_grows_up_to_max_silence(self) -> None:
        """With webhooks: the default backstop waits 60 s, backing off to 120 s."""
        policy = PollPolicy()
        delay = policy.first_delay(webhooks_expected=True)
        delays = [delay]
        for _ in range(4):
            delay = policy.next_delay(delay, webhooks_expected=True)
            delays.append(delay)
        assert delays == [60.0, 90.0, 120.0, 120.0, 120.0]

    def test_backoff_of_one_keeps_a_fixed_interval(self) -> None:
        """backoff=1 polls at a constant pace."""
        policy = PollPolicy(interval=2.0, backoff=1.0)
        assert policy.next_delay(2.0, webhooks_expected=False) == 2.0

    def test_a_cap_below_the_interval_never_shortens_the_pause(self) -> None:
        """max_interval below interval keeps the interval: never faster than asked."""
        policy = PollPolicy(interval=5.0, max_interval=2.0)
        assert policy.next_delay(5.0, webhooks_expected=False) == 5.0

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"interval": 0.0},
            {"interval": -1.0},
            {"silence": 0.0},
            {"backoff": 0.5},
            {"interval": math.nan},
            {"silence": math.nan},
            {"backoff": math.nan},
        ],
    )
    def test_rejects_values_that_would_spin_or_never_poll(self, kwargs: dict[str, float]) -> None:
        """Zero, negative or NaN pauses and shrinking backoffs are configuration errors."""
        with pytest.raises(ConfigurationError):
            PollPolicy(**kwargs)


class TestPollingWithoutSink:
    async def test_handle_resolves_by_polling_its_job_id(self) -> None:
        """No sink: GET /v1/webhook-events?job_id= until the outcome shows up."""
        stub = StubCobalt()
        stub.records = [new_record(task_created_payload())]
        stub.records_from_poll = 3
        async with make_client(stub, sink=None, poll=FAST) as client:
            handle = await create_task(client)
            with anyio.fail_after(3):
                event = await handle
        assert event.data.emr_task_id == "emr-9"
        assert handle.resolved_via == "poll"
        assert len(stub.polls) == 3
        assert {request.url.params["job_id"] for request in stub.polls} == {JOB}
        assert client.sink.stats().backstop_polls == 3
        assert client.sink.stats().pending == 0

    async def test_polls_back_off_up_to_max_interval(self) -> None:
        """Pauses grow by backoff (0.02, 0.04, 0.08) and then stay at max_interval."""
        stub = StubCobalt()
        stub.records = [new_record(task_created_payload())]
        stub.records_from_poll = 6
        async with make_client(stub, sink=None, poll=FAST) as client:
            handle = await create_task(client)
            with anyio.fail_after(3):
                start = anyio.current_time()
                await handle
        expected = [0.02, 0.04, 0.08, 0.08, 0.08, 0.08]
        measured = gaps(start, stub.poll_times)
        assert len(measured) == len(expected)
        for gap, pause in zip(measured, expected, strict=True):
            assert pause * 0.9 <= gap < pause + 0.15, (measured, expected)
        assert measured[2] > 1.5 * measured[0]
        assert max(measured) < 0.3, "backed off past max_interval (uncapped: 0.32, 0.64)"

    @pytest.mark.parametrize("shape", [new_record, old_record], ids=["new-shape", "old-shape"])
    async def test_both_record_shapes_resolve_the_handle(self, shape: object) -> None:
        """Newer (event_id, event_type, created_at) and older (id, type, created) records."""
        stub = StubCobalt()
        payload = task_created_payload(emr_task_id="emr-shape")
        stub.records = [shape(payload)]  # type: ignore[operator]
        async with make_client(stub, sink=None, poll=FAST) as client:
            handle = await create_task(client)
            with anyio.fail_after(3):
                event = await handle
        assert isinstance(event, TaskCreatedEvent)
        assert (event.id, event.job_id) == (payload["id"], JOB)
        assert event.data.emr_task_id == "emr-shape"

    async def test_failure_found_by_polling_raises_job_failed_error(self) -> None:
        """A polled task.failed record raises JobFailedError with its reasons."""
        stub = StubCobalt()
        stub.records = [old_record(task_failed_payload())]
        async with make_client(stub, sink=None, poll=FAST) as client:
            handle = await create_task(client)
            with anyio.fail_after(3), pytest.raises(JobFailedError) as caught:
                await handle
        assert caught.value.failure_reason == "Patient not found; Assignee unknown"
        assert len(caught.value.reasons) == 2
        assert handle.resolved_via == "poll"

    @pytest.mark.parametrize(
        "fault", ["fail_polls", "garbage_polls"], ids=["answered-500", "unreadable-200"]
    )
    async def test_a_failed_poll_does_not_break_the_wait(
        self, fault: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A 500, or a 200 that is not Cobalt's JSON (a proxy page), fails that poll only."""
        stub = StubCobalt()
        stub.records = [new_record(task_created_payload())]
        setattr(stub, fault, 1)
        async with make_client(stub, sink=None, poll=FAST) as client:
            handle = await create_task(client)
            with anyio.fail_after(3), caplog.at_level(logging.WARNING):
                event = await handle
        assert event.job_id == JOB
        assert len(stub.polls) == 2
        assert any("backstop poll" in record.getMessage() for record in caplog.records)

    async def test_other_jobs_events_never_resolve_the_wrong_job(self) -> None:
        """An older API ignoring the job_id filter returns other jobs' outcomes: skipped."""
        stub = StubCobalt()
        stub.ignore_job_filter = True
        stub.records = [
            new_record(task_created_payload("99999")),
            old_record(task_failed_payload("55555")),
        ]
        async with make_client(stub, sink=None, poll=FAST) as client:
            handle = await create_task(client)
            with anyio.fail_after(3):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(handle.wait)
                    await until(lambda: len(stub.polls) >= 2)
                    assert not handle.done()
                    stub.records.append(old_record(task_created_payload(JOB)))
            event = await handle
        assert event.job_id == JOB

    async def test_closed_client_without_sink_refuses_to_wait(self) -> None:
        """Nothing can resolve a job once the only way, polling, is closed."""
        stub = StubCobalt()
        async with make_client(stub, sink=None, poll=FAST) as client:
            handle = await create_task(client)
        with anyio.fail_after(2), pytest.raises(ClientClosedError):
            await handle


class TestBackstopWithSink:
    async def test_webhook_within_the_silence_means_no_poll(self) -> None:
        """The webhook came: no poll at all."""
        stub, sink = StubCobalt(), InMemorySink()
        receiver = WebhookReceiver(sink, secrets=[SECRET])
        async with make_client(stub, sink=sink, poll=QUIET) as client:
            handle = await create_task(client)
            with anyio.fail_after(2):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(handle.wait)
                    await until(lambda: sink.stats().pending == 1)
                    await deliver(receiver, task_created_payload())
        assert handle.resolved_via == "webhook"
        assert stub.polls == []
        assert sink.stats().backstop_polls == 0

    async def test_backstop_poll_after_the_silence_resolves_the_handle(self) -> None:
        """No webhook: one poll, not before `silence`, and it resolves with via="poll"."""
        stub, sink = StubCobalt(), InMemorySink()
        stub.records = [new_record(task_created_payload())]
        policy = PollPolicy(silence=0.1, max_silence=0.1)
        async with make_client(stub, sink=sink, poll=policy) as client:
            handle = await create_task(client)
            with anyio.fail_after(2):
                start = anyio.current_time()
                event = await handle
        assert handle.resolved_via == "poll"
        assert event.job_id == JOB
        assert len(stub.polls) == 1
        assert stub.poll_times[0] - start >= 0.09
        assert stub.polls[0].url.params["job_id"] == JOB
        assert sink.stats().backstop_polls == 1

    async def test_polled_outcome_is_published_to_the_sink(self) -> None:
        """The polled event goes through the sink: stored, and a late webhook is a duplicate."""
        stub, sink = StubCobalt(), InMemorySink()
        receiver = WebhookReceiver(sink, secrets=[SECRET])
        stub.records = [new_record(task_created_payload())]
        policy = PollPolicy(silence=0.05, max_silence=0.05)
        async with make_client(stub, sink=sink, poll=policy) as client:
            handle = await create_task(client)
            with anyio.fail_after(2):
                await handle
            stored = await sink.get_outcomes([JOB])
            await deliver(receiver, task_created_payload())
        assert stored[JOB].via == "poll"
        assert sink.stats().duplicates == 1

    async def test_polled_outcome_loses_to_the_stored_first_one(self) -> None:
        """A poll that finds a different event than the store kept gives the stored one."""

        class LaggingSink(InMemorySink):
            async def get_outcomes(self, job_ids: Sequence[str]) -> dict[str, Outcome]:
                return {}  # a read that misses what was stored (a lagging replica, say)

        stub, sink = StubCobalt(), LaggingSink()
        receiver = WebhookReceiver(sink, secrets=[SECRET])
        stub.records = [new_record(task_created_payload())]
        policy = PollPolicy(silence=0.05, max_silence=0.05)
        async with make_client(stub, sink=sink, poll=policy) as client:
            handle = await create_task(client)
            await deliver(receiver, task_failed_payload())
            with anyio.fail_after(2), pytest.raises(JobFailedError):
                await handle
        assert 1 == sink.stats().conflicts
        assert [JOB] == [poll.url.params["job_id"] for poll in stub.polls]

    async def test_waiters_of_one_job_share_its_backstop_poll(self) -> None:
        """Two handles of one job: one poll per period, not one per waiter."""
        stub, sink = StubCobalt(), InMemorySink()
        stub.records = [new_record(task_created_payload())]
        policy = PollPolicy(silence=0.05, max_silence=0.05)
        async with make_client(stub, sink=sink, poll=policy) as client:
            handle = await create_task(client)
            other = client.jobs.attach(JOB, "task")
            with anyio.fail_after(2):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(handle.wait)
                    tg.start_soon(other.wait)
        assert handle.done()
        assert other.done()
        assert len(stub.polls) == 1

    async def test_waiter_cancelled_mid_poll_leaves_the_polling_to_its_sibling(self) -> None:
        """The poller is cancelled while its poll hangs: the other waiter polls next."""
        stub, sink = StubCobalt(), CountingSink()
        stub.records = [new_record(task_created_payload())]
        stub.first_poll_gate = anyio.Event()
        policy = PollPolicy(silence=0.05, max_silence=0.05)
        async with make_client(stub, sink=sink, poll=policy) as client:
            handle = await create_task(client)
            sibling = client.jobs.attach(JOB, "task")
            poller = anyio.CancelScope()

            async def first_waiter() -> None:
                with poller:
                    await handle.wait()

            with anyio.fail_after(3):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(first_waiter)
                    await until(lambda: len(stub.polls) == 1)
                    tg.start_soon(sibling.wait)
                    await until(lambda: sink.reads == 2)  # the sibling joined the slot
                    poller.cancel()
                    await until(lambda: poller.cancelled_caught)
        assert not handle.done()
        assert sibling.done()
        assert sibling.resolved_via == "poll"
        assert len(stub.polls) == 2
        assert sink.stats().pending == 0

    async def test_exactly_one_final_poll_is_made_before_the_timeout(self) -> None:
        """Silence longer than the timeout: the only poll is the last look at the deadline."""
        stub, sink = StubCobalt(), InMemorySink()
        async with make_client(stub, sink=sink, poll=QUIET) as client:
            handle = await create_task(client)
            with anyio.fail_after(2):
                start = anyio.current_time()
                with pytest.raises(JobTimeoutError):
                    await handle.wait(timeout=0.1)
        assert len(stub.polls) == 1
        assert stub.poll_times[0] - start >= 0.09
        assert sink.stats().backstop_polls == 1
        assert sink.stats().pending == 0

    async def test_final_poll_that_finds_the_outcome_returns_it(self) -> None:
        """The last look before giving up resolves the handle instead of timing out."""
        stub, sink = StubCobalt(), InMemorySink()
        stub.records = [old_record(task_created_payload())]
        async with make_client(stub, sink=sink, poll=QUIET) as client:
            handle = await create_task(client)
            with anyio.fail_after(2):
                event = await handle.wait(timeout=0.05)
        assert event.job_id == JOB
        assert handle.resolved_via == "poll"
        assert len(stub.polls) == 1

    async def test_failing_final_poll_still_raises_job_timeout_error(self) -> None:
        """A 500 on the last look is not the error the caller gets: it is the timeout."""
        stub, sink = StubCobalt(), InMemorySink()
        stub.fail_polls = 1
        async with make_client(stub, sink=sink, poll=QUIET) as client:
            handle = await create_task(client)
            with anyio.fail_after(2), pytest.raises(JobTimeoutError):
                await handle.wait(timeout=0.05)
        assert len(stub.polls) == 1

    async def test_backstop_polls_back_off_until_the_webhook_comes(self) -> None:
        """Each silent period is longer, up to max_silence; the webhook then ends it."""
        stub, sink = StubCobalt(), InMemorySink()
        receiver = WebhookReceiver(sink, secrets=[SECRET])
        policy = PollPolicy(silence=0.02, max_silence=0.04, backoff=2.0)
        async with make_client(stub, sink=sink, poll=policy) as client:
            handle = await create_task(client)
            with anyio.fail_after(3):
                async with anyio.create_task_group() as tg:
                    start = anyio.current_time()
                    tg.start_soon(handle.wait)
                    await until(lambda: len(stub.polls) == 4)
                    await deliver(receiver, task_created_payload())
        measured = gaps(start, stub.poll_times[:4])
        for gap, pause in zip(measured, [0.02, 0.04, 0.04, 0.04], strict=True):
            assert pause * 0.9 <= gap < pause + 0.15, measured
        assert handle.resolved_via == "webhook"
        assert sink.stats().backstop_polls == len(stub.polls)
