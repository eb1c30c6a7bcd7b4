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

import asyncio
import heapq
import logging
import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol, TypeAlias

import anyio
from anyio.abc import TaskStatus

from ._config import PollPolicy
from ._errors import APIError, JobTimeoutError, SinkUnavailableError
from ._logs import ids
from ._outcome import Backstop, Outcome, PublishResult, Via
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


class _Wakers:
    """
    What is parked on something: one waker, a list of them, or ``None``. Strictly private.

    A waker is an asyncio future, a parked trio task or a :class:`_Watch`. Most slots have
    exactly one, so it is kept as is, without a list.
    """

    __slots__ = ("wakers",)

    def __init__(self) -> None:
        self.wakers: _Waker | list[_Waker] | None = None

    def add(self, waker: _Waker) -> None:
        wakers = self.wakers
        if wakers is None:
            self.wakers = waker
        elif isinstance(wakers, list):
            if waker not in wakers:
                wakers.append(waker)
        elif wakers is not waker:
            self.wakers = [wakers, waker]

    def discard(self, waker: _Waker) -> None:
        wakers = self.wakers
        if wakers is waker:
            self.wakers = None
        elif isinstance(wakers, list) and waker in wakers:
            wakers.remove(waker)

    def wake(self) -> None:
        """Wake everything parked here; each waits again if it has to."""
        wakers, self.wakers = self.wakers, None
        if isinstance(wakers, list):
            for waker in wakers:
                _notify(waker, self)
        elif wakers is not None:
            _notify(wakers, self)


class _Slot(_Wakers):
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

    def poke(self) -> None:
        """Wake the waiters without an outcome (a timer is due); they look and wait again."""
        if self.outcome is None:
            self.wake()


class _Watch(_Wakers):
    """
    Many slots awaited by one task: each slot calls back, one waker for the set.

    Strictly private. The task itself parks on the watch (``wakers``).
    """

    __slots__ = ("woken",)

    def __init__(self) -> None:
        super().__init__()
        self.woken: deque[_Slot] = deque()
        """Slots that woke the watch, in the order they did: settled, poked or polled."""

    def notify(self, holder: _Wakers) -> None:
        self.woken.append(holder)  # type: ignore[arg-type]
        self.wake()


class _Rescheduled:
    """A trio task parked on a slot or a watch. Strictly private."""

    __slots__ = ("task",)

    def __init__(self, task: Any) -> None:
        self.task = task

    def notify(self, holder: _Wakers) -> None:
        import trio

        trio.lowlevel.reschedule(self.task)


_Waker: TypeAlias = "asyncio.Future[None] | _Watch | _Rescheduled"


def _notify(waker: _Waker, holder: _Wakers) -> None:
    if isinstance(waker, asyncio.Future):
        if not waker.done():
            waker.set_result(None)
    else:
        waker.notify(holder)


async def _park(holder: _Wakers) -> None:
    """
    Sleep until *holder* wakes (or the task is cancelled).

    A bare future on asyncio, a rescheduled task on trio: no ``anyio.Event`` and its
    layers (an event, its deque, two coroutines) per pending wait.
    """
    loop = asyncio._get_running_loop()
    if loop is None:
        await _park_trio(holder)
        return
    future: asyncio.Future[None] = loop.create_future()
    holder.add(future)
    try:
        await future
    except BaseException:
        holder.discard(future)
        raise


async def _park_trio(holder: _Wakers) -> None:
    import trio

    parked = _Rescheduled(trio.lowlevel.current_task())
    holder.add(parked)

    def abort(_: object) -> trio.lowlevel.Abort:
        holder.discard(parked)
        return trio.lowlevel.Abort.SUCCEEDED

    await trio.lowlevel.wait_task_rescheduled(abort)


