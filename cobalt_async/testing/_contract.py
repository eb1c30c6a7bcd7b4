"""
The contract every sink keeps, as tests a sink's author runs against their own sink.

Subclass :class:`SinkContract` in a test module under a ``Test`` name and implement
``make_sinks``; pytest (or unittest) collects the inherited ``test_*`` methods::

    class TestMySink(SinkContract):
        async def make_sinks(self, count: int) -> list[Sink]:
            store = f"contract-{uuid.uuid4().hex}"  # a store no other test shares
            return [MySink(url, namespace=store) for _ in range(count)]

Each test is synchronous and runs its scenario on every backend of ``backends``, bounded by
``scenario_timeout``: no test plugin is needed, and a hung sink fails instead of hanging.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, suppress
from functools import partial
from typing import ClassVar, TypeAlias

import anyio

from .._errors import JobTimeoutError
from .._outcome import Outcome, PendingJob
from ..models import Event, JobEvent, parse_event
from ..sinks import Sink
from ._factories import make_task_created_event, make_task_failed_event

Scenario: TypeAlias = Callable[["SinkContract", list[Sink]], Awaitable[None]]


def _scenario(sinks: int) -> Callable[[Scenario], Callable[[SinkContract], None]]:
    """Turn an async scenario over *sinks* sinks into a synchronous test of every backend."""

    def decorate(body: Scenario) -> Callable[[SinkContract], None]:
        def test(self: SinkContract) -> None:
            for backend in self.backends:
                anyio.run(self.play, body, sinks, backend=backend)

        # Not functools.wraps: pytest would read the scenario's signature as fixtures.
        test.__name__ = test.__qualname__ = body.__name__
        test.__doc__ = body.__doc__
        return test

    return decorate


def created(job_id: str) -> JobEvent:
    event: JobEvent = parse_event(make_task_created_event(job_id=job_id))  # type: ignore[assignment]
    return event


def failed(job_id: str) -> JobEvent:
    event: JobEvent = parse_event(make_task_failed_event(job_id=job_id))  # type: ignore[assignment]
    return event


def sync_event(event_id: str) -> Event:
    return parse_event({"id": event_id, "type": "patient.updated", "data": {}})


def total(sinks: list[Sink], counter: str) -> int:
    """A ``SinkStats`` counter summed over *sinks*, each instance once."""
    distinct = {id(sink): sink for sink in sinks}.values()
    return sum(getattr(sink.stats(), counter) for sink in distinct)


async def pending_in(sink: Sink, count: int) -> None:
    """Yield until *sink* has *count* job ids awaited (bounded by the scenario's deadline)."""
    while sink.stats().pending != count:
        await anyio.lowlevel.checkpoint()


class StoreReads:
    """Counts a sink's store reads and lets a test wait for the next one to finish."""

    def __init__(self, sink: Sink) -> None:
        self.count = 0
        self._changed = anyio.Event()
        inner = sink.get_outcomes

        async def get_outcomes(job_ids: Sequence[str]) -> dict[str, Outcome]:
            try:
                return await inner(job_ids)
            finally:
                self.count += 1
                self._changed.set()
                self._changed = anyio.Event()

        sink.get_outcomes = get_outcomes  # type: ignore[method-assign]

    async def wait_for(self, count: int) -> None:
        while self.count < count:
            await self._changed.wait()


class SinkContract(abc.ABC):
    """
    The invariants of docs/correlation.md, checked on sinks that share one store.

    Each sink that ``make_sinks`` returns stands for one process: the scenarios publish on
    one and wait on another. A sink that cannot be shared (``InMemorySink``) may return the
    same instance *count* times.
    """

    backends: ClassVar[Sequence[str]] = ("asyncio", "trio")
    """The anyio backends each scenario runs on (a sink on asyncio only sets ``("asyncio",)``)."""
    scenario_timeout: ClassVar[float] = 10.0
    """Seconds a scenario may take, sinks' opening and closing included."""

    @abc.abstractmethod
    async def make_sinks(self, count: int) -> list[Sink]:
        """*count* unopened sinks on one store that no other scenario uses."""

    async def play(self, body: Scenario, count: int) -> None:
        """Run *body* on *count* opened sinks, bounded by ``scenario_timeout``."""
        with anyio.fail_after(self.scenario_timeout):
            sinks = await self.make_sinks(count)
            async with AsyncExitStack() as stack:
                for sink in sinks:
                    await stack.enter_async_context(sink)
                await body(self, sinks)

    @_scenario(sinks=2)
    async def test_outcome_stored_before_the_wait_is_found(self, sinks: list[Sink]) -> None:
        """An outcome published before anyone waits is what a later wait returns."""
        publisher, waiter = sinks
        event = created("before")
        assert await publisher.publish(event, via="poll") == "accepted"
        outcome = await waiter.wait_for("before", timeout=None)
        assert (outcome.event, outcome.via) == (event, "poll")

    @_scenario(sinks=2)
    async def test_outcome_stored_during_the_wait_wakes_it(self, sinks: list[Sink]) -> None:
        """A wait that already read the store is woken by a publish on another sink."""
        publisher, waiter = sinks
        event = created("during")
        reads = StoreReads(waiter)
        results: list[Outcome] = []

        async def wait() -> None:
            results.append(await waiter.wait_for("during", timeout=None))

        async with anyio.create_task_group() as group:
            group.start_soon(wait)
            await pending_in(waiter, 1)
            await reads.wait_for(1)
            assert await publisher.publish(event) == "accepted"
        assert [(outcome.event, outcome.via) for outcome in results] == [(event, "webhook")]

    @_scenario(sinks=2)
    async def test_outcome_stays_readable_after_the_wait(self, sinks: list[Sink]) -> None:
        """A read outcome is not consumed: later waits, on any sink, read it again."""
        event = created("after")
        await sinks[0].publish(event)
        first = await sinks[1].wait_for("after", timeout=None)
        again = [await sink.wait_for("after", timeout=None) for sink in sinks]
        assert again == [first, first]
        assert set(await sinks[0].get_outcomes(["after", "absent"])) == {"after"}

    @_scenario(sinks=3)
    async def test_first_outcome_wins_and_every_waiter_sees_it(self, sinks: list[Sink]) -> None:
        """Two different terminal events race: one is kept, and it is all anyone sees."""
        results: list[Outcome] = []
        answers: list[str] = []

        async def wait(sink: Sink) -> None:
            results.append(await sink.wait_for("race", timeout=None))

        async def publish(sink: Sink, event: JobEvent) -> None:
            answers.append(await sink.publish(event))

        async with anyio.create_task_group() as group:
            for sink in sinks * 2:
                group.start_soon(wait, sink)
            for sink in sinks:
                await pending_in(sink, 1)
            group.start_soon(publish, sinks[0], created("race"))
            group.start_soon(publish, sinks[1], failed("race"))
        late = await sinks[2].wait_for("race", timeout=None)
        assert sorted(answers) == ["accepted", "conflict"]
        assert {outcome.event.id for outcome in [*results, late]} == {late.event.id}
        assert len(results) == 6
        assert total(sinks, "conflicts") == 1

    @_scenario(sinks=2)
    async def test_racing_puts_store_exactly_one(self, sinks: list[Sink]) -> None:
        """Concurrent ``put_if_absent`` on every sink: one stores, the rest get its outcome."""
        kept: list[Outcome | None] = []
        offered = [Outcome(created("put"), "webhook") for _ in range(8)]

        async def put(sink: Sink, outcome: Outcome) -> None:
            kept.append(await sink.put_if_absent("put", outcome))

        async with anyio.create_task_group() as group:
            for index, outcome in enumerate(offered):
                group.start_soon(put, sinks[index % 2], outcome)
        winners = [offer for offer, answer in zip(offered, kept, strict=True) if answer is None]
        assert kept.count(None) == 1
        stored = (await sinks[1].get_outcomes(["put"]))["put"]
        assert {answer.event.id for answer in kept if answer is not None} == {stored.event.id}
        assert len(winners) == 1

    @_scenario(sinks=2)
    async def test_duplicates_are_counted_and_change_nothing(self, sinks: list[Sink]) -> None:
        """The same terminal event again, on any sink or learnt by polling, is a duplicate."""
        event = created("dup")
        assert await sinks[0].publish(event) == "accepted"
        assert await sinks[1].publish(event) == "duplicate"
        assert await sinks[1].publish(event, via="poll") == "duplicate"
        outcome = await sinks[1].wait_for("dup", timeout=None)
        assert (outcome.event, outcome.via) == (event, "webhook")
        assert total(sinks, "duplicates") == 2
        assert total(sinks, "conflicts") == 0

    @_scenario(sinks=2)
    async def test_a_delivery_key_is_seen_first_once(self, sinks: list[Sink]) -> None:
        """Racing ``first_seen`` on every sink: one call sees the key first."""
        answers: list[bool] = []

        async def see(sink: Sink) -> None:
            answers.append(await sink.first_seen("delivery-key"))

        async with anyio.create_task_group() as group:
            for sink in sinks * 4:
                group.start_soon(see, sink)
        assert sorted(answers) == [False] * 7 + [True]
        assert await sinks[0].publish(sync_event("evt_sync")) == "accepted"
        assert await sinks[1].publish(sync_event("evt_sync")) == "duplicate"

    @_scenario(sinks=2)
    async def test_a_timed_out_wait_leaves_no_slot(self, sinks: list[Sink]) -> None:
        """A timeout raises, frees the slot, and the outcome is still there for a later wait."""
        with suppress(JobTimeoutError):
            await sinks[1].wait_for("late", timeout=0.05)
            msg = "a wait with nothing stored returned"  # pragma: no cover
            raise AssertionError(msg)  # pragma: no cover
        assert sinks[1].stats().pending == 0
        await sinks[0].publish(created("late"))
        assert (await sinks[1].wait_for("late", timeout=None)).event.job_id == "late"
        assert sinks[1].stats().pending == 0

    @_scenario(sinks=2)
    async def test_a_cancelled_wait_leaves_no_slot(self, sinks: list[Sink]) -> None:
        """Cancelled waits, several per job, free every slot; the outcome stays readable."""
        waiter = sinks[1]

        async def wait(job_id: str) -> None:
            await waiter.wait_for(job_id, timeout=None)

        async with anyio.create_task_group() as group:
            for job_id in ("gone-1", "gone-1", "gone-2"):
                group.start_soon(wait, job_id)
            await pending_in(waiter, 2)
            group.cancel_scope.cancel()
        assert waiter.stats().pending == 0
        await sinks[0].publish(created("gone-1"))
        assert waiter.stats().pending == 0
        assert (await waiter.wait_for("gone-1", timeout=None)).event.job_id == "gone-1"

    @_scenario(sinks=2)
    async def test_a_read_outcome_leaves_the_pending_registry(self, sinks: list[Sink]) -> None:
        """A registry-keeping sink lists a submitted job on every sink until a wait reads it."""
        submitter, waiter = sinks
        await submitter.add_pending(PendingJob("kept", "task", time.time()))
        listed = [job.job_id for job in await waiter.list_pending()]
        assert listed == (["kept"] if waiter.keeps_registry else [])
        await submitter.publish(created("kept"))
        await waiter.wait_for("kept", timeout=None)
        assert await submitter.list_pending() == []

    @_scenario(sinks=2)
    async def test_a_wait_for_many_reports_each_outcome_as_it_arrives(
        self, sinks: list[Sink]
    ) -> None:
        """``wait_many``: stored before, then during the wait, each reported once, in turn."""
        publisher, waiter = sinks
        await publisher.publish(created("many-0"))
        reads = StoreReads(waiter)
        seen: list[str] = []

        def report(job_id: str, outcome: Outcome) -> None:
            assert job_id == outcome.event.job_id
            seen.append(job_id)

        async def arrived(count: int) -> None:
            while len(seen) < count:
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as group:
            ids = ["many-0", "many-1", "many-2", "many-1"]
            group.start_soon(partial(waiter.wait_many, ids, report, timeout=None))
            await reads.wait_for(1)
            await arrived(1)
            await publisher.publish(created("many-2"))
            await arrived(2)
            await publisher.publish(failed("many-1"))
        assert seen == ["many-0", "many-2", "many-1"]
        assert waiter.stats().pending == 0
        await waiter.wait_many(["absent"], report, timeout=0.05)
        assert (len(seen), waiter.stats().pending) == (3, 0)
