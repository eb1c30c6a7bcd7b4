"""
The correlation protocol and invariants I1-I4 (docs/correlation.md).

I1 no lost wake-up, I2 one consistent outcome, I3 bounded memory, I4 detach is not cancel.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Future
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from cobalt_async import JobTimeoutError, PollPolicy, SinkUnavailableError
from cobalt_async.models import JobEvent, TaskCreatedEvent, TaskFailedEvent, UnknownEvent
from cobalt_async.sinks import InMemorySink, Outcome, Sink, StoreStats
from tests.support import fake_clock, until

pytestmark = pytest.mark.anyio

JOB = "777"


def created(job_id: str = JOB) -> Any:
    return TaskCreatedEvent.model_validate(
        {
            "id": f"evt_ok_{job_id}",
            "type": "task.created",
            "job_id": job_id,
            "data": {"emr_task_id": f"emr-{job_id}"},
        }
    )


def failed(job_id: str = JOB) -> Any:
    return TaskFailedEvent.model_validate(
        {
            "id": f"evt_ko_{job_id}",
            "type": "task.failed",
            "job_id": job_id,
            "data": {"failure_reason": "rejected"},
        }
    )


class Waiters:
    """Waiters of a sink, each in its own cancel scope, with their results."""

    def __init__(self, sink: Sink, tg: anyio.abc.TaskGroup) -> None:
        self.sink = sink
        self.tg = tg
        self.scopes: list[anyio.CancelScope] = []
        self.results: dict[int, Outcome | BaseException | str] = {}

    def start(self, job_id: str = JOB, timeout: float | None = None) -> int:
        index = len(self.scopes)
        scope = anyio.CancelScope()
        self.scopes.append(scope)
        self.tg.start_soon(self._run, index, scope, job_id, timeout)
        return index

    async def _run(
        self, index: int, scope: anyio.CancelScope, job_id: str, timeout: float | None
    ) -> None:
        with scope:
            try:
                self.results[index] = await self.sink.wait_for(job_id, timeout=timeout)
            except JobTimeoutError as exc:
                self.results[index] = exc
        if scope.cancelled_caught:
            self.results[index] = "cancelled"

    async def finished(self, *indexes: int) -> None:
        await until(lambda: all(index in self.results for index in indexes))


class TestSharedOutcome:
    async def test_several_waiters_of_one_job_share_one_outcome(self) -> None:
        """Five waiters, one slot, one outcome object for all."""
        sink = InMemorySink()
        event = created()
        with anyio.fail_after(2):
            async with anyio.create_task_group() as tg:
                waiters = Waiters(sink, tg)
                indexes = [waiters.start() for _ in range(5)]
                await until(lambda: sink.stats().pending == 1)
                await anyio.lowlevel.checkpoint()
                assert sink.stats().pending == 1
                await sink.publish(event)
        outcomes = [waiters.results[index] for index in indexes]
        assert all(outcome is outcomes[0] for outcome in outcomes)
        assert outcomes[0] == Outcome(event, "webhook")
        assert sink.stats().pending == 0

    async def test_waiters_of_different_jobs_are_independent(self) -> None:
        """A publish for one job wakes only that job's waiters."""
        sink = InMemorySink()
        with anyio.fail_after(2):
            async with anyio.create_task_group() as tg:
                waiters = Waiters(sink, tg)
                one, two = waiters.start("1"), waiters.start("2")
                await until(lambda: sink.stats().pending == 2)
                await sink.publish(created("1"))
                await waiters.finished(one)
                assert two not in waiters.results
                assert sink.stats().pending == 1
                await sink.publish(failed("2"))
        assert isinstance(waiters.results[one], Outcome)
        assert waiters.results[one].event.job_id == "1"  # type: ignore[union-attr]
        assert waiters.results[two].event.type == "task.failed"  # type: ignore[union-attr]


