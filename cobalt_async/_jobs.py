"""The resolving side: ``client.jobs`` (waiting, attaching) and ``client.webhook_events``."""

from __future__ import annotations

import copy
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal, overload

from pydantic import ValidationError

from ._config import DEFAULT_JOB_TIMEOUT, NotGiven, PollPolicy
from ._errors import APIError, ClientClosedError, RequestValidationError, SinkUnavailableError
from ._handles import JobHandle
from ._http import Requester, parse_answer
from ._logs import ids
from ._outcome import JobKind, Outcome, PendingJob
from ._reconcile import SKEW, Reconciliation, UnknownCreate, settle, terminal_events
from ._telemetry import sink_error
from .models import (
    Event,
    JobEvent,
    Pagination,
    TaskCreatedEvent,
    TaskNoteCreatedEvent,
    WebhookEventList,
    event_from_record,
    is_terminal,
)
from .sinks import Sink

logger = logging.getLogger("cobalt_async")


@dataclass(frozen=True, slots=True)
class WebhookEventPage:
    """One page of ``GET /v1/webhook-events``."""

    events: list[Event]
    pagination: Pagination


class WebhookEvents:
    """``GET /v1/webhook-events``: Cobalt's record of every event, also without a webhook."""

    def __init__(self, requester: Requester) -> None:
        self._requester = requester

    async def list(
        self,
        *,
        job_id: str | int | None = None,
        event_type: str | None = None,
        delivery_status: Literal["success", "failed"] | None = None,
        start_date: date | str | None = None,
        end_date: date | str | None = None,
        page: int = 1,
        page_size: int = 50,
        sort: Literal["created_at", "-created_at"] = "-created_at",
    ) -> WebhookEventPage:
        """
        List recorded events; records that do not parse as events are skipped.

        *start_date* and *end_date* (a ``date`` or ``"YYYY-MM-DD"``) are inclusive.

        Raises:
            RequestValidationError: A parameter is out of range or of the wrong type;
                nothing was sent.
            APIError: The request failed, or its answer is not a webhook-events listing.
        """
        params = _listing_params(
            job_id=job_id,
            event_type=event_type,
            delivery_status=delivery_status,
            start_date=start_date,
            end_date=end_date,
            page=page,
            page_size=page_size,
            sort=sort,
        )
        response = await self._requester.get("/webhook-events", params)
        # A proxy's page, say, is an APIError, so that a backstop poll fails alone.
        problem = "Cobalt's answer is not a webhook-events listing"
        listing = parse_answer(WebhookEventList, response, problem=problem, outcome_unknown=False)
        events = []
        for record in listing.webhook_events:
            try:
                events.append(event_from_record(record))
            except ValidationError:
                logger.warning("skipped a webhook-events record that is not an event")
        return WebhookEventPage(events, listing.pagination)

    async def find_outcome(self, job_id: str) -> JobEvent | None:
        """The first terminal event Cobalt recorded for *job_id*, if any."""
        page = await self.list(job_id=job_id, page_size=100, sort="created_at")
        for event in page.events:
            # Filter again: an older API version ignores the job_id parameter.
            if is_terminal(event) and event.job_id == job_id:
                return event  # type: ignore[return-value]
        return None


