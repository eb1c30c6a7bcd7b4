"""
The ``Sink`` base class: the shared half of every sink, and the interface a sink implements.

A sink implements four methods; ``docs/writing-a-sink.md`` walks through one. Each must keep
its promise under concurrency, from any number of processes sharing the store:

``put_if_absent(job_id, outcome)``
    Store *outcome* unless one is stored for *job_id*, atomically (never read-then-write
    across processes); return the stored one, or ``None`` when this call stored it. The
    first terminal event per job wins.
``get_outcomes(job_ids)``
    Return what is stored for those ids; leave absent ids out. Stored outcomes stay
    readable until their TTL, whether or not anyone waited.
``first_seen(key)``
    Remember a delivery key atomically; return whether this call was the first to see it.
``store_stats()``
    Counters of the store, as a ``StoreStats``; zeros where the sink keeps none.

A sink whose store lives outside the process also wakes waiters here when another process
stores an outcome (by calling ``await self.recheck(job_ids)``, and ``await self.recheck()``
after its wake-up channel reconnected), implements ``armed()`` so that a
wait registered after it returns cannot miss such a wake-up, and sets ``keeps_registry``
if it implements the pending registry (``add_pending``/``remove_pending``/``list_pending``).
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, NamedTuple, Self

import anyio
from anyio.abc import TaskGroup

from .._config import DEFAULT_POLL_POLICY, PollPolicy
from .._correlation import Correlator
from .._logs import ids
from .._outcome import Backstop, Outcome, PendingJob, PublishResult, Via
from .._telemetry import current_traceparent
from ..models import Event, JobEvent, is_terminal

logger = logging.getLogger("cobalt_async.sinks")


class StoreStats(NamedTuple):
    """What :meth:`Sink.store_stats` reports about the store; zeros where none is kept."""

    buffered: int = 0
    """Outcomes held in this process (0 for sinks that keep them elsewhere)."""
    evicted: int = 0
    """Outcomes and dedup ids dropped by TTL or size bound."""
    reconnects: int = 0
    """Times the wake-up channel reconnected (each followed by a re-read)."""
    unclaimed: int = 0
    """Outcomes that expired before any wait in this process read them."""
    outages: int = 0
    """Times the store stopped answering (each logged once as it starts, once as it ends)."""
    failed_commands: int = 0
    """Store commands that failed, over all outages."""
    data_losses: int = 0
    """Times the store was found to have lost what it held (a restart without persistence)."""


@dataclass(frozen=True, slots=True)
class SinkStats:
    """Counters of one sink in this process, for tests, metrics and diagnostics."""

    pending: int
    """Job ids awaited in this process right now."""
    buffered: int
    """Outcomes held in this process (0 for sinks that keep them elsewhere)."""
    evicted: int
    """Outcomes and dedup ids dropped by TTL or size bound."""
    duplicates: int
    """Deliveries or terminal events seen again, answered without resolving anything."""
    conflicts: int
    """Second, different terminal events for a job; the first one was kept."""
    reconnects: int
    """Times the wake-up channel reconnected (each followed by a re-read)."""
    backstop_polls: int
    """``GET /v1/webhook-events`` polls made by waiters."""
    unclaimed: int = 0
    """Outcomes that expired before any wait in this process read them."""
    outages: int = 0
    """Times the store stopped answering (each logged once as it starts, once as it ends)."""
    failed_commands: int = 0
    """Store commands that failed, over all outages."""
    data_losses: int = 0
    """Times the store was found to have lost what it held (a restart without persistence)."""


class Sink(abc.ABC):
    """
    Where terminal outcomes are stored, and how waiters of this process are woken.

    A sink's store is the truth: the first terminal event per job_id wins, and stays
    readable until its TTL, whoever waits and whenever. Wake-ups are only hints.
    """

    stores_in_process: ClassVar[bool] = False
    """
    Whether publishing never waits on I/O, so a receiver needs no deadline around it.

    Only ``InMemorySink`` sets it; a subclass that stores remotely must set it back to False.
    """

    keeps_registry: ClassVar[bool] = False
    """Whether the sink keeps the pending registry, so a finished wait must leave it."""

    def __init__(self) -> None:
        self._users = 0
        self._task_group: TaskGroup | None = None
        self._correlator = Correlator(self, keeps_registry=self.keeps_registry)
        self.authority: Backstop | None = None
        """
        Asks Cobalt for a job's first terminal event: what a sink that lost its data settles
        conflicts by. ``CobaltClient`` sets it to its own when the sink has none.
        """
        self._duplicates = 0
        self._conflicts = 0

    # What a concrete sink provides.

    @abc.abstractmethod
    async def get_outcomes(self, job_ids: Sequence[str]) -> dict[str, Outcome]:
        """Read the stored outcomes of *job_ids*; absent ids are left out."""

    @abc.abstractmethod
    async def put_if_absent(self, job_id: str, outcome: Outcome) -> Outcome | None:
        """Store *outcome* unless one exists, atomically; return the existing one, or ``None``."""

    @abc.abstractmethod
    async def first_seen(self, key: str) -> bool:
        """Remember a delivery key, atomically; whether this call saw it first."""

    @abc.abstractmethod
    def store_stats(self) -> StoreStats:
        """Counters of the store."""

    async def armed(self) -> None:
        """Return once a wait registered now cannot miss a wake-up."""

    # For the sink's own wake-ups.

    def is_awaited(self, job_id: str) -> bool:
        """Whether a wait in this process is registered for *job_id*."""
        return self._correlator.is_awaited(job_id)

    async def recheck(self, job_ids: Iterable[str] | None = None) -> None:
        """
        Re-read the store for *job_ids* (default: every wait of this process); wake the settled.

        Call it when another process stored outcomes, and after a lost wake-up channel is back.
        """
        await self._correlator.recheck(job_ids)

    # The shared protocol.

    async def publish(
        self, event: Event, *, delivery_id: str | None = None, via: Via = "webhook"
    ) -> PublishResult:
        """
        Store a verified event and wake its waiters.

        Raises:
            SinkUnavailableError: The event could not be stored; answer 503 to the sender.
        """
        if not is_terminal(event):
            key = event.id or delivery_id
            if key is not None and not await self.first_seen(key):
                self._duplicates += 1
                return "duplicate"
            return "accepted"
        job_event: JobEvent = event  # type: ignore[assignment]
        job_id = str(event.job_id)
        outcome = Outcome(job_event, via, current_traceparent())
        kept = await self.put_if_absent(job_id, outcome)
        self._correlator.resolve(job_id, kept or outcome)
        if kept is None:
            return "accepted"
        if same_event(kept.event, job_event):
            self._duplicates += 1
            return "duplicate"
        self._conflicts += 1
        logger.warning(
            "job %s: second terminal event %s ignored, %s was first",
            job_id,
            job_event.type,
            kept.event.type,
            extra=ids(job_id, event=job_event),
        )
        return "conflict"

    def wait_for(
        self,
        job_id: str,
        *,
        timeout: float | None,
        backstop: Backstop | None = None,
        policy: PollPolicy = DEFAULT_POLL_POLICY,
        webhooks_expected: bool = True,
    ) -> Coroutine[Any, Any, Outcome]:
        """
        Wait for the outcome of *job_id* (see ``_correlation`` for the protocol).

        Once a wait gets the outcome, the job leaves the pending registry.
        """
        # Returned, not awaited here: one coroutine frame less for each of the (up to
        # hundreds of thousands of) pending waits.
        return self._correlator.wait(
            job_id,
            timeout=timeout,
            backstop=backstop,
            policy=policy,
            webhooks_expected=webhooks_expected,
        )

    def wait_many(
        self,
        job_ids: Iterable[str],
        on_outcome: Callable[[str, Outcome], None],
        *,
        timeout: float | None,
        backstop: Backstop | None = None,
        policy: PollPolicy = DEFAULT_POLL_POLICY,
        webhooks_expected: bool = True,
    ) -> Coroutine[Any, Any, None]:
        """
        Wait for many jobs from one task, without a task or a timer per job.

        *on_outcome(job_id, outcome)* is called as each outcome is learnt, in that order.
        Returns once every job has one, or when *timeout* passed (after the final backstop
        polls), leaving the others unknown; the protocol is :meth:`wait_for`'s.
        """
        return self._correlator.wait_many(
            job_ids,
            on_outcome,
            timeout=timeout,
            backstop=backstop,
            policy=policy,
            webhooks_expected=webhooks_expected,
        )

    def stats(self) -> SinkStats:
        store = self.store_stats()
        return SinkStats(
            pending=self._correlator.pending,
            buffered=store.buffered,
            evicted=store.evicted,
            duplicates=self._duplicates,
            conflicts=self._conflicts,
            reconnects=store.reconnects,
            backstop_polls=self._correlator.backstop_polls,
            unclaimed=store.unclaimed,
            outages=store.outages,
            failed_commands=store.failed_commands,
            data_losses=store.data_losses,
        )

    # The pending registry; only durable sinks keep one.

    async def add_pending(self, job: PendingJob) -> None:
        """Record a submitted job until it resolves (durable sinks only)."""

    async def remove_pending(self, job_id: str) -> None:
        """Forget a pending job."""

    async def list_pending(self) -> list[PendingJob]:
        """Jobs submitted through this sink whose outcome was not read yet."""
        return []

    # Lifecycle. Open (``async with sink``, or ``async with CobaltClient(sink=sink)``), a
    # sink runs its background tasks: the waits' shared timers, and its own (RedisSink's
    # listener). Entries are counted, so several users may share one sink; the last to
    # leave, in the task that entered first, stops them.

    async def __aenter__(self) -> Self:
        self._users += 1
        if self._users == 1:
            self._task_group = anyio.create_task_group()
            await self._task_group.__aenter__()
            await self._task_group.start(self._correlator.run_timers)
            self.start_background(self._task_group)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._users -= 1
        if self._users > 0 or self._task_group is None:
            return
        task_group, self._task_group = self._task_group, None
        task_group.cancel_scope.cancel()
        await task_group.__aexit__(None, None, None)
        await self.aclose()

    def start_background(self, task_group: TaskGroup) -> None:
        """Start the sink's own background tasks (a listener, say) in *task_group*."""

    async def aclose(self) -> None:
        """Release connections (background tasks stop when the last user leaves)."""


def same_event(first: JobEvent, second: JobEvent) -> bool:
    """Whether two terminal events are one: the same id, or the same type and data."""
    if first.id is not None and first.id == second.id:
        return True
    return first.type == second.type and first.data == second.data
