"""The client's resources: ``tasks``, ``tasks.notes``, ``webhook_events`` and ``jobs``."""

from __future__ import annotations

import logging
import time
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar, Unpack, overload

import httpx
from pydantic import BaseModel, ValidationError

from ._batch import DEFAULT_CONCURRENCY, ProgressCallback, submit_many
from ._config import NotGiven, PollPolicy
from ._errors import APIError, ClientClosedError, CobaltError, SinkUnavailableError
from ._handles import JobHandle, JobKind
from .models import (
    Event,
    JobEvent,
    Pagination,
    TaskCreated,
    TaskCreatedEvent,
    TaskCreateParams,
    TaskCreateRequest,
    TaskNoteCreated,
    TaskNoteCreatedEvent,
    TaskNoteCreateParams,
    TaskNoteCreateRequest,
    event_from_record,
    is_terminal,
)
from .models._requests import build_request
from .models._responses import WebhookEventList
from .sinks import PendingJob

if TYPE_CHECKING:
    from ._correlation import Outcome
    from ._http import Requester
    from .sinks import Sink

logger = logging.getLogger("cobalt_async")

M = TypeVar("M", bound=BaseModel)


def _accepted(response_model: type[M], response: httpx.Response) -> M:
    try:
        return response_model.model_validate_json(response.content)
    except ValidationError as exc:
        msg = "Cobalt accepted the request but its answer has no usable job_id"
        raise _unreadable(msg, response, outcome_unknown=True) from exc


def _unreadable(msg: str, response: httpx.Response, *, outcome_unknown: bool) -> APIError:
    """An answer Cobalt sent that cannot be read, named by the request's full path."""
    request = response.request
    return APIError(
        msg,
        method=request.method,
        path=request.url.path,
        status_code=response.status_code,
        outcome_unknown=outcome_unknown,
    )


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
        page: int = 1,
        page_size: int = 50,
        sort: Literal["created_at", "-created_at"] = "-created_at",
    ) -> WebhookEventPage:
        """
        List recorded events; records that do not parse as events are skipped.

        Raises:
            APIError: The request failed, or its answer is not a webhook-events listing.
        """
        params: dict[str, Any] = {"page": page, "page_size": page_size, "sort": sort}
        if job_id is not None:
            params["job_id"] = str(job_id)
        if event_type is not None:
            params["event_type"] = event_type
        response = await self._requester.get("/webhook-events", params)
        try:
            listing = WebhookEventList.model_validate_json(response.content)
        except ValidationError as exc:
            # A proxy's page, say: an APIError, so that a backstop poll fails alone.
            msg = "Cobalt's answer is not a webhook-events listing"
            raise _unreadable(msg, response, outcome_unknown=False) from exc
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

    async def pending(self) -> list[PendingJob]:
        """Submitted jobs whose outcome no process read yet (durable sinks only)."""
        return await self._sink.list_pending()

    def wait_for(
        self, job_id: str, timeout: float | None | NotGiven
    ) -> Coroutine[Any, Any, Outcome]:
        if self._requester.closed and not self._webhooks_expected:
            msg = "the CobaltClient is closed and has no sink: nothing can resolve this job"
            raise ClientClosedError(msg)
        return self._sink.wait_for(
            job_id,
            timeout=self._job_timeout if isinstance(timeout, NotGiven) else timeout,
            backstop=self._poll,
            policy=self._poll_policy,
            webhooks_expected=self._webhooks_expected,
        )

    async def track(self, handle: JobHandle[Any]) -> None:
        """Record a new job in the sink's pending registry; a sink outage loses nothing."""
        job = PendingJob(handle.job_id, handle.kind, time.time(), _deadline(self._job_timeout))
        try:
            await self._sink.add_pending(job)
        except SinkUnavailableError as exc:
            logger.warning("job %s not recorded as pending: %s", handle.job_id, exc)

    async def _poll(self, job_id: str) -> JobEvent | None:
        if self._requester.closed:
            return None
        return await self._webhook_events.find_outcome(job_id)


def _deadline(job_timeout: float | None) -> float | None:
    return None if job_timeout is None else time.time() + job_timeout


