"""Batches: create_many outcomes, 429 back-off without duplicates, wait_all and as_completed."""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import pytest

from cobalt_async import (
    BadRequestError,
    BatchProgress,
    CobaltClient,
    CobaltConnectionError,
    CobaltError,
    InMemorySink,
    JobFailedError,
    JobHandle,
    JobTimeoutError,
    NotFoundError,
    PollPolicy,
    RateLimitError,
    RequestValidationError,
    ServerError,
    WebhookReceiver,
    as_completed,
    wait_all,
)
from cobalt_async._batch import _Throttle
from cobalt_async._config import DEFAULT_POLL_POLICY
from cobalt_async._http import MAX_RETRY_AFTER
from cobalt_async.testing import (
    FakeCobalt,
    make_task_created_event,
    make_task_failed_event,
    signed_delivery,
)

from .support import until

pytestmark = pytest.mark.anyio

LIMIT = 10.0
"""No test here may take longer than this, whatever goes wrong."""
RETRY_AFTER = 0.3
RACE = 0.05
"""A request may start this long after a 429 it could not yet know about."""


def task(mrn: str, **fields: Any) -> dict[str, Any]:
    return {"patient_mrn": mrn, "description": "Call the patient back", **fields}


class Gateway(httpx.AsyncBaseTransport):
    """
    Sits in front of a FakeCobalt: counts POSTs in flight, answers scripted 429s, and loses
    the answer of chosen MRNs after Cobalt accepted them (a 503 or a dropped connection).
    """

    def __init__(
        self,
        inner: httpx.AsyncBaseTransport,
        *,
        rate_limited: int = 0,
        lost_with_503: frozenset[str] = frozenset(),
        lost_in_transit: frozenset[str] = frozenset(),
        latency: float = 0.01,
    ) -> None:
        self.inner = inner
        self.rate_limited = rate_limited
        self.lost_with_503 = lost_with_503
        self.lost_in_transit = lost_in_transit
        self.latency = latency
        self.in_flight = 0
        self.max_in_flight = 0
        self.starts: list[float] = []
        """When each POST arrived."""
        self.refusals: list[float] = []
        """When each 429 was answered."""
        self.forwarded: Counter[str] = Counter()
        """POSTs that reached Cobalt, by patient MRN."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method != "POST":
            return await self.inner.handle_async_request(request)
        self.starts.append(anyio.current_time())
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await anyio.sleep(self.latency)  # the network, so that requests overlap
            if self.rate_limited > 0:
                self.rate_limited -= 1
                self.refusals.append(anyio.current_time())
                payload = {"success": False, "message": "Too many requests."}
                headers = {"retry-after": f"{RETRY_AFTER:g}"}
                return httpx.Response(429, json=payload, headers=headers)
            mrn = json.loads(await request.aread()).get("patient_mrn", "")
            self.forwarded[mrn] += 1
            response = await self.inner.handle_async_request(request)
            if mrn in self.lost_with_503:
                await response.aclose()
                payload = {"success": False, "message": "Service temporarily unavailable."}
                return httpx.Response(503, json=payload)
            if mrn in self.lost_in_transit:
                await response.aclose()
                raise httpx.ReadError("connection reset by peer", request=request)
            return response
        finally:
            self.in_flight -= 1


@dataclass
class Cobalt:
    fake: FakeCobalt
    client: CobaltClient
    sink: InMemorySink
    receiver: WebhookReceiver
    gateway: Gateway

    async def deliver(self, event: dict[str, Any]) -> None:
        """Deliver *event* as Cobalt would, through the webhook receiver."""
        receipt = await self.receiver.receive(*signed_delivery(event, self.fake.webhook_secret))
        assert receipt.status_code == 200


@asynccontextmanager
async def cobalt(
    *, webhooks: bool = True, poll: PollPolicy = DEFAULT_POLL_POLICY, **gateway: Any
) -> AsyncIterator[Cobalt]:
    """A FakeCobalt behind a Gateway, and a client resolving handles from its webhooks."""
    sink = InMemorySink()
    fake = FakeCobalt(latency=0.0)
    receiver = WebhookReceiver(sink, secrets=[fake.webhook_secret])
    if webhooks:
        fake.receiver = receiver
    async with fake:
        proxy = Gateway(fake.transport, **gateway)
        async with CobaltClient(
            base_url=fake.base_url, transport=proxy, sink=sink, poll=poll, **fake.credentials
        ) as client:
            yield Cobalt(fake, client, sink, receiver, proxy)


def handles_of(outcomes: list[Any]) -> list[JobHandle[Any]]:
    return [outcome for outcome in outcomes if isinstance(outcome, JobHandle)]


# -- create_many --------------------------------------------------------------------------


async def test_bad_items_get_their_own_error_and_the_rest_get_handles_in_input_order() -> None:
    """Validation, 400 and 404 errors stay with their items; the good ones are accepted."""
    items = [
        task("MRN-1", subject="Labs", assignee_user_id="U-1"),
        {"patient_mrn": "MRN-2", "subject": "Labs", "assignee_user_id": "U-1"},  # no description
        task("MRN-UNKNOWN", subject="Labs", assignee_user_id="U-1"),
        task("MRN-3"),  # the EHR profile also requires subject and assignee_user_id
        task("MRN-4", subject="Labs", assignee_user_id="U-1"),
    ]
    with anyio.fail_after(LIMIT):
        async with cobalt() as env:
            env.fake.emr_profile = "subject_assignee"
            outcomes = await env.client.tasks.create_many(items, concurrency=4)

            assert len(outcomes) == len(items)
            first, invalid, unknown, bad, last = outcomes
            assert isinstance(first, JobHandle)
            assert isinstance(last, JobHandle)
            assert isinstance(invalid, RequestValidationError)
            assert invalid.field == "description"
            assert isinstance(unknown, NotFoundError)
            assert isinstance(bad, BadRequestError)
            assert bad.field == "subject"
            assert env.fake.stats.requests == len(items) - 1  # the invalid item sent nothing
            assert env.fake.stats.tasks_accepted == 2
            created = [await first, await last]
            mrns = [event.data.model_dump()["patient_mrn"] for event in created]
            assert mrns == ["MRN-1", "MRN-4"]
            assert [event.data.task_id for event in created] == [first.task_id, last.task_id]


async def test_note_batches_keep_input_order_and_isolate_unknown_tasks() -> None:
    """A note for a task the EHR does not hold fails alone, as task_note.failed."""
    with anyio.fail_after(LIMIT):
        async with cobalt() as env:
            env.fake.add_emr_task("emr-1")
            env.fake.add_emr_task("emr-2")
            notes = [
                {"emr_task_id": "emr-1", "note": "Called"},
                {"emr_task_id": "emr-missing", "note": "Called"},
                {"emr_task_id": "emr-2", "note": "Called", "colour": "red"},
                {"emr_task_id": "emr-2", "note": "Called"},
            ]
            outcomes = await env.client.tasks.notes.create_many(notes)

            assert isinstance(outcomes[0], JobHandle)
            assert isinstance(outcomes[1], JobHandle)
            assert isinstance(outcomes[2], RequestValidationError)
            assert isinstance(outcomes[3], JobHandle)
            with pytest.raises(JobFailedError, match="task_not_found"):
                await outcomes[1]
            written = [(await outcomes[0]).data.emr_task_id, (await outcomes[3]).data.emr_task_id]
            assert written == ["emr-1", "emr-2"]


async def test_an_empty_batch_sends_nothing_and_a_zero_concurrency_is_refused() -> None:
    """Edge cases: no items gives no outcomes; concurrency below 1 is a ValueError."""
    with anyio.fail_after(LIMIT):
        async with cobalt() as env:
            assert await env.client.tasks.create_many([]) == []
            with pytest.raises(ValueError, match="concurrency"):
                await env.client.tasks.create_many([task("MRN-1")], concurrency=0)
            assert env.fake.stats.requests == 0


async def test_a_429_storm_pauses_the_batch_and_submits_every_item_exactly_once() -> None:
    """Retry-After holds back every new request; all items end with one accepted POST each."""
    items = [task(f"MRN-{index}") for index in range(40)]
    with anyio.fail_after(LIMIT):
        async with cobalt(rate_limited=12) as env:
            started = anyio.current_time()
            outcomes = await env.client.tasks.create_many(items, concurrency=8)
            elapsed = anyio.current_time() - started

            handles = handles_of(outcomes)
            assert len(handles) == len(items)
            assert env.fake.stats.tasks_accepted == len(handles)
            assert set(env.gateway.forwarded) == {item["patient_mrn"] for item in items}
            assert set(env.gateway.forwarded.values()) == {1}
            assert len({handle.job_id for handle in handles}) == len(items)
            assert elapsed >= RETRY_AFTER
            assert env.gateway.max_in_flight <= 8
            for refused_at in env.gateway.refusals:
                early = [
                    start - refused_at
                    for start in env.gateway.starts
                    if refused_at + RACE < start < refused_at + RETRY_AFTER - 0.01
                ]
                assert early == [], "requests sent while Cobalt asked the batch to wait"


async def test_concurrency_bounds_the_requests_in_flight() -> None:
    """Never more POSTs in flight than asked for, and the limit is actually used."""
    items = [task(f"MRN-{index}") for index in range(30)]
    with anyio.fail_after(LIMIT):
        async with cobalt(latency=0.02) as env:
            outcomes = await env.client.tasks.create_many(items, concurrency=5)

            assert len(handles_of(outcomes)) == len(items)
            assert env.gateway.max_in_flight == 5


async def test_a_create_whose_answer_was_lost_is_reported_and_never_resubmitted() -> None:
    """A 503 or a dropped connection after Cobalt took the request: outcome unknown, no retry."""
    items = [task("MRN-1"), task("MRN-503"), task("MRN-RESET"), task("MRN-2")]
    with anyio.fail_after(LIMIT):
        async with cobalt(
            lost_with_503=frozenset({"MRN-503"}), lost_in_transit=frozenset({"MRN-RESET"})
        ) as env:
            outcomes = await env.client.tasks.create_many(items)

            ok_1, lost_503, lost_reset, ok_2 = outcomes
            assert isinstance(ok_1, JobHandle)
            assert isinstance(ok_2, JobHandle)
            assert isinstance(lost_503, ServerError)
            assert lost_503.outcome_unknown
            assert isinstance(lost_reset, CobaltConnectionError)
            assert lost_reset.outcome_unknown
            assert env.gateway.forwarded == Counter(item["patient_mrn"] for item in items)
            assert env.fake.stats.tasks_accepted == 4  # the lost answers' jobs do exist


async def test_on_progress_is_called_once_per_item_with_monotonic_counts() -> None:
    """Each item settles once; done counts 1..N; the last report matches the outcomes."""
    items = [task(f"MRN-{index}") for index in range(12)]
    items[3] = task("MRN-UNKNOWN")
    items[7] = {"patient_mrn": "MRN-7"}
    reports: list[BatchProgress] = []
    with anyio.fail_after(LIMIT):
        async with cobalt(rate_limited=3) as env:
            outcomes = await env.client.tasks.create_many(
                items,
                concurrency=4,
                on_progress=reports.append,
            )

    assert [report.done for report in reports] == list(range(1, len(items) + 1))
    assert {report.total for report in reports} == {len(items)}
    for before, after in zip(reports, reports[1:], strict=False):
        assert before.submitted <= after.submitted
        assert before.rejected <= after.rejected
        assert before.rate_limited <= after.rate_limited
    last = reports[-1]
    assert last.submitted == len(handles_of(outcomes)) == 10
    assert last.rejected == sum(isinstance(outcome, CobaltError) for outcome in outcomes) == 2
    assert last.rate_limited == 3


# -- wait_all -----------------------------------------------------------------------------


async def test_wait_all_sorts_successes_failures_and_jobs_unknown_at_the_deadline() -> None:
    """Failures are not raised; jobs without an outcome at the deadline are named."""
    with anyio.fail_after(LIMIT):
        async with cobalt() as env:
            good = handles_of(await env.client.tasks.create_many([task("MRN-1"), task("MRN-2")]))
            env.fake.failure_rate = 1.0
            bad = handles_of(await env.client.tasks.create_many([task("MRN-3")]))
            env.fake.failure_rate = 0.0
            env.fake.latency = 60.0  # these jobs will not finish while the test runs
            slow = handles_of(await env.client.tasks.create_many([task("MRN-4"), task("MRN-5")]))
            handles = [slow[0], *good, *bad, slow[1]]

            started = anyio.current_time()
            result = await wait_all(handles, timeout=0.5)
            elapsed = anyio.current_time() - started

    assert result.succeeded == good
    assert result.failed == bad
    assert bad[0].event is not None
    assert bad[0].event.type == "task.failed"
    assert result.pending == slow
    assert result.unknown_job_ids == [handle.job_id for handle in slow]
    assert 0.5 <= elapsed < 3.0


async def test_wait_all_without_a_deadline_returns_once_every_job_finished() -> None:
    """No timeout: every handle ends up succeeded or failed, none pending."""
    with anyio.fail_after(LIMIT):
        async with cobalt() as env:
            env.fake.latency = (0.0, 0.05)
            handles = handles_of(
                await env.client.tasks.create_many([task(f"MRN-{i}") for i in range(10)])
            )
            result = await wait_all(handles)

    assert len(result.succeeded) == 10
    assert result.failed == result.pending == []
    assert result.unknown_job_ids == []


# -- as_completed ---------------------------------------------------------------------------


async def attached(env: Cobalt, *job_ids: str) -> list[JobHandle[Any]]:
    return [env.client.jobs.attach(job_id, "task") for job_id in job_ids]


async def test_as_completed_yields_handles_in_the_order_their_jobs_finish() -> None:
    """Each outcome, success or failure, is yielded as soon as it is delivered."""
    with anyio.fail_after(LIMIT):
        async with cobalt(webhooks=False) as env:
            first, second, third = await attached(env, "701", "702", "703")
            finishing = [
                (second, make_task_created_event(job_id="702")),
                (third, make_task_failed_event(job_id="703")),
                (first, make_task_created_event(job_id="701")),
            ]
            async with as_completed([first, second, third]) as finished:
                await env.deliver(finishing[0][1])
                yielded = []
                async for handle in finished:
                    yielded.append(handle)
                    assert handle.done()
                    if len(yielded) < len(finishing):
                        await env.deliver(finishing[len(yielded)][1])
                assert finished.pending == []

    assert yielded == [second, third, first]
    with pytest.raises(JobFailedError):
        await third


async def test_as_completed_stops_at_its_timeout_and_names_the_pending_handles() -> None:
    """Only finished jobs are yielded; the others are listed in ``pending`` at the deadline."""
    with anyio.fail_after(LIMIT):
        async with cobalt(webhooks=False) as env:
            done, waiting_1, waiting_2 = await attached(env, "801", "802", "803")
            await env.deliver(make_task_created_event(job_id="801"))
            started = anyio.current_time()
            async with as_completed([waiting_1, done, waiting_2], timeout=0.3) as finished:
                yielded = [handle async for handle in finished]
                pending = finished.pending
            elapsed = anyio.current_time() - started

            assert yielded == [done]
            assert pending == [waiting_1, waiting_2]
            assert 0.3 <= elapsed < 3.0
            assert env.sink.stats().pending == 0


async def test_leaving_as_completed_early_frees_every_slot_and_loses_no_outcome() -> None:
    """Breaking out stops the waits; a later outcome can still be awaited on the handle."""
    with anyio.fail_after(LIMIT):
        async with cobalt(webhooks=False) as env:
            first, second, third = await attached(env, "901", "902", "903")
            await env.deliver(make_task_created_event(job_id="902"))
            async with as_completed([first, second, third]) as finished:
                async for handle in finished:
                    assert handle is second
                    break
            assert env.sink.stats().pending == 0

            await env.deliver(make_task_created_event(job_id="903", emr_task_id="emr-903"))
            assert (await third.wait(timeout=1.0)).data.emr_task_id == "emr-903"
            assert not first.done()


async def await_each_as_completed(handles: list[JobHandle[Any]]) -> None:
    async with as_completed(handles) as finished:
        async for handle in finished:
            await handle


async def test_an_error_raised_inside_as_completed_reaches_the_caller_unwrapped() -> None:
    """``await handle`` inside the loop raises JobFailedError itself, not an ExceptionGroup."""
    with anyio.fail_after(LIMIT):
        async with cobalt(webhooks=False) as env:
            (failing, other) = await attached(env, "951", "952")
            await env.deliver(make_task_failed_event(job_id="951"))
            with pytest.raises(JobFailedError) as raised:
                await await_each_as_completed([failing, other])
            assert raised.value.job_id == "951"
            assert env.sink.stats().pending == 0


async def test_a_failing_progress_callback_loses_no_handle(
    cobalt_client: CobaltClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A callback that raises is logged; every accepted job still gets its handle."""

    def explode(progress: BatchProgress) -> None:
        raise RuntimeError("progress bar broke")

    items = [{"patient_mrn": f"MRN-{n}", "description": "Call back"} for n in range(5)]
    with anyio.fail_after(10):
        outcomes = await cobalt_client.tasks.create_many(items, on_progress=explode)  # type: ignore[arg-type]

    assert [isinstance(outcome, JobHandle) for outcome in outcomes] == [True] * 5
    assert 5 == sum("on_progress callback failed" in r.message for r in caplog.records)


