from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import (
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    model_serializer,
    model_validator,
)

from ._base import CobaltModel, LaxStr, OpenModel
from ._json import decode_json
from ._patients import Patient, PatientTask, gather_tasks


class FailureReason(OpenModel):
    """One structured reason of a failure event."""

    code: str | None = None
    description: str | None = None


class TaskCreatedData(OpenModel):
    """Payload of ``task.created``."""

    emr_task_id: LaxStr
    """The EHR's own id of the task: pass it to ``client.tasks.notes.create()``."""
    task_id: LaxStr | None = None
    """Cobalt's id of the task, as returned by ``POST /v1/tasks``."""
    subject: str | None = None
    description: str | None = None


class TaskFailedData(OpenModel):
    """Payload of ``task.failed``."""

    task_id: LaxStr | None = None
    failure_reason: str | None = None
    """Human-readable reason; a concatenation of ``reasons`` when both are sent."""
    reasons: list[FailureReason] = Field(default_factory=list)


class TaskNoteCreatedData(OpenModel):
    """Payload of ``task_note.created``."""

    emr_note_id: LaxStr
    """The EHR's own id of the note: Cobalt's Create Task Note page sends it with every success."""
    task_note_id: LaxStr | None = None
    emr_task_id: LaxStr | None = None
    note: str | None = None


class TaskNoteFailedData(OpenModel):
    """Payload of ``task_note.failed``."""

    task_note_id: LaxStr | None = None
    failure_reason: str | None = None
    reasons: list[FailureReason] = Field(default_factory=list)


class PatientLiveFetchData(OpenModel):
    """
    Payload of ``patient.live_fetch_completed``.

    Whether Cobalt lists tasks under each patient or once at the top level of ``data`` is
    not documented, so both are read: ``tasks`` always holds every task, and a top-level
    task that names its patient (``patient_mrn``, ``mrn`` or ``patient_id``) is also listed
    under that patient.
    """

    success: bool = True
    """``False`` when the fetch itself failed: the handle then raises ``JobFailedError``."""
    patient_count: int | None = None
    patients: list[Patient] = Field(default_factory=list)
    tasks: list[PatientTask] = Field(default_factory=list)
    """Every task of every patient found, in the order Cobalt sent them."""
    failure_reason: str | None = None
    reasons: list[FailureReason] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _gather_tasks(cls, value: Any) -> Any:
        return gather_tasks(value) if isinstance(value, Mapping) else value


class _Envelope(CobaltModel):
    id: str | None = None
    """Event id; deliveries of one event share it."""
    type: str
    job_id: LaxStr | None = None
    """Always a string, whatever JSON type Cobalt sent."""
    created: str | None = None
    """ISO 8601 as Cobalt sent it (Cobalt's offsets are not always well formed)."""
    object: str | None = None
    access_token_reference_id: str | None = None


class TaskCreatedEvent(_Envelope):
    """A task was written to the EHR."""

    type: Literal["task.created"]
    data: TaskCreatedData


class TaskFailedEvent(_Envelope):
    """A task could not be written to the EHR."""

    type: Literal["task.failed"]
    data: TaskFailedData


class TaskNoteCreatedEvent(_Envelope):
    """A note was appended to an EHR task."""

    type: Literal["task_note.created"]
    data: TaskNoteCreatedData


class TaskNoteFailedEvent(_Envelope):
    """A note could not be appended to an EHR task."""

    type: Literal["task_note.failed"]
    data: TaskNoteFailedData


