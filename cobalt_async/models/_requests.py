"""Request bodies of the create endpoints, and the keyword arguments that build them."""

from __future__ import annotations

from typing import Annotated, NotRequired, TypedDict

from pydantic import StringConstraints

from ._base import RequestModel

NonBlankStr = Annotated[str, StringConstraints(min_length=1, pattern=r"\S")]


class TaskCreateRequest(RequestModel):
    """The body of ``POST /v1/tasks``."""

    patient_mrn: NonBlankStr
    """Medical record number of the patient."""
    description: NonBlankStr
    """Task body."""
    subject: NonBlankStr | None = None
    """Task title; some EHRs require it."""
    assignee_user_id: NonBlankStr | None = None
    """EHR user the task is assigned to; some EHRs require it."""
    phone_call_type_id: NonBlankStr | None = None
    """Phone call type; some EHRs require it."""
    notify_list: list[NonBlankStr] | None = None
    """EHR users to notify."""


class TaskNoteCreateRequest(RequestModel):
    """The body of ``POST /v1/tasks/notes``."""

    emr_task_id: NonBlankStr
    """The EHR's id of the task, as in ``TaskCreatedEvent.data.emr_task_id``."""
    note: NonBlankStr
    """Note text."""


class TaskCreateParams(TypedDict):
    """Keyword arguments of ``client.tasks.create()``."""

    patient_mrn: str
    description: str
    subject: NotRequired[str | None]
    assignee_user_id: NotRequired[str | None]
    phone_call_type_id: NotRequired[str | None]
    notify_list: NotRequired[list[str] | None]


class TaskNoteCreateParams(TypedDict):
    """Keyword arguments of ``client.tasks.notes.create()``."""

    emr_task_id: str
    note: str