@pytest.mark.parametrize(("retry_after", "pause"), [(5.0, 5.0), (100_000.0, MAX_RETRY_AFTER)])
async def test_a_batch_pause_honours_retry_after_up_to_the_single_request_cap(
    retry_after: float, pause: float
) -> None:
    """One absurd Retry-After must not stall a whole batch for a day."""
    throttle = _Throttle(8)
    error = RateLimitError(
        "slow down", method="POST", path="/v1/tasks", status_code=429, retry_after=retry_after
    )

    before = anyio.current_time()
    throttle.on_rate_limit(error, attempt=0)

    assert throttle.resume_at - before == pytest.approx(pause, abs=1.0)


# -- one waiting task for the whole set ---------------------------------------------------


def created_events(handles: list[JobHandle[Any]]) -> list[dict[str, Any]]:
    return [make_task_created_event(job_id=handle.job_id) for handle in handles]


async def test_wait_all_runs_no_task_per_handle_and_keeps_the_input_order() -> None:
    """300 handles cost one waiting task; the result lists them in input order."""
    job_ids = [str(5000 + n) for n in range(300)]
    with anyio.fail_after(LIMIT):
        async with cobalt(webhooks=False) as env:
            handles = await attached(env, *job_ids)
            results: list[Any] = []
            before = len(anyio.get_running_tasks())
            async with anyio.create_task_group() as tg:

                async def wait() -> None:
                    results.append(await wait_all(handles))

                tg.start_soon(wait)
                await until(lambda: env.sink.stats().pending == len(handles))
                during = len(anyio.get_running_tasks())
                for event in reversed(created_events(handles)):
                    await env.deliver(event)

    assert 1 == during - before
    assert handles == results[0].succeeded
    assert [] == results[0].pending


