"""
The correlation core: one slot per awaited job_id, resolved from a sink's store.

The protocol (``docs/correlation.md`` says why it is this one) is written once, here, for
every sink:

1. wait until the sink's wake-up channel is armed (its position pinned);
2. register the slot, then read the store: an outcome that arrived before the wait, even
   before the POST response, is found by this read, and one that arrives after it wakes
   the slot, so nothing falls in between;
3. sleep until woken; wake-ups are hints, the store is the truth;
4. when a backstop is given, poll Cobalt after a silence and once before giving up;
5. in ``finally`` drop the slot when its last waiter leaves, whatever happened.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Protocol, cast

import anyio
from anyio.abc import TaskStatus

from ._config import PollPolicy
from ._errors import APIError, JobTimeoutError, SinkUnavailableError
from ._logs import ids
from ._outcome import Backstop, Outcome, PublishResult, Via
from ._parking import Wakers, park
from ._telemetry import sink_error
from .models import JobEvent

logger = logging.getLogger("cobalt_async.correlation")

POLL_TIMEOUT = 10.0
"""Longest a backstop poll may take before the wait goes on without it."""


class OutcomeStore(Protocol):
    """What the correlator needs of a sink: its store, its wake-ups, its registry."""

    @property
    def stores_in_process(self) -> bool: ...

    async def armed(self) -> None: ...

    async def get_outcomes(self, job_ids: Sequence[str]) -> dict[str, Outcome]: ...

    async def publish(self, event: JobEvent, *, via: Via) -> PublishResult: ...

    async def remove_pending(self, job_id: str) -> None: ...


class _Slot(Wakers):
    """The shared wait state of one job_id in this process. Strictly private."""

    __slots__ = ("delay", "job_id", "next_poll", "outcome", "polling", "waiters")

    def __init__(self, job_id: str) -> None:
        super().__init__()
        self.job_id = job_id
        self.outcome: Outcome | None = None
        self.waiters = 0
        self.polling = False
        self.next_poll = math.inf
        self.delay = 0.0

    def settle(self, outcome: Outcome) -> None:
        if self.outcome is None:
            self.outcome = outcome
            self.wake()

    def resolve(self, job_id: str, outcome: Outcome) -> None:
        # settle(), inline: once per webhook.
        if self.outcome is None:
            self.outcome = outcome
            self.wake()

    def poke(self) -> None:
        """Wake the waiters without an outcome (a timer is due); they look and wait again."""
        if self.outcome is None:
            self.wake()


class _Watch(Wakers):
    """
    Many jobs awaited by one task (:meth:`Correlator.wait_many`). Strictly private.

    A job nobody else awaits costs no slot: the correlator maps it to the watch itself and
    hands its outcome over through :meth:`resolve`. A job another wait shares has a slot,
    which calls the watch back. The waiting task parks on the watch (``wakers``).
    """

    __slots__ = ("delay", "first_poll", "members", "woken")

    def __init__(self, first_poll: float, delay: float) -> None:
        super().__init__()
        self.first_poll = first_poll
        """When the first backstop poll of its slotless jobs is due."""
        self.delay = delay
        self.members: dict[str, _Slot | Outcome | None] = {}
        """Jobs not reported yet: their slot, their outcome not yet reported, or ``None``."""
        self.woken: deque[str] = deque()
        """Job ids whose slot or outcome changed, in the order they did."""

    def resolve(self, job_id: str, outcome: Outcome) -> None:
        if job_id in self.members and self.members[job_id] is None:
            self.members[job_id] = outcome
            self.woken.append(job_id)
            self.wake()

    def notify(self, holder: Wakers) -> None:
        self.woken.append(cast(_Slot, holder).job_id)
        self.wake()

    def poke(self) -> None:
        """A timer of another wait: the watch keeps its own time."""

    def slot_for(self, job_id: str) -> _Slot:
        """A slot for a slotless job, now that another wait or a poll needs one."""
        slot = _Slot(job_id)
        slot.waiters = 1
        slot.next_poll, slot.delay = self.first_poll, self.delay
        arrived = self.members[job_id]
        if arrived is None:
            slot.add(self)
        else:
            slot.outcome = cast(Outcome, arrived)  # its job_id is in ``woken`` already
        self.members[job_id] = slot
        return slot


class Correlator:
    """Slots of the jobs awaited in this process, fed by one sink. Strictly private."""

    def __init__(self, sink: OutcomeStore, *, keeps_registry: bool) -> None:
        self._sink = sink
        # Whether a finished wait must remove its job from the sink's pending registry.
        self._keeps_registry = keeps_registry
        # A job awaited only by one wait_many maps to its watch, without a slot.
        self._slots: dict[str, _Slot | _Watch] = {}
        self.backstop_polls = 0
        # Timers of waits, served by one task while the sink is open (run_timers); a cancel
        # scope per waiting coroutine would cost more memory than the rest of the wait.
        self._timers: list[tuple[float, str]] = []
        self._timers_changed: anyio.Event | None = None

    @property
    def pending(self) -> int:
        return len(self._slots)

    def pending_ids(self) -> list[str]:
        return list(self._slots)

    def is_awaited(self, job_id: str) -> bool:
        return job_id in self._slots

    def resolve(self, job_id: str, outcome: Outcome) -> None:
        """Settle the slot of *job_id*, if this process awaits it. Idempotent."""
        awaited = self._slots.get(job_id)
        if awaited is not None:
            awaited.resolve(job_id, outcome)

    def resolve_many(self, outcomes: dict[str, Outcome]) -> None:
        for job_id, outcome in outcomes.items():
            self.resolve(job_id, outcome)

    async def recheck(self, job_ids: Iterable[str] | None = None) -> None:
        """Re-read the store for *job_ids* (default: all pending) and settle what is found."""
        candidates = self.pending_ids() if job_ids is None else job_ids
        wanted = [job_id for job_id in candidates if job_id in self._slots]
        if wanted:
            self.resolve_many(await self._sink.get_outcomes(wanted))

    async def wait(
        self,
        job_id: str,
        *,
        timeout: float | None,
        backstop: Backstop | None,
        policy: PollPolicy,
        webhooks_expected: bool,
    ) -> Outcome:
        """
        Wait for the outcome of *job_id*.

        Raises:
            JobTimeoutError: No outcome within *timeout* seconds; the slot is released and
                the outcome stays retrievable by a later wait.
        """
        # The deadline starts now and also bounds arming and the store read: a sink that
        # hangs must not stretch the wait past its timeout.
        deadline = math.inf if timeout is None else anyio.current_time() + timeout
        with self._bounded(deadline):
            await self._sink.armed()
        first_poll, delay = _first_poll(backstop, policy, webhooks_expected)
        slot = self._register(job_id, first_poll, delay)
        try:
            if slot.outcome is None:
                with self._bounded(deadline):
                    await self._read_store([job_id])
            while slot.outcome is None:
                # Sleep until settled, poked, or *until* (inline: no frame per pending wait).
                until = min(deadline, self._next_look(slot, backstop))
                if until < math.inf and self._timers_changed is None:
                    with anyio.move_on_at(until):
                        await park(slot)
                else:
                    if until < math.inf:
                        self._add_timer(until, job_id)
                    await park(slot)
                if slot.outcome is not None:
                    break
                now = anyio.current_time()
                final = now >= deadline
                due = not slot.polling and now >= slot.next_poll
                if backstop is not None and (final or due):
                    await self._poll(job_id, slot, backstop, policy, webhooks_expected)
                if final and slot.outcome is None:
                    raise JobTimeoutError(job_id, timeout or 0.0)
        finally:
            self._release(job_id, slot)
        if self._keeps_registry:
            await self._forget(job_id)
        return slot.outcome

    async def wait_many(
        self,
        job_ids: Iterable[str],
        on_outcome: Callable[[str, Outcome], None],
        *,
        timeout: float | None,
        backstop: Backstop | None,
        policy: PollPolicy,
        webhooks_expected: bool,
    ) -> None:
        """
        Wait for the outcomes of many jobs from this one task, as :meth:`wait` waits for one.

        Each slot calls the set back when it settles; *on_outcome* is called once per job as
        its outcome is learnt, in that order. Returns once every job has one, or at the
        deadline (after its final backstop polls) with the others left unknown.
        """
        deadline = math.inf if timeout is None else anyio.current_time() + timeout
        with self._bounded(deadline):
            await self._sink.armed()
        watch = _Watch(*_first_poll(backstop, policy, webhooks_expected))
        members, slots = watch.members, self._slots
        wait: _SetWait | None = None
        try:
            for job_id in job_ids:
                if job_id in members:
                    continue
                if job_id not in slots:
                    slots[job_id] = watch  # no slot: the watch alone awaits it
                    members[job_id] = None
                    continue
                slot = members[job_id] = self._register(job_id, watch.first_poll, watch.delay)
                if slot.outcome is None:
                    slot.add(watch)
                else:
                    watch.woken.append(job_id)
            unread = [job_id for job_id in members if not _known(members[job_id])]
            with self._bounded(deadline):
                for start in range(0, len(unread), _READ_CHUNK):
                    await self._read_store(unread[start : start + _READ_CHUNK])
            async with anyio.create_task_group() as helpers:
                poll = (backstop, policy, webhooks_expected)
                wait = _SetWait(self, watch, deadline, helpers, on_outcome, poll)
                await wait.run()
        finally:
            for job_id, member in members.items():
                if isinstance(member, _Slot):
                    if wait is not None and job_id in wait.polling:
                        member.polling = False  # claimed by a poll cancelled before it started
                    member.discard(watch)
                    self._release(job_id, member)
                elif slots.get(job_id) is watch:
                    del slots[job_id]

    def _register(self, job_id: str, first_poll: float, delay: float) -> _Slot:
        # No await between the lookup and the insert: this is what makes the
        # register-then-read protocol race-free on one event loop.
        slot = self._slot(job_id)
        if slot is None:
            slot = self._slots[job_id] = _Slot(job_id)
        slot.waiters += 1
        if slot.next_poll == math.inf:
            slot.next_poll, slot.delay = first_poll, delay
        return slot

    def _slot(self, job_id: str) -> _Slot | None:
        """The slot of *job_id*, made now if a watch awaited it without one."""
        awaited = self._slots.get(job_id)
        if isinstance(awaited, _Watch):
            awaited = self._slots[job_id] = awaited.slot_for(job_id)
        return awaited

    def _release(self, job_id: str, slot: _Slot) -> None:
        slot.waiters -= 1
        if slot.waiters == 0 and self._slots.get(job_id) is slot:
            del self._slots[job_id]

    @staticmethod
    def _next_look(slot: _Slot, backstop: Backstop | None) -> float:
        if backstop is None:
            return math.inf
        if slot.polling:
            # Another waiter of this slot is polling: look again after one more period
            # rather than spinning, in case that waiter is cancelled mid-poll.
            return anyio.current_time() + slot.delay
        return slot.next_poll

    async def _forget(self, job_id: str) -> None:
        try:
            await self._sink.remove_pending(job_id)
        except SinkUnavailableError as exc:
            # The sink reports its outage once; a line per finished wait would be thousands.
            logger.debug(
                "job %s not removed from the pending registry: %s",
                job_id,
                exc,
                extra=ids(job_id),
            )

    async def _read_store(self, job_ids: Sequence[str]) -> None:
        try:
            await self.recheck(job_ids)
        except SinkUnavailableError as exc:
            sink_error("read")
            # The sink will be re-read on reconnect, and the backstop still polls Cobalt.
            logger.debug(
                "store read for job %s failed, waiting on: %s",
                job_ids[0] if len(job_ids) == 1 else f"{job_ids[0]} and {len(job_ids) - 1} more",
                exc,
                extra=ids(job_ids[0]),
            )

    def _add_timer(self, when: float, job_id: str) -> None:
        earliest = self._timers[0][0] if self._timers else math.inf
        heapq.heappush(self._timers, (when, job_id))
        if when < earliest and self._timers_changed is not None:
            self._timers_changed.set()

    async def run_timers(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve every waiter's timer from this one task, for as long as it runs."""
        self._timers_changed = anyio.Event()
        task_status.started()
        try:
            while True:
                self._poke_due(anyio.current_time())
                self._timers_changed = changed = anyio.Event()
                next_due = self._timers[0][0] if self._timers else math.inf
                with anyio.move_on_at(next_due):
                    await changed.wait()
        finally:
            # Waiters now sleeping on a timer that will never fire: wake them, and they go
            # back to timing themselves.
            self._timers_changed = None
            self._timers.clear()
            for slot in list(self._slots.values()):
                slot.poke()

    def _poke_due(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, job_id = heapq.heappop(timers)
            slot = self._slots.get(job_id)
            if slot is not None:
                slot.poke()

    def _bounded(self, deadline: float) -> AbstractContextManager[object]:
        # A store in this process answers at once: no cancel scope (and its timer) needed.
        if self._sink.stores_in_process or deadline == math.inf:
            return nullcontext()
        return anyio.move_on_at(deadline)

    async def _poll(
        self,
        job_id: str,
        slot: _Slot,
        backstop: Backstop,
        policy: PollPolicy,
        webhooks_expected: bool,
    ) -> None:
        slot.polling = True
        self.backstop_polls += 1
        try:
            # A poll must not hold the wait past its deadline by a whole HTTP timeout.
            event = None
            with anyio.move_on_after(POLL_TIMEOUT):
                event = await backstop(job_id)
        except APIError as exc:
            logger.warning("backstop poll for job %s failed: %s", job_id, exc)
            event = None
        finally:
            slot.polling = False
            slot.delay = policy.next_delay(slot.delay, webhooks_expected=webhooks_expected)
            slot.next_poll = anyio.current_time() + slot.delay
        if event is not None and slot.outcome is None:
            await self._keep_polled(job_id, slot, event)

    async def _keep_polled(self, job_id: str, slot: _Slot, event: JobEvent) -> None:
        # Through the sink, so that dedup applies and other processes learn it too; the
        # publish settles this slot with what the store kept, since the first event wins.
        try:
            await self._sink.publish(event, via="poll")
        except SinkUnavailableError as exc:
            logger.warning("polled outcome of job %s not stored: %s", job_id, exc)
            slot.settle(Outcome(event, "poll"))


_READ_CHUNK = 1000
"""Job ids read from the store in one call by a wait for many (one ``MGET``, say)."""


def _first_poll(
    backstop: Backstop | None, policy: PollPolicy, webhooks_expected: bool
) -> tuple[float, float]:
    """When a new slot's first backstop poll is due, and the delay it starts from."""
    if backstop is None:
        return math.inf, 0.0
    delay = policy.first_delay(webhooks_expected=webhooks_expected)
    return anyio.current_time() + delay, delay


def _known(member: _Slot | Outcome | None) -> bool:
    """Whether a watch's member has its outcome."""
    return member is not None and (not isinstance(member, _Slot) or member.outcome is not None)


class _SetWait:
    """
    The loop of :meth:`Correlator.wait_many`: what one waiting task does for many jobs.

    Strictly private. Backstop polls, as a wait for one job makes them, run in *helpers*
    (a task only while a poll is in flight), and so do removals from a pending registry.
    """

    def __init__(
        self,
        correlator: Correlator,
        watch: _Watch,
        deadline: float,
        helpers: anyio.abc.TaskGroup,
        on_outcome: Callable[[str, Outcome], None],
        poll: tuple[Backstop | None, PollPolicy, bool],
    ) -> None:
        self.correlator = correlator
        self.watch = watch
        self.deadline = deadline
        self.helpers = helpers
        self.on_outcome = on_outcome
        self.poll = poll
        self.polling: set[str] = set()
        """Jobs this wait is polling Cobalt for right now."""
        self.final = False
        """Whether the deadline passed: its last polls are started, no other."""
        self.next_sweep = self._first_look()

    async def run(self) -> None:
        """Report outcomes as they come, poll when due; return when all are known or given up."""
        watch = self.watch
        while True:
            self._drain()
            if not watch.members or (self.final and not self.polling):
                return
            now = anyio.current_time()
            if not self.final and now >= min(self.next_sweep, self.deadline):
                self.final = now >= self.deadline
                self.next_sweep = self._sweep(now)
            elif not watch.woken:
                await self._sleep()

    def _drain(self) -> None:
        """Report the woken jobs that have their outcome; look again at the others."""
        correlator, watch, backstop = self.correlator, self.watch, self.poll[0]
        members, woken = watch.members, watch.woken
        settled = []
        while woken:
            job_id = woken.popleft()
            if job_id not in members:
                continue  # reported already
            member = members[job_id]
            if isinstance(member, _Slot):
                if member.outcome is None:
                    # Poked by a timer, or one of this wait's polls ended: look again.
                    member.add(watch)
                    look = correlator._next_look(member, backstop)
                    self.next_sweep = min(self.next_sweep, look)
                    continue
                outcome = member.outcome
                correlator._release(job_id, member)
            elif member is None:
                continue
            else:
                outcome = member
                del correlator._slots[job_id]  # the watch's own: no slot to release
            del members[job_id]
            settled.append(job_id)
            self.on_outcome(job_id, outcome)
        if settled and correlator._keeps_registry:
            self.helpers.start_soon(self._forget, settled)

    async def _sleep(self) -> None:
        """Until a job wakes the watch, or the next poll or the deadline is due."""
        wake_at = math.inf if self.final else min(self.next_sweep, self.deadline)
        if wake_at == math.inf:
            await park(self.watch)
        else:
            with anyio.move_on_at(wake_at):
                await park(self.watch)

    def _first_look(self) -> float:
        backstop = self.poll[0]
        if backstop is None:
            return math.inf
        look, first = self.correlator._next_look, self.watch.first_poll
        members = self.watch.members.values()
        shared = [look(slot, backstop) for slot in members if isinstance(slot, _Slot)]
        return min(first, *shared) if shared else first

    def _sweep(self, now: float) -> float:
        """Start the polls that are due (all of them at the deadline); when to look next."""
        backstop, final = self.poll[0], self.final
        if backstop is None:
            return math.inf
        correlator, watch = self.correlator, self.watch
        next_sweep = math.inf
        for job_id, member in watch.members.items():
            if job_id in self.polling:
                continue
            if member is None:
                if not final and now < watch.first_poll:
                    next_sweep = min(next_sweep, watch.first_poll)
                    continue
                # Polled from now on: the poll's state needs a slot (a value changed, not a key).
                member = correlator._slots[job_id] = watch.slot_for(job_id)
            elif not isinstance(member, _Slot):
                continue
            elif not (final or (not member.polling and now >= member.next_poll)):
                next_sweep = min(next_sweep, correlator._next_look(member, backstop))
                continue
            # Claimed now, not when the task starts: another wait of this slot waking
            # meanwhile must not poll too.
            member.polling = True
            self.polling.add(job_id)
            self.helpers.start_soon(self._poll, job_id, member, final)
        return next_sweep

    async def _poll(self, job_id: str, slot: _Slot, final: bool) -> None:
        backstop, policy, webhooks_expected = self.poll
        assert backstop is not None
        try:
            await self.correlator._poll(job_id, slot, backstop, policy, webhooks_expected)
            if not final and slot.outcome is None and anyio.current_time() >= self.deadline:
                # The deadline passed during the poll: the last look before giving up.
                await self.correlator._poll(job_id, slot, backstop, policy, webhooks_expected)
        finally:
            self.polling.discard(job_id)
            self.watch.notify(slot)

    async def _forget(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            await self.correlator._forget(job_id)
