"""InMemorySink: the store, dedup, bounds and diagnostics of the in-process sink."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import pytest

from cobalt_async import ConfigurationError, JobTimeoutError
from cobalt_async.models import TaskCreatedEvent, TaskFailedEvent, UnknownEvent
from cobalt_async.sinks import InMemorySink, Outcome
from tests.support import FakeClock, until

pytestmark = pytest.mark.anyio

JOB = "4242"


def created(job_id: str = JOB, *, event_id: str | None = None, emr_task_id: str = "emr-1") -> Any:
    return TaskCreatedEvent.model_validate(
        {
            "id": event_id or f"evt_ok_{job_id}",
            "type": "task.created",
            "job_id": job_id,
            "data": {"emr_task_id": emr_task_id, "task_id": "t"},
        }
    )


def failed(job_id: str = JOB, *, event_id: str | None = None) -> Any:
    return TaskFailedEvent.model_validate(
        {
            "id": event_id or f"evt_ko_{job_id}",
            "type": "task.failed",
            "job_id": job_id,
            "data": {"failure_reason": "The EMR rejected the task."},
        }
    )


def sync_event(event_id: str | None) -> UnknownEvent:
    return UnknownEvent.model_validate(
        {"id": event_id, "type": "patient.updated", "data": {"patient_mrn": "MRN-1"}}
    )


class TestArrivalOrder:
    async def test_event_published_before_the_wait_resolves_it(self) -> None:
        """An early arrival is buffered and found by the wait's store read."""
        sink = InMemorySink()
        event = created()
        assert await sink.publish(event) == "accepted"
        with anyio.fail_after(2):
            outcome = await sink.wait_for(JOB, timeout=1)
        assert outcome == Outcome(event, "webhook")
        assert sink.stats().pending == 0

    async def test_event_published_after_the_wait_started_wakes_it(self) -> None:
        """A waiter registered before the publish is woken by it."""
        sink = InMemorySink()
        event = created()
        results: list[Outcome] = []

        async def waiter() -> None:
            results.append(await sink.wait_for(JOB, timeout=None))

        with anyio.fail_after(2):
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await until(lambda: sink.stats().pending == 1)
                assert await sink.publish(event) == "accepted"
        assert results == [Outcome(event, "webhook")]
        assert sink.stats().pending == 0

    async def test_outcome_stays_readable_for_later_waits(self) -> None:
        """A resolved outcome is not consumed: a later wait reads it again."""
        sink = InMemorySink()
        event = created()
        await sink.publish(event)
        with anyio.fail_after(2):
            first = await sink.wait_for(JOB, timeout=1)
            second = await sink.wait_for(JOB, timeout=1)
        assert first.event is event
        assert second.event is event
        assert sink.stats().buffered == 1

    async def test_publish_records_how_the_outcome_was_learnt(self) -> None:
        """``via`` is kept with the outcome."""
        sink = InMemorySink()
        await sink.publish(created(), via="poll")
        assert await sink.get_outcomes([JOB, "other"]) == {JOB: Outcome(created(), "poll")}

    async def test_job_id_of_the_event_is_the_key(self) -> None:
        """An event resolves only the job named by its job_id."""
        sink = InMemorySink()
        await sink.publish(created("1"))
        with anyio.fail_after(2), pytest.raises(JobTimeoutError):
            await sink.wait_for("2", timeout=0.05)
        assert (await sink.wait_for("1", timeout=0)).event.job_id == "1"


class TestDuplicates:
    async def test_duplicate_terminal_publish_is_answered_and_counted(self) -> None:
        """The same terminal event twice: ``duplicate`` and one count, one stored outcome."""
        sink = InMemorySink()
        event = created()
        assert await sink.publish(event) == "accepted"
        assert await sink.publish(event) == "duplicate"
        stats = sink.stats()
        assert (stats.duplicates, stats.conflicts, stats.buffered) == (1, 0, 1)

    async def test_duplicate_resolves_nothing_twice(self) -> None:
        """A duplicate, even learnt another way, does not replace the stored outcome."""
        sink = InMemorySink()
        event = created()
        await sink.publish(event, via="webhook")
        with anyio.fail_after(2):
            first = await sink.wait_for(JOB, timeout=1)
        assert await sink.publish(event, via="poll") == "duplicate"
        with anyio.fail_after(2):
            again = await sink.wait_for(JOB, timeout=1)
        assert first == again == Outcome(event, "webhook")

    async def test_same_event_under_another_id_is_a_duplicate_not_a_conflict(self) -> None:
        """A polled copy of the webhook event (other id, same type and data) is a duplicate."""
        sink = InMemorySink()
        await sink.publish(created(event_id="evt_webhook"))
        assert await sink.publish(created(event_id="evt_record"), via="poll") == "duplicate"
        assert sink.stats().conflicts == 0