async def test_as_completed_yields_many_handles_in_the_order_their_outcomes_arrive() -> None:
    """Outcomes delivered in a shuffled order are yielded in that order."""
    with anyio.fail_after(LIMIT):
        async with cobalt(webhooks=False) as env:
            handles = await attached(env, *(str(6000 + n) for n in range(300)))
            order = random.Random(7).sample(handles, len(handles))
            async with as_completed(handles) as finished:
                await until(lambda: env.sink.stats().pending == len(handles))
                for event in created_events(order):
                    await env.deliver(event)
                yielded = [handle async for handle in finished]

    assert order == yielded


async def test_handles_finished_before_as_completed_are_yielded_first() -> None:
    """A handle that already knows its outcome is yielded at once, before the others."""
    with anyio.fail_after(LIMIT):
        async with cobalt(webhooks=False) as env:
            waiting, known = await attached(env, "6101", "6102")
            await env.deliver(make_task_created_event(job_id="6102"))
            await known
            async with as_completed([waiting, known]) as finished:
                await until(lambda: env.sink.stats().pending == 1)
                await env.deliver(make_task_created_event(job_id="6101"))
                yielded = [handle async for handle in finished]

    assert [known, waiting] == yielded


async def test_cancelling_wait_all_frees_every_slot_and_loses_no_outcome() -> None:
    """Cancelled mid-wait: no slot is left, and every outcome is still there to await."""
    with anyio.fail_after(LIMIT):
        async with cobalt(webhooks=False) as env:
            handles = await attached(env, *(str(7000 + n) for n in range(50)))
            events = created_events(handles)
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(wait_all, handles)
                    await until(lambda: env.sink.stats().pending == len(handles))
                    for event in events[:10]:
                        await env.deliver(event)
                    scope.cancel()
            assert 0 == env.sink.stats().pending
            for event in events[10:]:
                await env.deliver(event)
            resolved = [await handle.wait(timeout=1.0) for handle in handles]

    assert [handle.job_id for handle in handles] == [event.job_id for event in resolved]


