from __future__ import annotations

from typing import Annotated, Any, NotRequired, TypedDict, TypeVar

from pydantic import StringConstraints, ValidationError

from .._errors import RequestValidationError
from ._base import RequestModel

R = TypeVar("R", bound=RequestModel)

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


def build_request(model: type[R], fields: object) -> R:
    """Validate *fields* into *model*, or raise :class:`RequestValidationError`."""
    if isinstance(fields, model):
        return fields
    if not isinstance(fields, dict):
        msg = f"expected a dict of {model.__name__} fields, got {type(fields).__name__}"
        raise RequestValidationError(msg)
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise _explain(model, fields, exc) from None


def _explain(model: type[RequestModel], fields: dict[Any, Any], exc: ValidationError) -> Exception:
    unexpected = sorted(str(key) for key in fields if key not in model.model_fields)
    if unexpected:
        allowed = ", ".join(model.model_fields)
        msg = f"Unexpected fields in request body: {', '.join(unexpected)} (allowed: {allowed})"
        return RequestValidationError(msg, field=unexpected[0])
    error = exc.errors()[0]
    field = ".".join(str(part) for part in error["loc"])
    name = str(error["loc"][0])
    if error["type"] == "missing":
        msg = f"Missing required field: {field}"
    elif error["type"] == "string_pattern_mismatch" or error["type"] == "string_too_short":
        msg = f"Invalid field {field}: must be a non-empty string"
    else:
        msg = f"Invalid field {field}: {error['msg'].lower()}"
        if name == "notify_list":
            msg += " (notify_list must be a list of non-empty strings)"
    return RequestValidationError(msg, field=name)