class TaskNotes:
    """``POST /v1/tasks/notes``: append a note to a task in the EHR."""

    def __init__(self, requester: Requester, jobs: Jobs) -> None:
        self._requester = requester
        self._jobs = jobs

    async def create(
        self, **fields: Unpack[TaskNoteCreateParams]
    ) -> JobHandle[TaskNoteCreatedEvent]:
        """
        Submit a note; returns its handle once Cobalt accepted the job.

        Raises:
            RequestValidationError: A field is missing, empty, unknown or of the wrong type;
                nothing was sent.
            APIError: Cobalt refused the request, or it failed in transit.
        """
        request = build_request(TaskNoteCreateRequest, fields)
        return await self.submit(request)

    async def submit(self, request: TaskNoteCreateRequest) -> JobHandle[TaskNoteCreatedEvent]:
        """Submit an already validated request."""
        response = await self._requester.post("/tasks/notes", _body(request))
        created = _accepted(TaskNoteCreated, response)
        handle: JobHandle[TaskNoteCreatedEvent] = JobHandle(
            self._jobs,
            created.job_id,
            "task_note",
            task_note_id=created.task_note_id,
            submitted_at=time.time(),
        )
        await self._jobs.track(handle)
        return handle

    async def create_many(
        self,
        items: Iterable[TaskNoteCreateParams | TaskNoteCreateRequest],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        on_progress: ProgressCallback | None = None,
    ) -> list[JobHandle[TaskNoteCreatedEvent] | CobaltError]:
        """Submit many notes; see :meth:`Tasks.create_many`."""
        return await submit_many(
            items,
            build=lambda item: build_request(TaskNoteCreateRequest, item),
            submit=self.submit,
            concurrency=concurrency,
            on_progress=on_progress,
        )


class Tasks:
    """``POST /v1/tasks``: create tasks in the EHR; ``notes`` appends notes to them."""

    def __init__(self, requester: Requester, jobs: Jobs) -> None:
        self._requester = requester
        self._jobs = jobs
        self.notes = TaskNotes(requester, jobs)

    async def create(self, **fields: Unpack[TaskCreateParams]) -> JobHandle[TaskCreatedEvent]:
        """
        Submit a task; returns its handle once Cobalt accepted the job.

        ``patient_mrn`` and ``description`` are always required; whether ``subject``,
        ``assignee_user_id`` or ``phone_call_type_id`` are depends on the provider's EHR.

        Raises:
            RequestValidationError: A field is missing, empty, unknown or of the wrong type;
                nothing was sent.
            APIError: Cobalt refused the request, or it failed in transit. A create is never
                retried once it may have reached Cobalt (see ``APIError.outcome_unknown``).
        """
        request = build_request(TaskCreateRequest, fields)
        return await self.submit(request)

    async def submit(self, request: TaskCreateRequest) -> JobHandle[TaskCreatedEvent]:
        """Submit an already validated request."""
        response = await self._requester.post("/tasks", _body(request))
        created = _accepted(TaskCreated, response)
        handle: JobHandle[TaskCreatedEvent] = JobHandle(
            self._jobs, created.job_id, "task", task_id=created.task_id, submitted_at=time.time()
        )
        await self._jobs.track(handle)
        return handle

    async def create_many(
        self,
        items: Iterable[TaskCreateParams | TaskCreateRequest],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        on_progress: ProgressCallback | None = None,
    ) -> list[JobHandle[TaskCreatedEvent] | CobaltError]:
        """
        Submit many tasks with at most *concurrency* requests in flight.

        Returns one outcome per item, in input order: its handle, or the error that kept it
        from being accepted (a ``RequestValidationError``, a 400, a 404...). One bad item
        never stops the others. A 429 slows the whole batch down (honouring
        ``Retry-After``) and resubmits only what Cobalt refused; nothing that may have
        reached Cobalt is sent twice. *on_progress* gets a ``BatchProgress`` after each item.
        """
        return await submit_many(
            items,
            build=lambda item: build_request(TaskCreateRequest, item),
            submit=self.submit,
            concurrency=concurrency,
            on_progress=on_progress,
        )


def _body(request: BaseModel) -> bytes:
    return request.model_dump_json(exclude_none=True).encode()