class PatientLiveFetchCompletedEvent(_Envelope):
    """
    A live fetch (``client.patients.fetch()``) finished: the patients found, and their tasks.

    It comes in Cobalt's live-fetch envelope: ``job_execution_id`` (older) or ``job_id``
    (newer) names the job, ``timestamp`` and ``action`` stand for ``created`` and ``object``.
    Either way ``job_id`` holds the job's id and ``created`` the timestamp.
    """

    type: Literal["patient.live_fetch_completed"]
    data: PatientLiveFetchData
    job_execution_id: LaxStr | None = None
    timestamp: str | None = None
    action: str | None = None
    user_id: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _as_operation_envelope(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value
        filled = dict(value)
        if filled.get("job_id") is None and filled.get("job_execution_id") is not None:
            filled["job_id"] = filled["job_execution_id"]
        if filled.get("created") is None and filled.get("timestamp") is not None:
            filled["created"] = filled["timestamp"]
        return filled


class UnknownEvent(_Envelope):
    """An event of a type this version does not model; ``raw`` keeps the whole payload."""

    data: Any = None
    raw: dict[str, Any]

    @model_validator(mode="before")
    @classmethod
    def _keep_raw(cls, value: Any) -> Any:
        # Always the whole payload, even one with a "raw" member of its own.
        if isinstance(value, Mapping):
            return {**value, "raw": dict(value)}
        return value


class MalformedJobEvent(_Envelope):
    """
    A signed terminal event this version cannot read (a required field missing, say).

    It settles its job all the same: the job's waiters raise ``MalformedEventError`` at once
    instead of waiting out their timeout. ``problem`` names what was wrong (field paths and
    error types, never values); ``raw`` keeps the whole payload, and is what it serialises to.
    """

    job_id: LaxStr
    problem: str
    data: Any = None
    raw: dict[str, Any]

    @model_serializer
    def _as_sent(self) -> dict[str, Any]:
        # As Cobalt sent it, so that a sink that stores the dump reads the same event back.
        return self.raw


_TypedJobEvent: TypeAlias = (
    TaskCreatedEvent
    | TaskFailedEvent
    | TaskNoteCreatedEvent
    | TaskNoteFailedEvent
    | PatientLiveFetchCompletedEvent
)
JobEvent: TypeAlias = _TypedJobEvent | MalformedJobEvent
"""A terminal event: it settles the job named by its ``job_id``."""

Event: TypeAlias = JobEvent | UnknownEvent

FAILURE_TYPES = frozenset({"task.failed", "task_note.failed"})
LIVE_FETCH_COMPLETED = "patient.live_fetch_completed"
_TERMINAL_TYPES = FAILURE_TYPES | {"task.created", "task_note.created", LIVE_FETCH_COMPLETED}


def _event_tag(value: Any) -> str:
    if type(value) is dict or isinstance(value, Mapping):
        kind = value.get("type")
    else:
        kind = getattr(value, "type", None)
    return kind if isinstance(kind, str) and kind in _TERMINAL_TYPES else "unknown"


_AnyEvent = Annotated[
    Annotated[TaskCreatedEvent, Tag("task.created")]
    | Annotated[TaskFailedEvent, Tag("task.failed")]
    | Annotated[TaskNoteCreatedEvent, Tag("task_note.created")]
    | Annotated[TaskNoteFailedEvent, Tag("task_note.failed")]
    | Annotated[PatientLiveFetchCompletedEvent, Tag(LIVE_FETCH_COMPLETED)]
    | Annotated[UnknownEvent, Tag("unknown")],
    Discriminator(_event_tag),
]
_EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(_AnyEvent)
# The four terminal types by their "type" string, looked up inside pydantic-core: twice as
# fast as the callable discriminator, which _EVENT_ADAPTER needs for its UnknownEvent fallback.
_JOB_EVENT_ADAPTER: TypeAdapter[_TypedJobEvent] = TypeAdapter(
    Annotated[_TypedJobEvent, Field(discriminator="type")]
)
# Its core validator, called directly on the webhook hot path: the adapter's own method only
# adds the handling of options that are never passed here.
_validate_job_event_json = _JOB_EVENT_ADAPTER.validator.validate_json


def parse_event(payload: bytes | str | Mapping[str, Any]) -> Event:
    """
    Parse a webhook body (raw JSON or already decoded) into its event model.

    Accepts every document ``JSON.stringify`` writes. A terminal event with a ``job_id`` whose
    other fields do not validate becomes a :class:`MalformedJobEvent`.

    Raises:
        pydantic.ValidationError: The payload is not an event object.
    """
    if isinstance(payload, bytes | str):
        try:
            event: JobEvent = _validate_job_event_json(payload)
            return event
        except ValidationError:
            pass  # an unknown type, or not an event at all: the full union says which
        try:
            return _EVENT_ADAPTER.validate_json(payload)
        except ValidationError as exc:
            # Decoded, for what only Python mode reads: see decode_json and _malformed.
            payload = decode_json(payload, exc)
    return _parse_decoded(payload)


def _parse_decoded(payload: Any) -> Event:
    try:
        return _JOB_EVENT_ADAPTER.validate_python(payload)
    except ValidationError:
        pass
    try:
        return _EVENT_ADAPTER.validate_python(payload)
    except ValidationError as exc:
        malformed = _malformed(payload, exc)
        if malformed is None:
            raise
        return malformed


def _malformed(payload: Any, error: ValidationError) -> MalformedJobEvent | None:
    """A terminal event naming its job, whatever else is wrong with it; else ``None``."""
    if not isinstance(payload, Mapping):
        return None
    kind = payload.get("type")
    if not isinstance(kind, str) or kind not in _TERMINAL_TYPES:
        return None
    job_id = payload.get("job_id")
    if job_id is None:
        job_id = payload.get("job_execution_id")  # the live-fetch envelope's older name
    if type(job_id) is int:
        job_id = str(job_id)
    if not isinstance(job_id, str) or not job_id:
        return None
    event_id = payload.get("id")
    return MalformedJobEvent(
        id=event_id if isinstance(event_id, str) else None,
        type=kind,
        job_id=job_id,
        problem=_problem(error),
        data=payload.get("data"),
        raw=dict(payload),
    )


def _problem(error: ValidationError) -> str:
    # Paths and error types only: a message or an input may quote EHR text.
    details = error.errors(include_url=False, include_input=False, include_context=False)
    named = {
        f"{'.'.join(str(part) for part in detail['loc'][1:]) or 'event'}: {detail['type']}"
        for detail in details
    }
    return "; ".join(sorted(named)[:5])


def is_terminal(event: Event) -> bool:
    """Whether *event* settles a job: a known outcome (task, note, live fetch) with a ``job_id``."""
    # By type name: pydantic's isinstance() on model classes is slow on this hot path.
    return event.job_id is not None and event.type in _TERMINAL_TYPES


def is_failure(event: Event) -> bool:
    """
    Whether *event* reports a failed job: ``task.failed``, ``task_note.failed``, or a live
    fetch that reports ``success: false``.
    """
    if type(event) is PatientLiveFetchCompletedEvent:
        return not event.data.success
    return event.type in FAILURE_TYPES


def event_from_record(record: Mapping[str, Any]) -> Event:
    """
    Parse one item of ``GET /v1/webhook-events`` into an event.

    Both known record shapes are accepted: the newer one (``event_id``, ``event_type``,
    ``created_at``) and the older one (``id``, ``type``, ``created``). ``data`` may hold the
    whole webhook body or only its ``data`` member.
    """
    return parse_event(webhook_body(record))


def webhook_body(record: Mapping[str, Any]) -> dict[str, Any]:
    """The webhook body one item of ``GET /v1/webhook-events`` records, as Cobalt delivers it."""
    data = record.get("data")
    if isinstance(data, Mapping) and "type" in data and "data" in data:
        return {"job_id": record.get("job_id"), **data}
    return {
        "id": record.get("event_id", record.get("id")),
        "type": record.get("event_type", record.get("type")),
        "job_id": record.get("job_id"),
        "created": record.get("created_at", record.get("created")),
        "object": "event",
        "access_token_reference_id": record.get("access_token_reference_id"),
        "data": data if data is not None else {},
    }