class TestConflicts:
    async def test_second_different_terminal_event_is_ignored_and_counted(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """First terminal event wins; a different second one is logged and counted."""
        sink = InMemorySink()
        first = created()
        with caplog.at_level(logging.WARNING, logger="cobalt_async.sinks"):
            assert await sink.publish(first) == "accepted"
            assert await sink.publish(failed()) == "conflict"
        assert sink.stats().conflicts == 1
        assert sink.stats().duplicates == 0
        assert (await sink.get_outcomes([JOB]))[JOB].event is first
        assert any(JOB in record.getMessage() for record in caplog.records)

    async def test_every_waiter_sees_the_first_event_after_a_conflict(self) -> None:
        """Waiters before and after a conflict all get the first event."""
        sink = InMemorySink()
        first = created()
        results: list[Outcome] = []

        async def waiter() -> None:
            results.append(await sink.wait_for(JOB, timeout=None))

        with anyio.fail_after(2):
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(waiter)
                await until(lambda: sink.stats().pending == 1)
                await sink.publish(first)
                await sink.publish(failed())
            late = await sink.wait_for(JOB, timeout=1)
        assert [outcome.event for outcome in results] == [first, first, first]
        assert late.event is first

    async def test_conflict_before_any_waiter_keeps_the_first(self) -> None:
        """A conflict among early arrivals also keeps the first."""
        sink = InMemorySink()
        await sink.publish(failed())
        await sink.publish(created())
        with anyio.fail_after(2):
            outcome = await sink.wait_for(JOB, timeout=1)
        assert outcome.event.type == "task.failed"


class TestNonTerminalEvents:
    async def test_non_terminal_event_is_deduplicated_by_its_id(self) -> None:
        """The event id is the dedup key of a non-terminal event."""
        sink = InMemorySink()
        assert await sink.publish(sync_event("evt_sync"), delivery_id="d1") == "accepted"
        assert await sink.publish(sync_event("evt_sync"), delivery_id="d2") == "duplicate"
        assert sink.stats().duplicates == 1

    async def test_non_terminal_event_without_id_is_deduplicated_by_delivery_id(self) -> None:
        """Without an event id the webhook-id header is the key."""
        sink = InMemorySink()
        assert await sink.publish(sync_event(None), delivery_id="d1") == "accepted"
        assert await sink.publish(sync_event(None), delivery_id="d1") == "duplicate"
        assert await sink.publish(sync_event(None), delivery_id="d2") == "accepted"
        assert sink.stats().duplicates == 1

    async def test_non_terminal_event_without_any_key_is_always_accepted(self) -> None:
        """Nothing to dedup on: every delivery is accepted."""
        sink = InMemorySink()
        assert await sink.publish(sync_event(None)) == "accepted"
        assert await sink.publish(sync_event(None)) == "accepted"
        assert sink.stats().duplicates == 0

    async def test_non_terminal_event_stores_no_outcome(self) -> None:
        """Sync events are not correlated: nothing is buffered."""
        sink = InMemorySink()
        await sink.publish(sync_event("evt_sync"))
        assert sink.stats().buffered == 0


class TestBounds:
    async def test_outcome_is_kept_until_its_ttl(self, clock: FakeClock) -> None:
        """Just before the TTL a late wait still reads the outcome."""
        sink = InMemorySink(outcome_ttl=10)
        await sink.publish(created())
        clock.advance(9.9)
        with anyio.fail_after(2):
            outcome = await sink.wait_for(JOB, timeout=0)
        assert outcome.event.job_id == JOB
        assert sink.stats().evicted == 0

    async def test_outcome_expires_after_its_ttl(self, clock: FakeClock) -> None:
        """After the TTL the outcome is gone and counted as evicted."""
        sink = InMemorySink(outcome_ttl=10)
        await sink.publish(created())
        clock.advance(10)
        stats = sink.stats()
        assert (stats.buffered, stats.evicted) == (0, 1)
        assert await sink.get_outcomes([JOB]) == {}
        with anyio.fail_after(2), pytest.raises(JobTimeoutError):
            await sink.wait_for(JOB, timeout=0.05)

    async def test_outcome_buffer_is_bounded_oldest_first(self, clock: FakeClock) -> None:
        """Over max_outcomes the oldest outcomes are dropped and counted."""
        sink = InMemorySink(max_outcomes=2)
        for job_id in ("1", "2", "3"):
            await sink.publish(created(job_id))
        stats = sink.stats()
        assert (stats.buffered, stats.evicted) == (2, 1)
        assert set(await sink.get_outcomes(["1", "2", "3"])) == {"2", "3"}

    async def test_expired_outcome_may_be_stored_again(self, clock: FakeClock) -> None:
        """Once expired, a replay is a new outcome, not a duplicate (the bound wins)."""
        sink = InMemorySink(outcome_ttl=10)
        await sink.publish(created())
        clock.advance(11)
        assert await sink.publish(created()) == "accepted"
        assert sink.stats().buffered == 1

    async def test_dedup_ids_expire_after_their_ttl(self, clock: FakeClock) -> None:
        """A dedup id is forgotten after dedup_ttl and counted as evicted."""
        sink = InMemorySink(dedup_ttl=5)
        await sink.publish(sync_event("evt_sync"))
        clock.advance(4)
        assert await sink.publish(sync_event("evt_sync")) == "duplicate"
        clock.advance(1)
        assert await sink.publish(sync_event("evt_sync")) == "accepted"
        assert sink.stats().evicted == 1

    async def test_dedup_ids_are_bounded_oldest_first(self, clock: FakeClock) -> None:
        """Over max_dedup_ids the oldest ids are forgotten and counted."""
        sink = InMemorySink(max_dedup_ids=2)
        for event_id in ("a", "b", "c"):
            await sink.publish(sync_event(event_id))
        assert sink.stats().evicted == 1
        assert await sink.publish(sync_event("c")) == "duplicate"
        assert await sink.publish(sync_event("a")) == "accepted"

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"outcome_ttl": 0},
            {"dedup_ttl": -1},
            {"max_outcomes": 0},
            {"max_dedup_ids": 0},
        ],
    )
    def test_rejects_non_positive_ttls_and_bounds(self, kwargs: dict[str, float]) -> None:
        """A zero TTL or bound would drop every outcome: refused up front."""
        with pytest.raises(ConfigurationError):
            InMemorySink(**kwargs)  # type: ignore[arg-type]