class TestCancellation:
    async def test_cancelling_one_waiter_never_disturbs_the_others(self) -> None:
        """One cancelled waiter detaches alone; the slot and the siblings stay."""
        sink = InMemorySink()
        event = created()
        with anyio.fail_after(2):
            async with anyio.create_task_group() as tg:
                waiters = Waiters(sink, tg)
                first, second, third = (waiters.start() for _ in range(3))
                await until(lambda: sink.stats().pending == 1)
                waiters.scopes[second].cancel()
                await waiters.finished(second)
                assert waiters.results[second] == "cancelled"
                assert sink.stats().pending == 1
                await sink.publish(event)
        assert waiters.results[first] == waiters.results[third] == Outcome(event, "webhook")
        assert sink.stats().pending == 0

    async def test_cancelling_every_waiter_leaves_no_slot(self) -> None:
        """The last waiter to leave drops the slot."""
        sink = InMemorySink()
        with anyio.fail_after(2):
            async with anyio.create_task_group() as tg:
                waiters = Waiters(sink, tg)
                indexes = [waiters.start() for _ in range(3)]
                await until(lambda: sink.stats().pending == 1)
                for index in indexes:
                    waiters.scopes[index].cancel()
                await waiters.finished(*indexes)
                assert sink.stats().pending == 0
        assert {waiters.results[index] for index in indexes} == {"cancelled"}

    async def test_outcome_published_after_a_cancel_is_kept_for_a_later_wait(self) -> None:
        """Detach is not cancel: the outcome is still there for whoever waits next."""
        sink = InMemorySink()
        event = created()
        with anyio.fail_after(2):
            with anyio.move_on_after(0.02) as scope:
                await sink.wait_for(JOB, timeout=None)
            assert scope.cancelled_caught
            assert sink.stats().pending == 0
            await sink.publish(event)
            assert await sink.wait_for(JOB, timeout=1) == Outcome(event, "webhook")


class TestTimeouts:
    async def test_timed_out_wait_raises_job_timeout_error(self) -> None:
        """The error is a TimeoutError naming the job and saying it is not a failure."""
        sink = InMemorySink()
        with anyio.fail_after(2), pytest.raises(JobTimeoutError) as caught:
            await sink.wait_for(JOB, timeout=0.05)
        error = caught.value
        assert isinstance(error, TimeoutError)
        assert error.job_id == JOB
        assert error.timeout == 0.05
        assert JOB in str(error)
        assert "timeout does not mean the job failed" in str(error).lower()

    async def test_timed_out_wait_leaves_no_slot(self) -> None:
        """A timeout releases the slot."""
        sink = InMemorySink()
        with anyio.fail_after(2), pytest.raises(JobTimeoutError):
            await sink.wait_for(JOB, timeout=0.05)
        assert sink.stats().pending == 0

    async def test_wait_after_a_timeout_gets_the_outcome_published_later(self) -> None:
        """A later wait still gets the outcome published after an earlier timeout."""
        sink = InMemorySink()
        event = failed()
        with anyio.fail_after(2):
            with pytest.raises(JobTimeoutError):
                await sink.wait_for(JOB, timeout=0.05)
            await sink.publish(event)
            assert await sink.wait_for(JOB, timeout=0.05) == Outcome(event, "webhook")

    async def test_sibling_timeout_does_not_disturb_a_patient_waiter(self) -> None:
        """One waiter times out; the other, still registered, gets the outcome."""
        sink = InMemorySink()
        event = created()
        with anyio.fail_after(2):
            async with anyio.create_task_group() as tg:
                waiters = Waiters(sink, tg)
                patient = waiters.start(timeout=None)
                hasty = waiters.start(timeout=0.05)
                await waiters.finished(hasty)
                assert isinstance(waiters.results[hasty], JobTimeoutError)
                assert sink.stats().pending == 1
                await sink.publish(event)
        assert waiters.results[patient] == Outcome(event, "webhook")
        assert sink.stats().pending == 0

    async def test_zero_timeout_returns_a_stored_outcome(self) -> None:
        """``timeout=0`` is a peek: a stored outcome is returned, no error."""
        sink = InMemorySink()
        await sink.publish(created())
        with anyio.fail_after(2):
            assert (await sink.wait_for(JOB, timeout=0)).event.type == "task.created"

    async def test_zero_timeout_without_outcome_raises(self) -> None:
        """``timeout=0`` with nothing stored times out at once and leaves no slot."""
        sink = InMemorySink()
        with anyio.fail_after(2), pytest.raises(JobTimeoutError):
            await sink.wait_for(JOB, timeout=0)
        assert sink.stats().pending == 0


