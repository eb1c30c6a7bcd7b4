"""
The plain data every layer shares: what kind a job is, how its outcome was learnt, and
what a sink keeps about it. Nothing here does I/O; everything above imports it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple, TypeAlias

from .models import JobEvent

JobKind: TypeAlias = Literal["task", "task_note", "patient_fetch"]
"""What a job does: write a task or a note on a task into the EHR, or fetch patients from it."""

Via: TypeAlias = Literal["webhook", "poll"]
"""How an outcome was learnt: from a webhook delivery, or by polling Cobalt."""

PublishResult: TypeAlias = Literal["accepted", "duplicate", "conflict"]
"""What storing an event did: kept it, recognised it, or kept an earlier, different one."""


class Outcome(NamedTuple):
    """A job's terminal event and how it was learnt."""

    event: JobEvent
    via: Via
    trace: str | None = None
    """The W3C ``traceparent`` of the delivery that brought it, when tracing is on."""


Backstop: TypeAlias = Callable[[str], Awaitable[JobEvent | None]]
"""Asks Cobalt for a job's terminal event (``GET /v1/webhook-events?job_id=``)."""


@dataclass(frozen=True, slots=True)
class PendingJob:
    """A submitted job whose outcome was not yet read, as kept by a durable sink."""

    job_id: str
    kind: JobKind
    submitted_at: float
    """Unix time of the submission."""
    deadline: float | None = None
    """Unix time after which the entry may be forgotten."""