class Jobs:
    """Waiting for jobs, and resuming them by job_id in any process."""

    def __init__(
        self,
        requester: Requester,
        webhook_events: WebhookEvents,
        *,
        sink: Sink,
        webhooks_expected: bool,
        poll: PollPolicy,
        job_timeout: float | None,
    ) -> None:
        self._requester = requester
        self._webhook_events = webhook_events
        self._sink = sink
        self._webhooks_expected = webhooks_expected
        self._poll_policy = poll
        self._job_timeout = job_timeout
        self._known: OrderedDict[str, None] = OrderedDict()
        # One bound method for every wait, not one per pending wait.
        self._backstop = self.first_terminal_event

    def using(self, requester: Requester, webhook_events: WebhookEvents) -> Jobs:
        """The same jobs, polled and reconciled through another requester's options."""
        derived = copy.copy(self)
        derived._requester, derived._webhook_events = requester, webhook_events
        derived._backstop = derived.first_terminal_event
        return derived

    @overload
    def attach(self, job_id: str | int, kind: Literal["task"]) -> JobHandle[TaskCreatedEvent]: ...
    @overload
    def attach(
        self, job_id: str | int, kind: Literal["task_note"]
    ) -> JobHandle[TaskNoteCreatedEvent]: ...
    def attach(self, job_id: str | int, kind: JobKind) -> JobHandle[Any]:
        """Rebuild a handle from a job_id alone, in any process, at any time."""
        if kind not in ("task", "task_note"):
            msg = f"kind must be 'task' or 'task_note', not {kind!r}"
            raise ValueError(msg)
        return JobHandle(self, str(job_id), kind)

    async def reconcile(self, error: APIError, *, within: float | None = None) -> Reconciliation:
        """
        Look in Cobalt's record for the job an outcome-unknown create may have made.

        *error* is the ``APIError`` a ``tasks.create`` or ``tasks.notes.create`` raised with
        ``outcome_unknown``; *within* is how many seconds after sending to search (the
        client's ``job_timeout`` by default). Nothing is ever resubmitted.

        Returns:
            ``found`` (with a resolved, registered ``handle``), ``ambiguous`` (every
            candidate, none picked) or ``not_found_yet`` (reconcile again later).
        """
        (result,) = await self.reconcile_many([error], within=within)
        return result

    async def reconcile_many(
        self, errors: Iterable[APIError], *, within: float | None = None
    ) -> list[Reconciliation]:
        """:meth:`reconcile` for many errors, in their order, with one walk over the listing."""
        window = within if within is not None else (self._job_timeout or DEFAULT_JOB_TIMEOUT)
        items = [_unknown_create(error) for error in errors]
        if not items:
            return []
        start = min(item.sent_at for item in items) - SKEW
        end = max(item.sent_at for item in items) + window
        walk = await terminal_events(self._webhook_events, start, end)
        settled = settle(items, walk, known=self._known, within=window)
        return [
            await self._reconciled(item, status, candidates, unattributable, walk.newest)
            for item, (status, candidates, unattributable) in zip(items, settled, strict=True)
        ]

    async def _reconciled(
        self,
        item: UnknownCreate,
        status: Literal["found", "not_found_yet", "ambiguous"],
        candidates: list[JobEvent],
        unattributable: int,
        searched_until: float,
    ) -> Reconciliation:
        if status != "found":
            return Reconciliation(status, None, candidates, unattributable, searched_until)
        event = candidates[0]
        handle = JobHandle(self, str(event.job_id), item.kind, submitted_at=item.sent_at)
        await self.track(handle)
        try:
            # Stored like a polled outcome, unless its webhook came already: dedup applies,
            # a later webhook resolves nothing twice, and every process learns it.
            if not await self._sink.get_outcomes([handle.job_id]):
                await self._sink.publish(event, via="poll")
        except SinkUnavailableError as exc:
            logger.debug(
                "reconciled job %s not stored: %s", handle.job_id, exc, extra=ids(handle.job_id)
            )
        return Reconciliation("found", handle, [event], 0, searched_until)

    async def pending(self) -> list[PendingJob]:
        """Submitted jobs whose outcome no process read yet (durable sinks only)."""
        return await self._sink.list_pending()

    def wait_for(
        self, job_id: str, timeout: float | None | NotGiven
    ) -> Coroutine[Any, Any, Outcome]:
        self._check_open()
        return self._sink.wait_for(
            job_id,
            timeout=self._job_timeout if isinstance(timeout, NotGiven) else timeout,
            backstop=self._backstop,
            policy=self._poll_policy,
            webhooks_expected=self._webhooks_expected,
        )

    def wait_many(
        self,
        job_ids: Iterable[str],
        on_outcome: Callable[[str, Outcome], None],
        timeout: float | None,
    ) -> Coroutine[Any, Any, None]:
        """Wait for many jobs from one task (``wait_all``, ``as_completed``)."""
        self._check_open()
        return self._sink.wait_many(
            job_ids,
            on_outcome,
            timeout=timeout,
            backstop=self._backstop,
            policy=self._poll_policy,
            webhooks_expected=self._webhooks_expected,
        )

    def _check_open(self) -> None:
        if self._requester.closed and not self._webhooks_expected:
            msg = "the CobaltClient is closed and has no sink: nothing can resolve this job"
            raise ClientClosedError(msg)

    async def track(self, handle: JobHandle[Any]) -> None:
        """Record a new job in the sink's pending registry; a sink outage loses nothing."""
        # Known to be someone's already: reconciliation never hands it out again.
        self._known[handle.job_id] = None
        if len(self._known) > _MAX_KNOWN:
            self._known.popitem(last=False)
        job = PendingJob(handle.job_id, handle.kind, time.time(), _deadline(self._job_timeout))
        try:
            await self._sink.add_pending(job)
        except SinkUnavailableError as exc:
            sink_error("add_pending")
            # The sink logs its outage itself.
            logger.debug(
                "job %s not recorded as pending: %s", handle.job_id, exc, extra=ids(handle.job_id)
            )

    async def first_terminal_event(self, job_id: str) -> JobEvent | None:
        """Cobalt's first terminal event for *job_id*, or ``None`` (also once closed)."""
        if self._requester.closed:
            return None
        return await self._webhook_events.find_outcome(job_id)