async def test_wait_all_polls_each_unknown_job_once_at_its_deadline() -> None:
    """No webhook arrives: at the deadline each job is polled once, and its outcome kept."""
    with anyio.fail_after(LIMIT):
        async with cobalt() as env:
            env.fake.drop_rate = 1.0  # Cobalt records the events but never delivers them
            handles = handles_of(
                await env.client.tasks.create_many([task(f"MRN-{n}") for n in range(5)])
            )
            await env.fake.drain()
            requests = env.fake.stats.requests
            started = anyio.current_time()
            result = await wait_all(handles, timeout=0.2)
            elapsed = anyio.current_time() - started
            polls = env.fake.stats.requests - requests

    assert handles == result.succeeded
    assert {"poll"} == {handle.resolved_via for handle in handles}
    assert len(handles) == polls
    assert 0.2 <= elapsed < 3.0


async def test_the_set_polls_after_a_silence_as_each_wait_would() -> None:
    """Without a deadline, the backstop polls every job after the silence and resolves it."""
    quick = PollPolicy(silence=0.05, max_silence=0.1)
    with anyio.fail_after(LIMIT):
        async with cobalt(poll=quick) as env:
            env.fake.drop_rate = 1.0
            handles = handles_of(
                await env.client.tasks.create_many([task(f"MRN-{n}") for n in range(4)])
            )
            async with as_completed(handles) as finished:
                yielded = [handle async for handle in finished]

    assert set(handles) == set(yielded)
    assert {"poll"} == {handle.resolved_via for handle in handles}
    assert len(handles) == env.sink.stats().backstop_polls


