"""Outcomes of jobs this client submitted are kept until a wait reads them, however many."""

from __future__ import annotations

import itertools

import anyio
import httpx
import pytest

from cobalt_async import CobaltClient, InMemorySink, PollPolicy, WebhookReceiver, wait_all
from cobalt_async.sinks import PendingJob
from cobalt_async.testing import make_task_created_event, signed_delivery
from tests.support import SECRET, fake_clock

pytestmark = pytest.mark.anyio

JOBS = 25_000
BOUND = 1_000


def early_webhooks(receiver: WebhookReceiver) -> httpx.MockTransport:
    """Cobalt accepting every task and delivering its webhook before the POST answer."""
    numbers = itertools.count(1)

    async def handle(request: httpx.Request) -> httpx.Response:
        job_id = str(next(numbers))
        body, headers = signed_delivery(make_task_created_event(job_id=job_id), SECRET)
        assert (await receiver.receive(body, headers)).status_code == 200
        return httpx.Response(200, json={"success": True, "task_id": "t", "job_id": job_id})

    return httpx.MockTransport(handle)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the sink's logic has no backend in it
@pytest.mark.slow
async def test_a_batch_larger_than_the_bound_loses_no_early_outcome() -> None:
    """25,000 fast jobs, a bound of 1,000: every handle resolves from the sink, none polls."""
    sink = InMemorySink(max_outcomes=BOUND)
    receiver = WebhookReceiver(sink, secrets=[SECRET])
    items = [{"patient_mrn": "MRN-1", "description": "Call"} for _ in range(JOBS)]
    async with CobaltClient(
        client_id="cid",
        client_secret="csecret",
        access_token="tok",
        base_url="https://api.cobalt.test/v1",
        sink=sink,
        transport=early_webhooks(receiver),
        poll=PollPolicy(silence=600.0, max_silence=600.0),
    ) as client:
        with anyio.fail_after(120):
            handles = await client.tasks.create_many(items, concurrency=64)
            assert sink.stats().buffered == JOBS  # all held before any wait
            result = await wait_all(handles, timeout=60)  # type: ignore[arg-type]

    assert (JOBS, [], []) == (len(result.succeeded), result.failed, result.pending)
    assert (0, 0) == (sink.stats().backstop_polls, sink.stats().unclaimed)
    # Once read they are bounded again, the oldest evicted, as any outcome is.
    assert (BOUND, JOBS - BOUND) == (sink.stats().buffered, sink.stats().evicted)


async def test_the_bound_still_applies_to_jobs_this_process_did_not_submit() -> None:
    """An outcome for a job nobody here submitted is evicted past the bound, as before."""
    sink = InMemorySink(max_outcomes=2)
    receiver = WebhookReceiver(sink, secrets=[SECRET])
    for job_id in ("1", "2", "3"):
        body, headers = signed_delivery(make_task_created_event(job_id=job_id), SECRET)
        await receiver.receive(body, headers)

    assert (2, 1) == (sink.stats().buffered, sink.stats().evicted)
    assert ["2", "3"] == sorted(await sink.get_outcomes(["1", "2", "3"]))


async def test_a_held_outcome_nobody_reads_still_expires_with_its_ttl() -> None:
    """Kept past the bound, never past the TTL: it is counted unclaimed when it goes."""
    with fake_clock() as clock:
        sink = InMemorySink(outcome_ttl=10.0, max_outcomes=1)
        receiver = WebhookReceiver(sink, secrets=[SECRET])
        for job_id in ("1", "2"):
            await sink.add_pending(PendingJob(job_id, "task", 0.0))
            body, headers = signed_delivery(make_task_created_event(job_id=job_id), SECRET)
            await receiver.receive(body, headers)
        assert 2 == sink.stats().buffered
        clock.advance(11.0)

        assert (0, 2, 2) == (
            sink.stats().buffered,
            sink.stats().evicted,
            sink.stats().unclaimed,
        )