_MAX_KNOWN = 1_000_000
"""Job ids accepted through this client that reconciliation skips (oldest forgotten first)."""

MAX_PAGE_SIZE = 100
"""Cobalt's largest page of ``GET /v1/webhook-events``."""


def _listing_params(
    *,
    job_id: object,
    event_type: object,
    delivery_status: object,
    start_date: object,
    end_date: object,
    page: object,
    page_size: object,
    sort: object,
) -> dict[str, Any]:
    """The query of a listing, checked as Cobalt would check it, before anything is sent."""
    _require(type(page) is int and page >= 1, "page", "must be an integer >= 1")
    ok = type(page_size) is int and 1 <= page_size <= MAX_PAGE_SIZE
    _require(ok, "page_size", f"must be an integer from 1 to {MAX_PAGE_SIZE}")
    _require(sort in ("created_at", "-created_at"), "sort", "must be created_at or -created_at")
    choices = (None, "success", "failed")
    _require(delivery_status in choices, "delivery_status", "must be success or failed")
    _require(event_type is None or isinstance(event_type, str), "event_type", "must be a str")
    valid_id = job_id is None or (type(job_id) in (str, int) and str(job_id))
    _require(bool(valid_id), "job_id", "must be a non-empty str or an int")
    params: dict[str, Any] = {"page": page, "page_size": page_size, "sort": sort}
    optional = {
        "job_id": None if job_id is None else str(job_id),
        "event_type": event_type,
        "delivery_status": delivery_status,
        "start_date": _day("start_date", start_date),
        "end_date": _day("end_date", end_date),
    }
    params.update((name, value) for name, value in optional.items() if value is not None)
    return params


def _day(name: str, value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, date) and not isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str) and _DAY.fullmatch(value):
        try:
            return date.fromisoformat(value).isoformat()
        except ValueError:
            pass  # 2026-02-30, say
    raise _invalid(name, "must be a datetime.date or a 'YYYY-MM-DD' string")


_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def _require(condition: bool, field: str, problem: str) -> None:
    if not condition:
        raise _invalid(field, problem)


def _invalid(field: str, problem: str) -> RequestValidationError:
    return RequestValidationError(f"Invalid parameter {field}: {problem}", field=field)


def _unknown_create(error: APIError) -> UnknownCreate:
    request, kind, sent_at = error.request, error.kind, error.sent_at
    if not error.outcome_unknown or request is None or kind is None or sent_at is None:
        msg = (
            "reconcile() takes the APIError of a tasks.create or tasks.notes.create whose "
            "outcome is unknown (error.outcome_unknown); this one is not"
        )
        raise ValueError(msg)
    return UnknownCreate(kind, request.model_dump(exclude_none=True), sent_at)


def _deadline(job_timeout: float | None) -> float | None:
    return None if job_timeout is None else time.time() + job_timeout
