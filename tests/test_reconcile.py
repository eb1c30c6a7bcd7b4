"""
``client.jobs.reconcile()``: an outcome-unknown create is looked for in Cobalt's record, and
only a unique, exact match is called found. The simulator makes the job, then loses its answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from cobalt_async import (
    APIError,
    CobaltClient,
    InMemorySink,
    Reconciliation,
    ServerError,
    WebhookReceiver,
)
from cobalt_async.testing import FakeCobalt, signed_delivery

pytestmark = pytest.mark.anyio

TASK = {"patient_mrn": "MRN-7", "description": "Call back about the labs", "subject": "Labs"}
LIMIT = 10.0


@asynccontextmanager
async def cobalt(**knobs: Any) -> AsyncIterator[tuple[FakeCobalt, CobaltClient, InMemorySink]]:
    sink = InMemorySink()
    fake = FakeCobalt(**{"latency": 0.0, **knobs})
    fake.receiver = WebhookReceiver(sink, secrets=[fake.webhook_secret])
    async with (
        fake,
        CobaltClient(
            base_url=fake.base_url, transport=fake.transport, sink=sink, **fake.credentials
        ) as client,
    ):
        yield fake, client, sink


async def lost_create(client: CobaltClient, **fields: Any) -> APIError:
    with pytest.raises(ServerError) as caught:
        await client.tasks.create(**{**TASK, **fields})
    assert caught.value.outcome_unknown
    return caught.value


async def test_a_create_whose_answer_was_lost_is_found_and_resolved() -> None:
    """Found: a handle for that job, already resolved, and the fake made it once."""
    with anyio.fail_after(LIMIT):
        async with cobalt(lost_answer_rate=1.0) as (fake, client, sink):
            error = await lost_create(client)
            await fake.drain()
            result = await client.jobs.reconcile(error)
            assert result.found
            assert result.handle is not None
            event = await result.handle.wait(timeout=0)

    assert fake.events[0]["job_id"] == result.handle.job_id
    assert "Call back about the labs" == event.data.description
    assert (1, 1) == (fake.stats.tasks_accepted, fake.stats.answers_lost)
    assert 0 == sink.stats().duplicates  # its webhook came first: nothing stored twice


async def test_the_error_carries_the_request_and_says_how_to_find_it() -> None:
    """The advice points at reconcile(); the request's text stays out of messages and reprs."""
    async with cobalt(lost_answer_rate=1.0) as (_, client, _sink):
        error = await lost_create(client)

    assert "client.jobs.reconcile(exc)" in str(error)
    assert ("task", TASK["description"]) == (error.kind, error.request.description)
    for text in (str(error), repr(error), repr(error.request)):
        assert TASK["description"] not in text


async def test_a_job_still_running_is_not_found_yet_and_never_concluded() -> None:
    with anyio.fail_after(LIMIT):
        async with cobalt(lost_answer_rate=1.0, latency=30.0) as (_, client, _sink):
            result = await client.jobs.reconcile(await lost_create(client))

    assert ("not_found_yet", None, None) == (
        result.status,
        result.handle,
        result.safe_to_conclude_at,
    )


async def test_two_identical_lost_creates_are_ambiguous_and_nothing_is_picked() -> None:
    """Same request twice, two jobs: both candidates come back for each, none is claimed."""
    with anyio.fail_after(LIMIT):
        async with cobalt(lost_answer_rate=1.0) as (fake, client, _sink):
            errors = [await lost_create(client), await lost_create(client)]
            await fake.drain()
            results = await client.jobs.reconcile_many(errors)

    assert ["ambiguous", "ambiguous"] == [result.status for result in results]
    assert all(len(result.candidates) == 2 and result.handle is None for result in results)


async def test_a_batch_is_reconciled_with_one_walk_and_each_item_finds_its_own() -> None:
    """create_many's lost items, reconciled together: one listing read, each its own job."""
    items = [{**TASK, "patient_mrn": f"MRN-{index}"} for index in range(20)]
    with anyio.fail_after(LIMIT):
        async with cobalt(lost_answer_rate=0.5, seed=3) as (fake, client, _sink):
            results = await client.tasks.create_many(items)
            errors = [item for item in results if isinstance(item, APIError)]
            await fake.drain()
            requests_before = fake.stats.requests
            found = await client.jobs.reconcile_many(errors)
            listings = fake.stats.requests - requests_before
            events = [await result.handle.wait(timeout=0) for result in found if result.handle]

    assert errors
    assert all(result.found for result in found)
    assert 1 == listings
    mrns = [error.request.patient_mrn for error in errors if error.request is not None]
    assert mrns == [(event.data.model_extra or {})["patient_mrn"] for event in events]
    assert len(items) == fake.stats.tasks_accepted  # nothing was sent twice


async def test_a_job_this_client_already_holds_is_never_handed_out_again() -> None:
    """An accepted twin of the lost request is known: the lost one is found, not the twin."""
    with anyio.fail_after(LIMIT):
        async with cobalt() as (fake, client, _sink):
            twin = await client.tasks.create(**TASK)
            fake.lost_answer_rate = 1.0
            error = await lost_create(client)
            await fake.drain()
            result = await client.jobs.reconcile(error)

    assert result.found
    assert result.handle is not None
    assert twin.job_id != result.handle.job_id


async def test_a_failed_job_echoes_nothing_and_is_counted_unattributable() -> None:
    """task.failed carries no request field: it may be ours, and that is all that is said."""
    with anyio.fail_after(LIMIT):
        async with cobalt(lost_answer_rate=1.0, failure_rate=1.0) as (fake, client, _sink):
            error = await lost_create(client)
            await fake.drain()
            result = await client.jobs.reconcile(error)

    assert ("not_found_yet", 1) == (result.status, result.unattributable)


async def test_only_an_outcome_unknown_create_error_is_accepted() -> None:
    async with cobalt() as (_, client, _sink):
        with pytest.raises(ValueError, match="outcome is unknown"):
            await client.jobs.reconcile(APIError("x", method="GET", path="/v1/x"))


def test_reconciliation_is_public() -> None:
    assert Reconciliation("not_found_yet").safe_to_conclude_at is None


async def test_a_webhook_after_reconciliation_resolves_nothing_twice() -> None:
    """Found before its webhook came: stored then, so the late delivery is a duplicate."""
    sink = InMemorySink()
    with anyio.fail_after(LIMIT):
        async with (
            FakeCobalt(latency=0.0, lost_answer_rate=1.0) as fake,
            CobaltClient(
                base_url=fake.base_url, transport=fake.transport, sink=sink, **fake.credentials
            ) as client,
        ):
            error = await lost_create(client)  # no webhook registered: only listed
            await fake.drain()
            result = await client.jobs.reconcile(error)
            assert result.handle is not None
            await result.handle
            body, headers = signed_delivery(fake.events[0], fake.webhook_secret)
            late = await WebhookReceiver(sink, secrets=[fake.webhook_secret]).receive(body, headers)

    assert ("duplicate", "poll") == (late.result, result.handle.resolved_via)
    assert 1 == sink.stats().duplicates