class TestSharedTimers:
    """An open sink serves every wait's timer from one task instead of a scope per wait."""

    async def test_open_sink_times_waits_out_with_its_shared_timer(self) -> None:
        """Timeouts of many waits fire from the shared timer, each for its own job."""
        errors: list[str] = []

        async def wait(sink: InMemorySink, job_id: str) -> None:
            with pytest.raises(JobTimeoutError) as caught:
                await sink.wait_for(job_id, timeout=0.2)
            errors.append(caught.value.job_id)

        async with InMemorySink() as sink:
            timers = sink._correlator._timers
            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:
                    for n in range(20):
                        tg.start_soon(wait, sink, f"job-{n}")
                    await until(lambda: len(timers) == 20)  # one shared heap, no scopes
        assert sorted(f"job-{n}" for n in range(20)) == sorted(errors)
        assert 0 == sink.stats().pending

    async def test_shared_timer_still_lets_a_publish_wake_the_wait(self) -> None:
        """A wait sleeping on the shared timer is woken by its outcome at once."""
        async with InMemorySink() as sink:
            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:
                    waiters = Waiters(sink, tg)
                    index = waiters.start(JOB, timeout=60)
                    await until(lambda: sink.stats().pending == 1)
                    await sink.publish(created())
                    await waiters.finished(index)
            outcome = waiters.results[index]
            assert isinstance(outcome, Outcome)
            assert JOB == outcome.event.job_id

    async def test_closing_the_sink_hands_timers_back_to_the_waits(self) -> None:
        """Waits sleeping on the shared timer when the sink closes still time out."""
        sink = InMemorySink()
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                waiters = Waiters(sink, tg)
                await sink.__aenter__()
                index = waiters.start(JOB, timeout=0.3)
                await until(lambda: sink.stats().pending == 1)
                await sink.__aexit__(None, None, None)
                await waiters.finished(index)
        assert isinstance(waiters.results[index], JobTimeoutError)


class TestSlotHygiene:
    @pytest.mark.parametrize("ending", ["resolved", "timed_out", "cancelled"])
    async def test_no_slot_survives_the_end_of_a_wait(self, ending: str) -> None:
        """Resolved, timed out or cancelled: pending drops back to zero."""
        sink = InMemorySink()
        with anyio.fail_after(2):
            async with anyio.create_task_group() as tg:
                waiters = Waiters(sink, tg)
                index = waiters.start(timeout=0.05 if ending == "timed_out" else None)
                await until(lambda: sink.stats().pending == 1 or index in waiters.results)
                if ending == "resolved":
                    await sink.publish(created())
                elif ending == "cancelled":
                    waiters.scopes[index].cancel()
                await waiters.finished(index)
        assert sink.stats().pending == 0
        result = waiters.results[index]
        expected = {"resolved": Outcome, "timed_out": JobTimeoutError, "cancelled": str}[ending]
        assert isinstance(result, expected)

    async def test_a_sink_with_a_pending_registry_forgets_a_job_once_its_wait_ends(
        self,
    ) -> None:
        """A sink that keeps a pending registry hears of every ended wait; others need not."""

        class RegistrySink(InMemorySink):
            keeps_registry = True

            def __init__(self) -> None:
                super().__init__()
                self.removed: list[str] = []

            async def remove_pending(self, job_id: str) -> None:
                self.removed.append(job_id)

        sink = RegistrySink()
        await sink.publish(created())
        with anyio.fail_after(2):
            outcome = await sink.wait_for(JOB, timeout=None)

        assert JOB == outcome.event.job_id
        assert [JOB] == sink.removed


