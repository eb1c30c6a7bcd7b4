"""Request bodies of the create endpoints, and the keyword arguments that build them."""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated, Any, Literal, NoReturn, NotRequired, TypeAlias, TypedDict

from pydantic import AfterValidator, BeforeValidator, StringConstraints, model_validator
from pydantic_core import PydanticCustomError

from ._base import RequestModel

NonBlankStr = Annotated[str, StringConstraints(min_length=1, pattern=r"\S")]

SearchBy: TypeAlias = Literal["dob", "name", "phone", "mrn"]
Include: TypeAlias = Literal["tasks", "insurances"]

_PHONE = re.compile(r"\d{3}-\d{3}-\d{4}")
# What each search mode needs beside search_by: all of one tuple, or one of several.
_COMPANIONS: dict[str, tuple[str, ...]] = {
    "dob": ("dob",),
    "name": ("first_name", "last_name"),
    "phone": ("phone",),
    "mrn": ("mrn",),
}


def _refuse(code: str, message: str, **context: str) -> NoReturn:
    """Refuse a value; *message* is what the error says after the field's name."""
    raise PydanticCustomError(code, message, context)


def _iso_day(value: Any) -> Any:
    if isinstance(value, datetime):
        # A datetime is a date too, but dropping its time silently could shift the day.
        _refuse("date_type", "must be a date, not a datetime: pass .date()")
    return value.isoformat() if isinstance(value, date) else value


def _past_day(value: str) -> str:
    try:
        day = date.fromisoformat(value)
    except ValueError:
        day = None
    if day is None or len(value) != 10:
        _refuse("date_format", "must be a date as YYYY-MM-DD, e.g. 1990-01-31")
    if day > date.today():
        _refuse("date_future", "must not be in the future")
    return value


def _phone(value: str) -> str:
    if not _PHONE.fullmatch(value):
        _refuse("phone_format", "must be written XXX-XXX-XXXX, e.g. 555-123-4567")
    return value


def _include_list(value: Any) -> Any:
    """Cobalt takes ``include`` as a list or a comma-separated string; we always send a list."""
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",")]
    if isinstance(value, list | tuple):
        return list(dict.fromkeys(value))  # once each, in the caller's order
    return value


Day = Annotated[str, BeforeValidator(_iso_day), AfterValidator(_past_day)]
Phone = Annotated[str, AfterValidator(_phone)]


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


class PatientFetchRequest(RequestModel):
    """The body of ``POST /v1/patients/fetch``: a live fetch from the EHR."""

    search_by: SearchBy
    """How to find the patient; each mode needs its own fields (``name``: a first or last name)."""
    dob: Day | None = None
    """Date of birth, ``YYYY-MM-DD`` (a ``datetime.date`` is accepted)."""
    first_name: NonBlankStr | None = None
    last_name: NonBlankStr | None = None
    phone: Phone | None = None
    """``XXX-XXX-XXXX``."""
    mrn: NonBlankStr | None = None
    """Medical record number, for ``search_by="mrn"``."""
    include: Annotated[list[Include], BeforeValidator(_include_list)] | None = None
    """What to fetch with each patient: ``["tasks"]`` for their EHR tasks."""

    @model_validator(mode="after")
    def _companions(self) -> PatientFetchRequest:
        needed = _COMPANIONS[self.search_by]
        if all(getattr(self, name) is None for name in needed):
            _refuse(
                "missing_companion",
                "search_by='{mode}' needs {wanted} as well",
                mode=self.search_by,
                wanted=" or ".join(needed),
                field=needed[0],
            )
        return self


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


class PatientFetchParams(TypedDict):
    """Keyword arguments of ``client.patients.fetch()``."""

    search_by: SearchBy
    dob: NotRequired[date | str | None]
    first_name: NotRequired[str | None]
    last_name: NotRequired[str | None]
    phone: NotRequired[str | None]
    mrn: NotRequired[str | None]
    include: NotRequired[list[Include] | str | None]
