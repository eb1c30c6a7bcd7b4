from __future__ import annotations

import abc
import logging
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Literal, Self, TypeAlias

import anyio
from anyio.abc import TaskGroup

from .._config import DEFAULT_POLL_POLICY, PollPolicy
from .._correlation import Backstop, Correlator, Outcome
from ..models import Event, JobEvent, is_terminal

logger = logging.getLogger("cobalt_async.sinks")

PublishResult: TypeAlias = Literal["accepted", "duplicate", "conflict"]


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


@dataclass(frozen=True, slots=True)
class PendingJob:
    """A submitted job whose outcome was not yet read, as kept by a durable sink."""

    job_id: str
    kind: str
    submitted_at: float
    """Unix time of the submission."""
    deadline: float | None = None
    """Unix time after which the entry may be forgotten."""


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

    def __init__(self) -> None:
        self._users = 0
        self._task_group: TaskGroup | None = None
        # Only a sink that overrides remove_pending keeps a registry to clean up after waits.
        keeps_registry = type(self).remove_pending is not Sink.remove_pending
        self._correlator = Correlator(self, keeps_registry=keeps_registry)
        self._duplicates = 0
        self._conflicts = 0

    # What a concrete sink provides.

    @abc.abstractmethod
    async def get_outcomes(self, job_ids: Sequence[str]) -> dict[str, Outcome]:
        """Read the stored outcomes of *job_ids*; absent ids are left out."""

    @abc.abstractmethod
    async def _put_if_absent(self, job_id: str, outcome: Outcome) -> Outcome | None:
        """Store *outcome* unless one exists; return the existing one, or ``None``."""

    @abc.abstractmethod
    async def _first_seen(self, key: str) -> bool:
        """Remember a delivery key; whether it was new."""

    @abc.abstractmethod
    def _store_stats(self) -> tuple[int, int, int]:
        """``(buffered, evicted, reconnects)``."""

    async def armed(self) -> None:
        """Return once a wait registered now cannot miss a wake-up."""

    # The shared protocol.

    async def publish(
        self, event: Event, *, delivery_id: str | None = None, via: str = "webhook"
    ) -> PublishResult:
        """
        Store a verified event and wake its waiters.

        Raises:
            SinkUnavailableError: The event could not be stored; answer 503 to the sender.
        """
        if not is_terminal(event):
            key = event.id or delivery_id
            if key is not None and not await self._first_seen(key):
                self._duplicates += 1
                return "duplicate"
            return "accepted"
        job_event: JobEvent = event  # type: ignore[assignment]
        job_id = str(event.job_id)
        outcome = Outcome(job_event, via)
        kept = await self._put_if_absent(job_id, outcome)
        self._correlator.resolve(job_id, kept or outcome)
        if kept is None:
            return "accepted"
        if _same_event(kept.event, job_event):
            self._duplicates += 1
            return "duplicate"
        self._conflicts += 1
        logger.warning(
            "job %s: second terminal event %s ignored, %s was first",
            job_id, job_event.type, kept.event.type,
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

    def stats(self) -> SinkStats:
        buffered, evicted, reconnects = self._store_stats()
        return SinkStats(
            pending=self._correlator.pending,
            buffered=buffered,
            evicted=evicted,
            duplicates=self._duplicates,
            conflicts=self._conflicts,
            reconnects=reconnects,
            backstop_polls=self._correlator.backstop_polls,
            unclaimed=self._unclaimed(),
        )

    def _unclaimed(self) -> int:
        return 0

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
            self._start_background(self._task_group)
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

    def _start_background(self, task_group: TaskGroup) -> None:
        """Start the sink's own background tasks, if it has any."""

    async def aclose(self) -> None:
        """Release connections (background tasks stop when the last user leaves)."""


def _same_event(first: JobEvent, second: JobEvent) -> bool:
    if first.id is not None and first.id == second.id:
        return True
    return first.type == second.type and first.data == second.data