class GatedSink(Sink):
    """
    A dict-backed sink whose store reads (and optionally arming) block on gates.

    A read snapshots the store when called, then blocks until ``read_gate`` opens: the
    answer is as stale as a real round trip's can be. With ``fresh_reads`` it reads after.
    """

    def __init__(self, *, fresh_reads: bool = False, gate_arming: bool = False) -> None:
        super().__init__()
        self.store: dict[str, Outcome] = {}
        self.seen: set[str] = set()
        self.fresh_reads = fresh_reads
        self.read_gate = anyio.Event()
        self.read_entered = anyio.Event()
        self.reads = 0
        self.fail_reads = False
        self.arm_gate: anyio.Event | None = anyio.Event() if gate_arming else None
        self.arm_entered = anyio.Event()

    async def armed(self) -> None:
        if self.arm_gate is not None:
            self.arm_entered.set()
            await self.arm_gate.wait()

    async def get_outcomes(self, job_ids: Sequence[str]) -> dict[str, Outcome]:
        snapshot = {job_id: self.store[job_id] for job_id in job_ids if job_id in self.store}
        self.reads += 1
        self.read_entered.set()
        await self.read_gate.wait()
        if self.fail_reads:
            raise SinkUnavailableError("store down")
        if self.fresh_reads:
            return {job_id: self.store[job_id] for job_id in job_ids if job_id in self.store}
        return snapshot

    async def put_if_absent(self, job_id: str, outcome: Outcome) -> Outcome | None:
        existing = self.store.get(job_id)
        if existing is None:
            self.store[job_id] = outcome
        return existing

    async def first_seen(self, key: str) -> bool:
        new = key not in self.seen
        self.seen.add(key)
        return new

    def store_stats(self) -> StoreStats:
        return StoreStats(buffered=len(self.store))


@asynccontextmanager
async def held_waiter(
    sink: GatedSink, *, entered: anyio.Event | None = None
) -> AsyncIterator[tuple[Waiters, int]]:
    """
    Start one waiter of JOB and yield it once it is held at a gate of *sink*.

    *entered* says it is held: by default ``read_entered``, its store read began. All of it,
    the test's body included, runs within two seconds.
    """
    with anyio.fail_after(2):
        async with anyio.create_task_group() as tg:
            waiters = Waiters(sink, tg)
            index = waiters.start()
            await (sink.read_entered if entered is None else entered).wait()
            yield waiters, index


