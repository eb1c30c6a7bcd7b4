from __future__ import annotations

import enum
import time
from collections.abc import Callable, Coroutine, Generator, Iterable
from typing import Any, Generic, Protocol, TypeVar, cast

from ._config import NOT_GIVEN, NotGiven
from ._errors import JobFailedError, MalformedEventError
from ._outcome import JobKind, Outcome, Via
from ._telemetry import job_resolved
from .models import (
    JobEvent,
    MalformedJobEvent,
    PatientLiveFetchCompletedEvent,
    TaskCreatedEvent,
    TaskNoteCreatedEvent,
    is_failure,
)

E = TypeVar("E", TaskCreatedEvent, TaskNoteCreatedEvent, PatientLiveFetchCompletedEvent)


class OutcomeSource(Protocol):
    """Where a handle waits for its job's outcome (``client.jobs``)."""

    def wait_for(
        self, job_id: str, timeout: float | None | NotGiven
    ) -> Coroutine[Any, Any, Outcome]: ...

    def wait_many(
        self,
        job_ids: Iterable[str],
        on_outcome: Callable[[str, Outcome], None],
        timeout: float | None,
    ) -> Coroutine[Any, Any, None]: ...


class JobStatus(enum.Enum):
    """What a handle knows about its job."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    MALFORMED = "malformed"
    """Cobalt's terminal event could not be read; the job may have succeeded."""


class JobHandle(Generic[E]):
    """
    An accepted Cobalt job whose outcome arrives later.

    ``await handle`` returns the success event or raises :class:`JobFailedError`;
    ``await handle.wait(timeout=...)`` bounds the wait. Any number of coroutines may await
    one handle; they share one outcome, and cancelling one never disturbs the others.
    A handle is rebuilt from its job_id alone with ``client.jobs.attach()``.
    """

    __slots__ = (
        "_jobs",
        "_outcome",
        "job_id",
        "kind",
        "resolved_at",
        "submitted_at",
        "task_id",
        "task_note_id",
    )

    def __init__(
        self,
        jobs: OutcomeSource,
        job_id: str,
        kind: JobKind,
        *,
        task_id: str | None = None,
        task_note_id: str | None = None,
        submitted_at: float | None = None,
    ) -> None:
        self._jobs = jobs
        self._outcome: Outcome | None = None
        self.job_id = job_id
        self.kind: JobKind = kind
        self.task_id = task_id
        self.task_note_id = task_note_id
        self.submitted_at = submitted_at
        """Unix time Cobalt accepted the job (``None`` for an attached handle)."""
        self.resolved_at: float | None = None
        """Unix time this handle learnt the outcome."""

    def __repr__(self) -> str:
        return f"<JobHandle {self.kind} {self.status.value} job_id={self.job_id!r}>"

    def __await__(self) -> Generator[Any, None, E]:
        return self.wait().__await__()

    @property
    def status(self) -> JobStatus:
        if self._outcome is None:
            return JobStatus.PENDING
        event = self._outcome.event
        if type(event) is MalformedJobEvent:
            return JobStatus.MALFORMED
        return JobStatus.FAILED if is_failure(event) else JobStatus.SUCCEEDED

    @property
    def event(self) -> JobEvent | None:
        """The terminal event once known (success or failure), else ``None``."""
        return None if self._outcome is None else self._outcome.event

    @property
    def resolved_via(self) -> Via | None:
        """``"webhook"`` or ``"poll"``: how the outcome was learnt, once known."""
        return None if self._outcome is None else self._outcome.via

    def done(self) -> bool:
        """Whether this handle already knows its job's outcome."""
        return self._outcome is not None

    def _settle(self, outcome: Outcome) -> Outcome:
        """Keep the outcome the first time this handle learns it; return the one kept."""
        if self._outcome is not None:
            return self._outcome  # another waiter of this handle settled it meanwhile
        self._outcome, self.resolved_at = outcome, time.time()
        job_resolved(self.job_id, self.kind, outcome, self.submitted_at, self.resolved_at)
        return outcome

    async def wait(self, timeout: float | None | NotGiven = NOT_GIVEN) -> E:
        """
        Wait for the job's outcome.

        Args:
            timeout: Seconds to wait; ``None`` waits for as long as it takes. Defaults to
                the client's ``job_timeout``.

        Returns:
            The success event (``TaskCreatedEvent``, ``TaskNoteCreatedEvent`` or
            ``PatientLiveFetchCompletedEvent``).

        Raises:
            JobFailedError: Cobalt reported the job as failed.
            MalformedEventError: Cobalt's terminal event for the job cannot be read.
            JobTimeoutError: No outcome in time. The job was not cancelled and may still
                succeed: wait again, or attach to the job_id later. Do not resubmit.
        """
        outcome = self._outcome
        if outcome is None:
            outcome = self._settle(await self._jobs.wait_for(self.job_id, timeout))
        event = outcome.event
        if type(event) is MalformedJobEvent:
            raise MalformedEventError(event)
        if is_failure(event):
            raise JobFailedError(event)
        return cast(E, event)
