"""Submission: ``client.tasks``, ``.tasks.notes`` and ``.patients`` turn requests into handles."""

from __future__ import annotations

import abc
import time
from collections.abc import Iterable
from functools import partial
from typing import ClassVar, Generic, TypeVar, Unpack

from pydantic import BaseModel

from ._batch import DEFAULT_CONCURRENCY, ProgressCallback, submit_many
from ._errors import APIError, CobaltError
from ._handles import JobHandle
from ._http import Requester, parse_answer
from ._jobs import Jobs
from ._outcome import JobKind
from ._telemetry import job_submitted
from ._validation import build_request
from .models import (
    PatientFetchAccepted,
    PatientFetchParams,
    PatientFetchRequest,
    PatientLiveFetchCompletedEvent,
    TaskCreated,
    TaskCreatedEvent,
    TaskCreateParams,
    TaskCreateRequest,
    TaskNoteCreated,
    TaskNoteCreatedEvent,
    TaskNoteCreateParams,
    TaskNoteCreateRequest,
)

Request = TypeVar("Request", bound=BaseModel)
Params = TypeVar("Params")
Answer = TypeVar("Answer", bound=BaseModel)
E = TypeVar("E", TaskCreatedEvent, TaskNoteCreatedEvent, PatientLiveFetchCompletedEvent)

_NO_JOB_ID = "Cobalt accepted the request but its answer has no usable job_id"


class _Submitter(abc.ABC, Generic[Request, Params, Answer, E]):
    """One job endpoint: validate, POST, read the job_id, track the handle."""

    path: ClassVar[str]
    kind: ClassVar[JobKind]
    request_model: type[Request]
    answer_model: type[Answer]
    reads_only: ClassVar[bool] = False
    """Whether the job only reads the EHR, so that its POST may be retried like a GET."""

    def __init__(self, requester: Requester, jobs: Jobs) -> None:
        self._requester = requester
        self._jobs = jobs

    async def submit(self, request: Request) -> JobHandle[E]:
        """Submit an already validated request."""
        body = request.model_dump_json(exclude_none=True).encode()
        sent_at = time.time()
        try:
            response = await self._requester.post(self.path, body, idempotent=self.reads_only)
            answer = parse_answer(
                self.answer_model, response, problem=_NO_JOB_ID, outcome_unknown=not self.reads_only
            )
        except APIError as exc:
            if exc.outcome_unknown:
                # What client.jobs.reconcile() matches against Cobalt's record.
                exc.request, exc.kind, exc.sent_at = request, self.kind, sent_at  # type: ignore[assignment]
            raise
        handle = self._handle(answer)
        await self._jobs.track(handle)
        job_submitted(self.kind)
        return handle

    @abc.abstractmethod
    def _handle(self, answer: Answer) -> JobHandle[E]:
        """The handle of the job Cobalt accepted."""


class _Creator(_Submitter[Request, Params, Answer, E]):
    """A create endpoint: one EHR write per job, and batches of them."""

    async def create_many(
        self,
        items: Iterable[Params | Request],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        on_progress: ProgressCallback | None = None,
    ) -> list[JobHandle[E] | CobaltError]:
        """
        Submit many items with at most *concurrency* requests in flight.

        Returns one result per item, in input order: its handle, or the error that kept it
        from being accepted (a ``RequestValidationError``, a 400, a 404...). One bad item
        never stops the others. A 429 slows the whole batch down (honouring
        ``Retry-After``) and resubmits only what Cobalt refused; nothing that may have
        reached Cobalt is sent twice. *on_progress* gets a ``BatchProgress`` after each item.
        """
        return await submit_many(
            items,
            build=partial(build_request, self.request_model),
            submit=self.submit,
            concurrency=concurrency,
            on_progress=on_progress,
        )


class TaskNotes(
    _Creator[TaskNoteCreateRequest, TaskNoteCreateParams, TaskNoteCreated, TaskNoteCreatedEvent]
):
    """``POST /v1/tasks/notes``: append a note to a task in the EHR."""

    path = "/tasks/notes"
    kind = "task_note"
    request_model = TaskNoteCreateRequest
    answer_model = TaskNoteCreated

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
        return await self.submit(build_request(TaskNoteCreateRequest, fields))

    def _handle(self, answer: TaskNoteCreated) -> JobHandle[TaskNoteCreatedEvent]:
        return JobHandle(
            self._jobs,
            answer.job_id,
            "task_note",
            task_note_id=answer.task_note_id,
            submitted_at=time.time(),
        )


class Tasks(_Creator[TaskCreateRequest, TaskCreateParams, TaskCreated, TaskCreatedEvent]):
    """``POST /v1/tasks``: create tasks in the EHR; ``notes`` appends notes to them."""

    path = "/tasks"
    kind = "task"
    request_model = TaskCreateRequest
    answer_model = TaskCreated

    def __init__(self, requester: Requester, jobs: Jobs) -> None:
        super().__init__(requester, jobs)
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
        return await self.submit(build_request(TaskCreateRequest, fields))

    def _handle(self, answer: TaskCreated) -> JobHandle[TaskCreatedEvent]:
        return JobHandle(
            self._jobs, answer.job_id, "task", task_id=answer.task_id, submitted_at=time.time()
        )


_FetchSubmitter = _Submitter[
    PatientFetchRequest, PatientFetchParams, PatientFetchAccepted, PatientLiveFetchCompletedEvent
]


class Patients(_FetchSubmitter):
    """``POST /v1/patients/fetch``: a live fetch of patients, and their tasks, from the EHR."""

    path = "/patients/fetch"
    kind = "patient_fetch"
    request_model = PatientFetchRequest
    answer_model = PatientFetchAccepted
    reads_only = True

    async def fetch(
        self, **fields: Unpack[PatientFetchParams]
    ) -> JobHandle[PatientLiveFetchCompletedEvent]:
        """
        Start a live fetch; returns its handle once Cobalt accepted the job.

        ``search_by`` is ``"mrn"``, ``"dob"``, ``"phone"`` or ``"name"``, with the field it
        names (``"name"``: ``first_name`` or ``last_name``). ``include=["tasks"]`` brings each
        patient's EHR tasks, whose ``emr_task_id`` ``client.tasks.notes.create()`` takes.
        A fetch only reads the EHR, so it is retried like a GET.

        Raises:
            RequestValidationError: A field is missing, unknown, of the wrong type or
                format (dates ``YYYY-MM-DD``, phones ``XXX-XXX-XXXX``); nothing was sent.
            APIError: Cobalt refused the request, or it failed in transit.
        """
        return await self.submit(build_request(PatientFetchRequest, fields))

    def _handle(self, answer: PatientFetchAccepted) -> JobHandle[PatientLiveFetchCompletedEvent]:
        return JobHandle(self._jobs, answer.job_id, "patient_fetch", submitted_at=time.time())