class TestInterleavings:
    @pytest.mark.parametrize("fresh_reads", [False, True], ids=["stale-read", "fresh-read"])
    async def test_publish_between_register_and_read_return_is_not_lost(
        self, fresh_reads: bool
    ) -> None:
        """Registered, store read in flight, publish, read returns: the waiter resolves."""
        sink = GatedSink(fresh_reads=fresh_reads)
        event = created()
        async with held_waiter(sink) as (waiters, index):
            assert sink.stats().pending == 1
            assert await sink.publish(event) == "accepted"
            sink.read_gate.set()
            await waiters.finished(index)
        assert waiters.results[index] == Outcome(event, "webhook")
        assert sink.stats().pending == 0

    async def test_publish_before_register_is_found_by_the_read(self) -> None:
        """Early arrival: stored before the slot exists, found by the gated read."""
        sink = GatedSink()
        event = created()
        await sink.publish(event)
        async with held_waiter(sink) as (waiters, index):
            sink.read_gate.set()
            await waiters.finished(index)
        assert waiters.results[index] == Outcome(event, "webhook")

    async def test_publish_while_the_wakeup_channel_arms_is_found_by_the_read(self) -> None:
        """A publish before registration (the waiter still arming) is read from the store."""
        sink = GatedSink(gate_arming=True, fresh_reads=True)
        sink.read_gate.set()
        event = created()
        async with held_waiter(sink, entered=sink.arm_entered) as (waiters, index):
            assert sink.stats().pending == 0
            await sink.publish(event)
            assert sink.arm_gate is not None
            sink.arm_gate.set()
            await waiters.finished(index)
        assert waiters.results[index] == Outcome(event, "webhook")
        assert sink.reads == 1

    async def test_second_waiter_joining_during_a_read_shares_the_outcome(self) -> None:
        """A waiter joining while the first one's read is in flight resolves with it."""
        sink = GatedSink()
        event = created()
        async with held_waiter(sink) as (waiters, first):
            second = waiters.start()
            await until(lambda: sink.reads == 2)
            assert sink.stats().pending == 1
            await sink.publish(event)
            sink.read_gate.set()
            await waiters.finished(first, second)
        assert waiters.results[first] is waiters.results[second]
        assert waiters.results[first] == Outcome(event, "webhook")

    async def test_waiter_cancelled_during_its_read_leaves_no_slot(self) -> None:
        """Cancelled mid-read: the slot goes, and the outcome waits for the next wait."""
        sink = GatedSink(fresh_reads=True)
        event = created()
        async with held_waiter(sink) as (waiters, index):
            waiters.scopes[index].cancel()
            await waiters.finished(index)
        assert waiters.results[index] == "cancelled"
        assert sink.stats().pending == 0
        with anyio.fail_after(2):
            assert await sink.publish(event) == "accepted"
            sink.read_gate.set()
            assert await sink.wait_for(JOB, timeout=1) == Outcome(event, "webhook")

    async def test_failed_store_read_still_lets_a_publish_wake_the_waiter(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A read that raises SinkUnavailableError is logged (at DEBUG: the sink reports its
        outage itself); the wake-up still comes."""
        sink = GatedSink()
        sink.fail_reads = True
        event = created()
        with caplog.at_level(logging.DEBUG, logger="cobalt_async.correlation"):
            async with held_waiter(sink) as (waiters, index):
                sink.read_gate.set()
                await until(lambda: any("store read" in r.getMessage() for r in caplog.records))
                assert index not in waiters.results
                await sink.publish(event)
                await waiters.finished(index)
        assert waiters.results[index] == Outcome(event, "webhook")

    async def test_timeout_holds_while_the_store_read_hangs(self) -> None:
        """A store read that never returns does not stretch the wait past its timeout."""
        sink = GatedSink()
        with anyio.fail_after(2), pytest.raises(JobTimeoutError):
            await sink.wait_for(JOB, timeout=0.05)
        assert sink.read_entered.is_set()
        assert sink.stats().pending == 0

    async def test_conflict_during_a_read_still_gives_every_waiter_the_first(self) -> None:
        """Publish, conflicting publish, then the stale read returns: the first wins."""
        sink = GatedSink()
        first = created()
        async with held_waiter(sink) as (waiters, index):
            await sink.publish(first)
            assert await sink.publish(failed()) == "conflict"
            sink.read_gate.set()
            await waiters.finished(index)
        assert waiters.results[index] == Outcome(first, "webhook")
        assert sink.stats().conflicts == 1


# The state machine: random operation sequences against a reference model.

MACHINE_JOBS = ("1", "2", "3")
OUTCOME_TTL = 10.0
DEDUP_TTL = 5.0
MAX_OUTCOMES = 2
MAX_DEDUP_IDS = 2
MAX_WAITERS = 6


class InstrumentedSink(InMemorySink):
    """An InMemorySink that signals each finished store read."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.read_done: anyio.Event | None = None

    async def get_outcomes(self, job_ids: Sequence[str]) -> dict[str, Outcome]:
        found = await super().get_outcomes(job_ids)
        if self.read_done is not None:
            self.read_done.set()
        return found


@dataclass
class MachineWaiter:
    job_id: str
    expected: JobEvent | None = None
    state: str = "waiting"  # waiting | resolved | cancelled
    scope: anyio.CancelScope | None = None
    done: anyio.Event | None = None
    result: Outcome | str | None = None


@dataclass
class ModelEntry:
    event: JobEvent
    expires: float
    claimed: bool


class CorrelationMachine(RuleBasedStateMachine):
    """Drives an InMemorySink on a portal's event loop, mirrored by a plain-dict model."""

    backend = "asyncio"

    def __init__(self) -> None:
        super().__init__()
        self.stack = ExitStack()
        self.clock = self.stack.enter_context(fake_clock())
        self.portal: BlockingPortal = self.stack.enter_context(start_blocking_portal(self.backend))
        self.sink: InstrumentedSink = self.portal.call(self._make_sink)
        self.waiters: list[MachineWaiter] = []
        self.futures: list[Future[None]] = []
        self.outcomes: OrderedDict[str, ModelEntry] = OrderedDict()
        self.seen: OrderedDict[str, float] = OrderedDict()
        self.evicted = self.duplicates = self.conflicts = self.unclaimed = 0

    async def _make_sink(self) -> InstrumentedSink:
        return InstrumentedSink(
            outcome_ttl=OUTCOME_TTL,
            max_outcomes=MAX_OUTCOMES,
            dedup_ttl=DEDUP_TTL,
            max_dedup_ids=MAX_DEDUP_IDS,
        )

    # The reference model.

    def _purge(self) -> None:
        now = self.clock.now
        while self.outcomes and (
            len(self.outcomes) > MAX_OUTCOMES or next(iter(self.outcomes.values())).expires <= now
        ):
            _, entry = self.outcomes.popitem(last=False)
            self.evicted += 1
            self.unclaimed += not entry.claimed
        while self.seen and (
            len(self.seen) > MAX_DEDUP_IDS or next(iter(self.seen.values())) <= now
        ):
            self.seen.popitem(last=False)
            self.evicted += 1

    def _waiting(self, job_id: str | None = None) -> list[MachineWaiter]:
        return [
            w
            for w in self.waiters
            if w.state == "waiting" and (job_id is None or w.job_id == job_id)
        ]

    # Async helpers, run on the portal's loop.

    async def _settle(self, resolving: list[MachineWaiter]) -> None:
        with anyio.fail_after(1):  # a lost wake-up fails here
            for waiter in resolving:
                assert waiter.done is not None
                await waiter.done.wait()
        for _ in range(5):
            await anyio.lowlevel.checkpoint()

    async def _run_waiter(self, waiter: MachineWaiter) -> None:
        assert waiter.scope is not None
        with waiter.scope:
            waiter.result = await self.sink.wait_for(waiter.job_id, timeout=None)
        if waiter.scope.cancelled_caught:
            waiter.result = "cancelled"
        assert waiter.done is not None
        waiter.done.set()

    async def _prepare(self, waiter: MachineWaiter) -> anyio.Event:
        waiter.done = anyio.Event()
        waiter.scope = anyio.CancelScope()
        read_done = self.sink.read_done = anyio.Event()
        return read_done

    async def _registered(self, read_done: anyio.Event) -> None:
        with anyio.fail_after(2):
            await read_done.wait()
        self.sink.read_done = None

    async def _cancel(self, waiter: MachineWaiter) -> None:
        assert waiter.scope is not None
        assert waiter.done is not None
        waiter.scope.cancel()
        with anyio.fail_after(2):
            await waiter.done.wait()

    async def _peek(self, job_id: str) -> Outcome | None:
        try:
            return await self.sink.wait_for(job_id, timeout=0)
        except JobTimeoutError:
            return None

    # Rules.

    @rule(job_id=st.sampled_from(MACHINE_JOBS), kind=st.sampled_from(["ok", "ko"]))
    def publish_terminal(self, job_id: str, kind: str) -> None:
        event = created(job_id) if kind == "ok" else failed(job_id)
        stored = self.outcomes.get(job_id)
        if stored is None:
            awaited = bool(self._waiting(job_id))
            self.outcomes[job_id] = ModelEntry(event, self.clock.now + OUTCOME_TTL, awaited)
            self._purge()
            expected = "accepted"
        elif stored.event.id == event.id:
            self.duplicates += 1
            expected = "duplicate"
        else:
            self.conflicts += 1
            expected = "conflict"
        first = event if stored is None else stored.event
        resolving = self._waiting(job_id)
        for waiter in resolving:
            waiter.state, waiter.expected = "resolved", first
        assert self.portal.call(self.sink.publish, event) == expected
        self.portal.call(self._settle, resolving)

    @rule(key=st.sampled_from(["a", "b", "c"]), by_delivery_id=st.booleans())
    def publish_sync_event(self, key: str, by_delivery_id: bool) -> None:
        event = UnknownEvent.model_validate(
            {"id": None if by_delivery_id else key, "type": "patient.updated", "data": {}}
        )
        if key in self.seen:
            self.duplicates += 1
            expected = "duplicate"
        else:
            self.seen[key] = self.clock.now + DEDUP_TTL
            self._purge()
            expected = "accepted"
        delivery_id = key if by_delivery_id else f"delivery-{key}"
        assert self.portal.call(_publish, self.sink, event, delivery_id) == expected

    @precondition(lambda self: len(self._waiting()) < MAX_WAITERS)
    @rule(job_id=st.sampled_from(MACHINE_JOBS))
    def start_waiter(self, job_id: str) -> None:
        waiter = MachineWaiter(job_id)
        stored = self.outcomes.get(job_id)
        if stored is not None:
            stored.claimed = True
            waiter.state, waiter.expected = "resolved", stored.event
        self.waiters.append(waiter)
        read_done = self.portal.call(self._prepare, waiter)
        self.futures.append(self.portal.start_task_soon(self._run_waiter, waiter))
        self.portal.call(self._registered, read_done)
        self.portal.call(self._settle, [waiter] if waiter.state == "resolved" else [])

    @precondition(lambda self: bool(self._waiting()))
    @rule(data=st.data())
    def cancel_waiter(self, data: st.DataObject) -> None:
        waiter = data.draw(st.sampled_from(self._waiting()))
        waiter.state = "cancelled"
        self.portal.call(self._cancel, waiter)
        assert waiter.result == "cancelled"

    @rule(job_id=st.sampled_from(MACHINE_JOBS))
    def wait_with_zero_timeout(self, job_id: str) -> None:
        stored = self.outcomes.get(job_id)
        if stored is not None:
            stored.claimed = True
        outcome = self.portal.call(self._peek, job_id)
        if stored is None:
            assert outcome is None
        else:
            assert outcome is not None
            assert outcome.event == stored.event

    @rule(seconds=st.sampled_from([1.0, 4.0, 6.0, 11.0]))
    def let_time_pass(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self._purge()

    # Invariants, checked after every step.

    @invariant()
    def sink_matches_the_model(self) -> None:
        stats = self.sink.stats()
        waiting_jobs = {waiter.job_id for waiter in self._waiting()}
        assert stats.pending == len(waiting_jobs), "pending slots vs waiting jobs"
        assert stats.buffered == len(self.outcomes) <= MAX_OUTCOMES
        assert len(self.sink._seen) <= MAX_DEDUP_IDS
        assert stats.evicted == self.evicted
        assert stats.duplicates == self.duplicates
        assert stats.conflicts == self.conflicts
        assert stats.unclaimed == self.unclaimed

    @invariant()
    def every_waiter_has_the_expected_result(self) -> None:
        for waiter in self.waiters:
            if waiter.state == "waiting":
                assert waiter.result is None, "resolved without an outcome"
            elif waiter.state == "resolved":
                assert isinstance(waiter.result, Outcome), "lost wake-up"
                assert waiter.result.event == waiter.expected, "not the first outcome"

    def teardown(self) -> None:
        try:
            for waiter in self._waiting():
                waiter.state = "cancelled"
                self.portal.call(self._cancel, waiter)
                assert waiter.result == "cancelled"
            for future in self.futures:
                future.result(timeout=1)
            assert self.sink.stats().pending == 0, "a slot survived quiescence"
        finally:
            # After a failure some waiters may still run: stop the loop cancelling them.
            self.portal.call(self.portal.stop, True)
            self.stack.close()


async def _publish(sink: Sink, event: UnknownEvent, delivery_id: str) -> str:
    return await sink.publish(event, delivery_id=delivery_id)


class TestRandomSequences:
    @pytest.mark.parametrize("backend", ["asyncio", "trio"])
    def test_random_operation_sequences_keep_invariants_i1_to_i4(self, backend: str) -> None:
        """Register, publish, duplicate, conflict, timeout, cancel, expire, in any order."""
        machine = type("Machine", (CorrelationMachine,), {"backend": backend})
        run_state_machine_as_test(  # type: ignore[no-untyped-call]
            machine,
            settings=settings(
                max_examples=30,
                stateful_step_count=20,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )


class TestWaitMany:
    """``sink.wait_many``: one task waits for many jobs, with the protocol of a single wait."""

    async def test_a_slot_settled_before_its_waiter_left_is_reported_at_once(self) -> None:
        """A slot shared with a wait that is woken but not yet gone counts as settled."""
        sink = InMemorySink()
        seen: list[str] = []
        with anyio.fail_after(2):
            async with anyio.create_task_group() as tg:
                waiters = Waiters(sink, tg)
                index = waiters.start()
                await until(lambda: sink.stats().pending == 1)
                await sink.publish(created())  # the waiter is woken, and has not run yet
                await sink.wait_many([JOB], lambda job_id, _: seen.append(job_id), timeout=None)
                await waiters.finished(index)
        assert [JOB] == seen
        assert 0 == sink.stats().pending

    async def test_polls_are_due_per_slot_as_each_wait_would_make_them(self) -> None:
        """A job whose slot an earlier wait opened is polled on that wait's schedule."""
        sink = InMemorySink()
        polled: list[tuple[str, float]] = []

        async def backstop(job_id: str) -> JobEvent:
            polled.append((job_id, anyio.current_time()))
            return created(job_id)  # type: ignore[no-any-return]

        policy = PollPolicy(silence=0.3, max_silence=0.3)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                alone = partial(sink.wait_for, backstop=backstop, policy=policy)
                tg.start_soon(partial(alone, "early", timeout=None))
                await until(lambda: sink.stats().pending == 1)
                started = anyio.current_time()
                await anyio.sleep(0.15)
                both = ["early", "late"]
                ignore = lambda *_: None  # noqa: E731
                await sink.wait_many(both, ignore, timeout=None, backstop=backstop, policy=policy)
        assert ["early", "late"] == [job_id for job_id, _ in polled]
        assert polled[0][1] - started < 0.3 + 0.14 <= polled[1][1] - started

    async def test_a_deadline_passing_mid_poll_gets_one_last_poll(self) -> None:
        """As a single wait does: the poll in flight ends, then a final one, then give up."""
        sink = InMemorySink()
        calls: list[float] = []

        async def backstop(job_id: str) -> JobEvent | None:
            calls.append(anyio.current_time())
            if len(calls) == 1:
                await anyio.sleep(0.2)  # past the deadline
                return None
            return created(job_id)  # type: ignore[no-any-return]

        seen: list[Outcome] = []
        with anyio.fail_after(5):
            await sink.wait_many(
                [JOB],
                lambda _, outcome: seen.append(outcome),
                timeout=0.1,
                backstop=backstop,
                policy=PollPolicy(silence=0.01, max_silence=0.01),
            )
        assert 2 == len(calls)
        assert ["poll"] == [outcome.via for outcome in seen]
        assert 0 == sink.stats().pending


class TestParking:
    """A wait parks on its slot for the cost of a future, and leaves nothing behind."""

    async def test_waits_timing_out_on_a_shared_slot_leave_no_waker_behind(self) -> None:
        """Fifty short waits beside a long one: the slot keeps only what is still parked."""
        sink = InMemorySink()
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                waiters = Waiters(sink, tg)
                long = waiters.start()
                await until(lambda: sink.stats().pending == 1)
                for _ in range(50):
                    with pytest.raises(JobTimeoutError):
                        await sink.wait_for(JOB, timeout=0.001)
                parked = sink._correlator._slots[JOB].wakers
                await sink.publish(created())
                await waiters.finished(long)
        assert len(parked) <= 2 if isinstance(parked, list) else parked is not None
        assert isinstance(waiters.results[long], Outcome)
