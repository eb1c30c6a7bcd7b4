"""The resolving side: ``client.jobs`` (waiting, attaching) and ``client.webhook_events``."""

from __future__ import annotations

import copy
import logging
import math
import time
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal, Protocol, TypedDict, Unpack, get_args, overload

from pydantic import ValidationError

from ._config import DEFAULT_JOB_TIMEOUT, NotGiven, PollPolicy
from ._errors import APIError, ClientClosedError, SinkUnavailableError
from ._handles import JobHandle
from ._http import Requester, parse_answer
from ._logs import ids
from ._outcome import JobKind, Outcome, PendingJob, Via
from ._reconcile import SKEW, Reconciliation, UnknownCreate, created_at, settle, terminal_events
from ._telemetry import sink_error
from ._validation import MAX_PAGE_SIZE, invalid, listing_params, window
from .models import (
    Event,
    JobEvent,
    Pagination,
    PatientLiveFetchCompletedEvent,
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
    """The page's records that parse as events, typed as webhooks are."""
    pagination: Pagination
    records: list[dict[str, Any]] = field(default_factory=list)
    """The page's items as Cobalt sent them, with their delivery status."""


class ListingFilters(TypedDict, total=False):
    """The filters :meth:`WebhookEvents.pages` and :meth:`WebhookEvents.iter` take."""

    job_id: str | int
    event_type: str
    delivery_status: Literal["success", "failed"]
    start_date: date | str
    end_date: date | str
    page_size: int
    sort: Literal["created_at", "-created_at"]


@dataclass(frozen=True, slots=True)
class ReplaySummary:
    """What :meth:`WebhookEvents.replay` fed the receiver, by what the receiver did with it."""

    replayed: int = 0
    """Events new to the receiver: stored (waiters woken) and passed to its on_event hook."""
    duplicates: int = 0
    """Events it had already: delivered live, or replayed before. Nothing resolved twice."""
    conflicts: int = 0
    """Second, different terminal events for a job: the first one stays its outcome."""
    unreadable: int = 0
    """Terminal events this version cannot read: stored, their waiters raise
    ``MalformedEventError``."""
    newest: datetime | None = None
    """When the newest event read was created: the *since* of the next replay."""

    @property
    def read(self) -> int:
        """Events read from Cobalt's record within the window."""
        return self.replayed + self.duplicates + self.conflicts + self.unreadable


class Received(Protocol):
    """What a receiver answers for one event: a ``Receipt``."""

    @property
    def result(self) -> str: ...


class EventReceiver(Protocol):
    """What :meth:`WebhookEvents.replay` feeds: a ``WebhookReceiver``."""

    async def receive_event(
        self, event: Event, *, delivery_id: str | None = None, via: Via = "webhook"
    ) -> Received: ...


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
        List one page of recorded events; records that do not parse as events are skipped.

        *start_date* and *end_date* (a ``date`` or ``"YYYY-MM-DD"``) are inclusive.

        Raises:
            RequestValidationError: A parameter is out of range or of the wrong type;
                nothing was sent.
            APIError: The request failed, or its answer is not a webhook-events listing.
        """
        params = listing_params(
            job_id=job_id,
            event_type=event_type,
            delivery_status=delivery_status,
            start_date=start_date,
            end_date=end_date,
            page=page,
            page_size=page_size,
            sort=sort,
        )
        return await self._page(params)

    async def _page(self, params: dict[str, Any]) -> WebhookEventPage:
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
        return WebhookEventPage(events, listing.pagination, listing.webhook_events)

    def pages(self, **filters: Unpack[ListingFilters]) -> AsyncIterator[WebhookEventPage]:
        """
        Every page of the listing, from the first to the last, each fetched as it is read.

        Takes the filters of :meth:`list` but *page*; *page_size* is 100 by default.

        Raises:
            RequestValidationError: A filter is unknown, out of range or of the wrong type;
                raised by this call, before anything is sent.
        """
        return _Pages(self._page, _walk_params(filters))

    def iter(self, **filters: Unpack[ListingFilters]) -> AsyncIterator[Event]:
        """
        Every recorded event the filters select, page after page, up to the last page.

        ``async for event in client.webhook_events.iter(job_id=handle.job_id): ...``. Takes
        the filters of :meth:`list` but *page*; events come typed as :meth:`list` returns
        them. An event that new ones pushed from one page onto the next is yielded once.

        Raises:
            RequestValidationError: A filter is unknown, out of range or of the wrong type;
                raised by this call, before anything is sent.
        """
        return _Events(self.pages(**filters))

    async def replay(
        self,
        *,
        since: datetime | date,
        into: EventReceiver,
        until: datetime | date | None = None,
        event_type: str | None = None,
        delivery_status: Literal["success", "failed"] | None = None,
        job_id: str | int | None = None,
    ) -> ReplaySummary:
        """
        Feed the events Cobalt recorded since *since* to *into*, oldest first, as deliveries.

        For events missed while the receiver was down: each goes through
        ``into.receive_event()`` (a ``WebhookReceiver``), the path a verified delivery takes,
        so de-duplication, the sink and the on_event hook apply, waiting handles resolve, and
        a replay repeated, or of events delivered live, resolves nothing twice. Every event in
        the window is replayed by default, delivered or not: Cobalt's "success" only says some
        endpoint answered 2xx. *since* and *until* are timezone-aware datetimes or dates.

        Returns:
            The counts by what the receiver did; ``newest`` is the next replay's *since*.

        Raises:
            RequestValidationError: A parameter is wrong; nothing was sent.
            SinkUnavailableError: The sink could not store an event; the replay stopped
                there, and running it again is safe.
        """
        start, end = window(since, until)
        if not callable(getattr(into, "receive_event", None)):
            msg = f"into= takes a WebhookReceiver, not {type(into).__name__}"
            raise TypeError(msg)
        # Cobalt's days may not be UTC days: a day of margin each side, the rest by time.
        filters = {
            "job_id": job_id,
            "event_type": event_type,
            "delivery_status": delivery_status,
            "start_date": (start - _DAY).date(),
            "end_date": None if end is None else (end + _DAY).date(),
            "sort": "created_at",
        }
        walk = _Events(_Pages(self._page, _walk_params(filters)))
        return await _replay(walk, into, start.timestamp(), end.timestamp() if end else math.inf)

    async def find_outcome(self, job_id: str) -> JobEvent | None:
        """The first terminal event Cobalt recorded for *job_id*, if any."""
        page = await self.list(job_id=job_id, page_size=100, sort="created_at")
        for event in page.events:
            # Filter again: an older API version ignores the job_id parameter.
            if is_terminal(event) and event.job_id == job_id:
                return event  # type: ignore[return-value]
        return None


_DAY = timedelta(days=1)
_WALK_DEFAULTS: dict[str, object] = {
    "job_id": None,
    "event_type": None,
    "delivery_status": None,
    "start_date": None,
    "end_date": None,
    "page_size": MAX_PAGE_SIZE,
    "sort": "-created_at",
}


def _walk_params(filters: Mapping[str, object]) -> dict[str, Any]:
    unexpected = sorted(set(filters) - set(_WALK_DEFAULTS))
    if unexpected:
        allowed = ", ".join(_WALK_DEFAULTS)
        problem = f"is not a filter of a walk over every page (allowed: {allowed})"
        raise invalid(unexpected[0], problem)
    given = {name: value for name, value in filters.items() if value is not None}
    return listing_params(**{**_WALK_DEFAULTS, **given}, page=1)


class _Pages:
    """The pages of one listing, each fetched when it is read. Strictly private."""

    def __init__(
        self,
        fetch: Callable[[dict[str, Any]], Awaitable[WebhookEventPage]],
        params: dict[str, Any],
    ) -> None:
        self._fetch = fetch
        self._params = params
        self._number = 0
        self._done = False

    def __aiter__(self) -> _Pages:
        return self

    async def __anext__(self) -> WebhookEventPage:
        if self._done:
            raise StopAsyncIteration
        self._number += 1
        page = await self._fetch({**self._params, "page": self._number})
        self._done = not page.records or self._number >= page.pagination.total_pages
        return page


class _Events:
    """The events of a walk over pages. Strictly private."""

    def __init__(self, pages: AsyncIterator[WebhookEventPage]) -> None:
        self._pages = pages
        self._ready: deque[Event] = deque()
        self._last_page: set[str] = set()

    def __aiter__(self) -> _Events:
        return self

    async def __anext__(self) -> Event:
        while not self._ready:
            page = await anext(self._pages)
            # Events recorded during the walk push the newest-first order down a page: what
            # the previous page showed may come again at the top of this one.
            fresh = [event for event in page.events if event.id not in self._last_page]
            self._ready.extend(fresh)
            self._last_page = {event.id for event in page.events if event.id is not None}
        return self._ready.popleft()


async def _replay(
    events: AsyncIterator[Event], into: EventReceiver, start: float, end: float
) -> ReplaySummary:
    counts: Counter[str] = Counter()
    newest = -math.inf
    async for event in events:
        created = created_at(event)
        if created is not None and not start <= created <= end:
            continue
        receipt = await into.receive_event(event, via="poll")
        if receipt.result == "unavailable":
            msg = (
                f"replay stopped after {sum(counts.values())} events: the sink could not store "
                "the next one. Nothing is lost: run the replay again, it resolves nothing twice"
            )
            raise SinkUnavailableError(msg)
        counts[receipt.result] += 1
        if created is not None:
            newest = max(newest, created)
    return ReplaySummary(
        replayed=counts["accepted"],
        duplicates=counts["duplicate"],
        conflicts=counts["conflict"],
        unreadable=counts["unreadable"],
        newest=None if newest == -math.inf else datetime.fromtimestamp(newest, UTC),
    )


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
    @overload
    def attach(
        self, job_id: str | int, kind: Literal["patient_fetch"]
    ) -> JobHandle[PatientLiveFetchCompletedEvent]: ...
    def attach(self, job_id: str | int, kind: JobKind) -> JobHandle[Any]:
        """Rebuild a handle from a job_id alone, in any process, at any time."""
        if kind not in get_args(JobKind):
            msg = f"kind must be 'task', 'task_note' or 'patient_fetch', not {kind!r}"
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