async def test_a_set_and_a_single_wait_share_a_job_and_never_disturb_each_other() -> None:
    """One job awaited alone and in wait_all: the single wait times out, the set resolves."""
    with anyio.fail_after(LIMIT):
        async with cobalt(webhooks=False) as env:
            alone, other = await attached(env, "7101", "7102")
            results: list[Any] = []
            async with anyio.create_task_group() as tg:

                async def wait() -> None:
                    results.append(await wait_all([alone, other], timeout=5.0))

                tg.start_soon(wait)
                await until(lambda: env.sink.stats().pending == 2)
                with pytest.raises(JobTimeoutError):
                    await env.client.jobs.attach("7101", "task").wait(timeout=0.05)
                assert 2 == env.sink.stats().pending
                await env.deliver(make_task_created_event(job_id="7101"))
                await env.deliver(make_task_created_event(job_id="7102"))

    assert [alone, other] == results[0].succeeded
    assert 0 == env.sink.stats().pending


async def test_wait_all_and_as_completed_span_clients_and_repeated_jobs() -> None:
    """Handles of two clients, and one job held by two handles, all resolve."""
    with anyio.fail_after(LIMIT):
        async with AsyncExitStack() as stack:
            first = await stack.enter_async_context(cobalt(webhooks=False))
            second = await stack.enter_async_context(cobalt(webhooks=False))
            ours = await attached(first, "7201", "7201")
            theirs = await attached(second, "7202")
            handles = [ours[0], theirs[0], ours[1], ours[0]]
            results: list[Any] = []
            async with anyio.create_task_group() as tg:

                async def wait() -> None:
                    results.append(await wait_all(handles, timeout=5.0))

                tg.start_soon(wait)
                await until(lambda: first.sink.stats().pending + second.sink.stats().pending == 2)
                await first.deliver(make_task_created_event(job_id="7201"))
                await second.deliver(make_task_created_event(job_id="7202"))
            again = first.client.jobs.attach("7201", "task")
            async with as_completed([again, theirs[0], again]) as finished:
                yielded = [handle async for handle in finished]

    assert handles == results[0].succeeded
    assert [theirs[0], again, again] == yielded