class TestUnclaimed:
    async def test_unawaited_outcomes_expiring_are_counted_and_warned_once(
        self, clock: FakeClock, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Outcomes nobody awaited count as unclaimed; one warning points to RedisSink."""
        sink = InMemorySink(outcome_ttl=10)
        with caplog.at_level(logging.WARNING, logger="cobalt_async.sinks"):
            await sink.publish(created("1"))
            await sink.publish(created("2"))
            clock.advance(10)
            assert sink.stats().unclaimed == 2
            await sink.publish(created("3"))
            clock.advance(10)
            assert sink.stats().unclaimed == 3
        warnings = [r for r in caplog.records if "RedisSink" in r.getMessage()]
        assert len(warnings) == 1
        assert warnings[0].levelno == logging.WARNING

    async def test_outcome_read_by_a_wait_is_not_unclaimed(
        self, clock: FakeClock, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An early arrival that a wait then read was claimed."""
        sink = InMemorySink(outcome_ttl=10)
        with caplog.at_level(logging.WARNING, logger="cobalt_async.sinks"):
            await sink.publish(created())
            with anyio.fail_after(2):
                await sink.wait_for(JOB, timeout=1)
            clock.advance(10)
            stats = sink.stats()
        assert (stats.evicted, stats.unclaimed) == (1, 0)
        assert not [r for r in caplog.records if "RedisSink" in r.getMessage()]

    async def test_outcome_published_to_a_waiter_is_not_unclaimed(self, clock: FakeClock) -> None:
        """An outcome that resolved a waiting slot was claimed at once."""
        sink = InMemorySink(outcome_ttl=10)
        with anyio.fail_after(2):
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: sink.wait_for(JOB, timeout=None))
                await until(lambda: sink.stats().pending == 1)
                await sink.publish(created())
        clock.advance(10)
        assert sink.stats().unclaimed == 0

    async def test_size_eviction_of_unawaited_outcomes_counts_unclaimed(
        self, clock: FakeClock
    ) -> None:
        """Pushed out by the size bound before anyone read it: unclaimed too."""
        sink = InMemorySink(max_outcomes=1)
        await sink.publish(created("1"))
        await sink.publish(created("2"))
        assert sink.stats().unclaimed == 1


class TestRepr:
    async def test_repr_shows_buffered_and_pending(self) -> None:
        """The repr is a diagnostic summary."""
        sink = InMemorySink()
        await sink.publish(created())
        assert repr(sink) == "<InMemorySink buffered=1 pending=0>"
