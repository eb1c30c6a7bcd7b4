"""
Reconciliation: find the job an outcome-unknown create may have made, in Cobalt's record.

Cobalt has no idempotency key, so a create whose answer was lost cannot be asked about by
name. What can be done: walk ``GET /v1/webhook-events`` over the window after the request
was sent, and look for a terminal event of that kind whose data echoes the request. Only an
exact, unique match is called found; several are returned as they are; none is "not found
yet", never "never created" (a job may still be running, and Cobalt bounds no job's time).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Container, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Literal, Protocol

from ._handles import JobHandle
from ._outcome import JobKind
from .models import Event, JobEvent, Pagination, is_terminal

SKEW = 15.0
"""Seconds before a request's send time still searched: Cobalt's clock is not ours. A job
ends after its request reached Cobalt, so only a clock ahead of Cobalt's by more than this
hides it (as "not found yet", never as a wrong match)."""
MAX_PAGES = 200
"""Pages of 100 events one reconciliation reads at most (20,000 events, newest first); a
walk stopped by it finds nothing, since an unread page might hold a second candidate."""

_TYPES: dict[str, tuple[str, str]] = {
    "task": ("task.created", "task.failed"),
    "task_note": ("task_note.created", "task_note.failed"),
}
# What a created event must echo for a match; every other field it echoes must agree too.
_IDENTIFYING: dict[str, tuple[str, ...]] = {
    "task": ("description",),
    "task_note": ("emr_task_id", "note"),
}


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """What Cobalt's record says about one outcome-unknown create."""

    status: Literal["found", "not_found_yet", "ambiguous"]
    handle: JobHandle[Any] | None = None
    """For ``found``: the job's handle, already resolved and registered like any other."""
    candidates: list[JobEvent] = field(default_factory=list)
    """For ``ambiguous``: every matching terminal event; none was picked."""
    unattributable: int = 0
    """Failure events of this kind in the window: they echo no request field, so any of
    them may be this job's, and none can be shown to be."""
    searched_until: float = -math.inf
    """Unix time of the newest event read: a job finishing later was not seen."""
    safe_to_conclude_at: float | None = None
    """When "not found" would mean "never created": never (``None``). Without idempotency
    keys and with no bound on how long a job runs, absence proves nothing: reconcile again
    later, or decide to accept the risk of a duplicate yourself."""

    @property
    def found(self) -> bool:
        return self.status == "found"


@dataclass(frozen=True, slots=True)
class UnknownCreate:
    """An outcome-unknown create, as reconciliation needs it."""

    kind: JobKind
    fields: dict[str, Any]
    sent_at: float


class Page(Protocol):
    @property
    def events(self) -> list[Event]: ...

    @property
    def pagination(self) -> Pagination: ...


class Listing(Protocol):
    """``client.webhook_events``: what reconciliation reads."""

    def pages(
        self, *, start_date: date, page_size: int, sort: Literal["created_at", "-created_at"]
    ) -> AsyncIterator[Page]: ...


@dataclass(frozen=True, slots=True)
class Walk:
    """What one walk over the listing read."""

    events: list[JobEvent]
    newest: float
    """The newest event's time: a job finishing later was not seen."""
    complete: bool
    """Whether it reached back to the window's start (else MAX_PAGES stopped it)."""


async def terminal_events(listing: Listing, start: float, end: float) -> Walk:
    """
    Terminal events created between *start* and *end*.

    Newest first, back to *start*: a recent request costs a page or two, however long the
    record of the day is.
    """
    found: list[JobEvent] = []
    newest = -math.inf
    day = datetime.fromtimestamp(start, UTC).date()
    pages = listing.pages(start_date=day, page_size=100, sort="-created_at")
    number = 0
    async for page in pages:
        number += 1
        for event in page.events:
            created = created_at(event)
            if created is not None:
                newest = max(newest, created)
                if created < start:
                    return Walk(found, newest, complete=True)
                if created > end:
                    continue
            if is_terminal(event):
                found.append(event)  # type: ignore[arg-type]
        if number >= MAX_PAGES and number < page.pagination.total_pages:
            return Walk(found, newest, complete=False)
    return Walk(found, newest, complete=True)


def settle(
    items: Sequence[UnknownCreate], walk: Walk, *, known: Container[str], within: float
) -> list[tuple[Literal["found", "not_found_yet", "ambiguous"], list[JobEvent], int]]:
    """
    Each item's status, candidates and unattributable failures.

    An event that matches several items is no item's find: they all come out ambiguous, so
    two identical requests never both claim one job. A walk that stopped short finds
    nothing: an unread page might hold a second candidate.
    """
    fresh = [event for event in walk.events if str(event.job_id) not in known]
    matches = [[event for event in fresh if _matches(item, event, within)] for item in items]
    claims: dict[str, int] = {}
    for candidates in matches:
        for event in candidates:
            claims[str(event.job_id)] = claims.get(str(event.job_id), 0) + 1
    results: list[tuple[Literal["found", "not_found_yet", "ambiguous"], list[JobEvent], int]] = []
    for item, candidates in zip(items, matches, strict=True):
        shared = any(claims[str(event.job_id)] > 1 for event in candidates)
        if len(candidates) == 1 and not shared and walk.complete:
            results.append(("found", candidates, 0))
        elif candidates:
            results.append(("ambiguous", candidates, 0))
        else:
            failures = sum(_unattributable(item, event, within) for event in fresh)
            results.append(("not_found_yet", [], failures))
    return results


def created_at(event: Event) -> float | None:
    """The event's ``created`` as Unix time, when it can be read (Cobalt's offsets vary)."""
    text = event.created
    if not text:
        return None
    text = text.replace("Z", "+00:00")
    if len(text) > 5 and text[-5] in "+-" and text[-3] != ":":
        text = f"{text[:-2]}:{text[-2:]}"  # +0000 -> +00:00
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _in_window(item: UnknownCreate, event: JobEvent, within: float) -> bool:
    created = created_at(event)
    return created is None or item.sent_at - SKEW <= created <= item.sent_at + within


def _matches(item: UnknownCreate, event: JobEvent, within: float) -> bool:
    if event.type != _TYPES[item.kind][0] or not _in_window(item, event, within):
        return False
    data = _echoed(event)
    if any(name not in data for name in _IDENTIFYING[item.kind]):
        return False
    return all(data[name] == value for name, value in item.fields.items() if name in data)


def _unattributable(item: UnknownCreate, event: JobEvent, within: float) -> bool:
    return event.type == _TYPES[item.kind][1] and _in_window(item, event, within)


def _echoed(event: JobEvent) -> dict[str, Any]:
    data = event.data
    if hasattr(data, "model_dump"):
        dumped: dict[str, Any] = data.model_dump(exclude_none=True)
        return dumped
    return dict(data) if isinstance(data, dict) else {}