class Correlator:
    """Slots of the jobs awaited in this process, fed by one sink. Strictly private."""

    def __init__(self, sink: OutcomeStore, *, keeps_registry: bool) -> None:
        self._sink = sink
        # Whether a finished wait must remove its job from the sink's pending registry.
        self._keeps_registry = keeps_registry
        self._slots: dict[str, _Slot] = {}
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
        slot = self._slots.get(job_id)
        if slot is not None:
            slot.settle(outcome)

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
                        await _park(slot)
                else:
                    if until < math.inf:
                        self._add_timer(until, job_id)
                    await _park(slot)
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
        watch = _Watch()
        slots: dict[str, _Slot] = {}
        wait: _SetWait | None = None
        try:
            first_poll, delay = _first_poll(backstop, policy, webhooks_expected)
            for job_id in job_ids:
                if job_id not in slots:
                    slot = slots[job_id] = self._register(job_id, first_poll, delay)
                    if slot.outcome is None:
                        slot.add(watch)
                    else:
                        watch.woken.append(slot)
            unread = [job_id for job_id, slot in slots.items() if slot.outcome is None]
            with self._bounded(deadline):
                for start in range(0, len(unread), _READ_CHUNK):
                    await self._read_store(unread[start : start + _READ_CHUNK])
            async with anyio.create_task_group() as helpers:
                wait = _SetWait(self, watch, slots, deadline, helpers)
                await wait.run(on_outcome, backstop, policy, webhooks_expected)
        finally:
            for job_id, slot in slots.items():
                if wait is not None and job_id in wait.polling:
                    slot.polling = False  # claimed by a poll cancelled before it started
                slot.discard(watch)
                self._release(job_id, slot)

    def _register(self, job_id: str, first_poll: float, delay: float) -> _Slot:
        # No await between the lookup and the insert: this is what makes the
        # register-then-read protocol race-free on one event loop.
        slot = self._slots.get(job_id)
        if slot is None:
            slot = self._slots[job_id] = _Slot(job_id)
        slot.waiters += 1
        if slot.next_poll == math.inf:
            slot.next_poll, slot.delay = first_poll, delay
        return slot

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


class _SetWait:
    """
    The loop of :meth:`Correlator.wait_many`: what one waiting task does for many slots.

    Strictly private. Backstop polls, as a wait for one job makes them, run in *helpers*
    (a task only while a poll is in flight), and so do removals from a pending registry.
    """

    def __init__(
        self,
        correlator: Correlator,
        watch: _Watch,
        slots: dict[str, _Slot],
        deadline: float,
        helpers: anyio.abc.TaskGroup,
    ) -> None:
        self.correlator = correlator
        self.watch = watch
        self.slots = slots
        """Slots registered by this wait and not released yet."""
        self.deadline = deadline
        self.helpers = helpers
        self.polling: set[str] = set()
        """Jobs this wait is polling Cobalt for right now."""

    async def run(
        self,
        on_outcome: Callable[[str, Outcome], None],
        backstop: Backstop | None,
        policy: PollPolicy,
        webhooks_expected: bool,
    ) -> None:
        correlator, watch, slots = self.correlator, self.watch, self.slots
        poll = (backstop, policy, webhooks_expected)
        next_sweep = self._first_look(backstop) if backstop is not None else math.inf
        final = False
        while True:
            settled = []
            while watch.woken:
                slot = watch.woken.popleft()
                job_id = slot.job_id
                if slots.get(job_id) is not slot:
                    continue  # settled and released already
                if slot.outcome is None:
                    # Poked by a timer, or one of this wait's polls ended: look again.
                    slot.add(watch)
                    next_sweep = min(next_sweep, correlator._next_look(slot, backstop))
                    continue
                del slots[job_id]
                correlator._release(job_id, slot)
                settled.append(job_id)
                on_outcome(job_id, slot.outcome)
            if settled and correlator._keeps_registry:
                self.helpers.start_soon(self._forget, settled)
            if not slots or (final and not self.polling):
                break
            now = anyio.current_time()
            if not final and (now >= next_sweep or now >= self.deadline):
                final = now >= self.deadline
                next_sweep = self._sweep(now, final, poll)
                continue
            if watch.woken:
                continue
            wake_at = math.inf if final else min(next_sweep, self.deadline)
            if wake_at == math.inf:
                await _park(watch)
            else:
                with anyio.move_on_at(wake_at):
                    await _park(watch)

    def _first_look(self, backstop: Backstop | None) -> float:
        look = self.correlator._next_look
        return min((look(slot, backstop) for slot in self.slots.values()), default=math.inf)

    def _sweep(
        self, now: float, final: bool, poll: tuple[Backstop | None, PollPolicy, bool]
    ) -> float:
        """Start the polls that are due (all of them at the deadline); when to look next."""
        backstop = poll[0]
        if backstop is None:
            return math.inf
        next_sweep = math.inf
        for job_id, slot in self.slots.items():
            if job_id in self.polling:
                continue
            if final or (not slot.polling and now >= slot.next_poll):
                # Claimed now, not when the task starts: another wait of this slot waking
                # meanwhile must not poll too.
                slot.polling = True
                self.polling.add(job_id)
                self.helpers.start_soon(self._poll, job_id, slot, final, poll)
            else:
                next_sweep = min(next_sweep, self.correlator._next_look(slot, backstop))
        return next_sweep

    async def _poll(
        self,
        job_id: str,
        slot: _Slot,
        final: bool,
        poll: tuple[Backstop | None, PollPolicy, bool],
    ) -> None:
        backstop, policy, webhooks_expected = poll
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
