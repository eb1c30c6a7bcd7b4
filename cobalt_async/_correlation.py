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
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Protocol

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


class _Slot:
    """The shared wait state of one job_id in this process. Strictly private."""

    __slots__ = ("delay", "next_poll", "outcome", "polling", "ready", "waiters")

    def __init__(self) -> None:
        self.ready = anyio.Event()
        self.outcome: Outcome | None = None
        self.waiters = 0
        self.polling = False
        self.next_poll = math.inf
        self.delay = 0.0

    def settle(self, outcome: Outcome) -> None:
        if self.outcome is None:
            self.outcome = outcome
            self.ready.set()

    def poke(self) -> None:
        """Wake the waiters without an outcome (a timer is due); they look and wait again."""
        if self.outcome is None:
            ready, self.ready = self.ready, anyio.Event()
            ready.set()


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
        slot = self._register(job_id, backstop, policy, webhooks_expected)
        try:
            if slot.outcome is None:
                with self._bounded(deadline):
                    await self._read_store(job_id)
            while slot.outcome is None:
                # Sleep until settled, poked, or *until* (inline: no frame per pending wait).
                ready, until = slot.ready, min(deadline, self._next_look(slot, backstop))
                if until < math.inf and self._timers_changed is None:
                    with anyio.move_on_at(until):
                        await ready.wait()
                else:
                    if until < math.inf:
                        self._add_timer(until, job_id)
                    await ready.wait()
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

    def _register(
        self, job_id: str, backstop: Backstop | None, policy: PollPolicy, webhooks_expected: bool
    ) -> _Slot:
        # No await between the lookup and the insert: this is what makes the
        # register-then-read protocol race-free on one event loop.
        slot = self._slots.get(job_id)
        if slot is None:
            slot = self._slots[job_id] = _Slot()
        slot.waiters += 1
        if backstop is not None and slot.next_poll == math.inf:
            slot.delay = policy.first_delay(webhooks_expected=webhooks_expected)
            slot.next_poll = anyio.current_time() + slot.delay
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

    async def _read_store(self, job_id: str) -> None:
        try:
            await self.recheck([job_id])
        except SinkUnavailableError as exc:
            sink_error("read")
            # The sink will be re-read on reconnect, and the backstop still polls Cobalt.
            logger.debug(
                "store read for job %s failed, waiting on: %s",
                job_id,
                exc,
                extra=ids(job_id),
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
