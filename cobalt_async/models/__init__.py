"""Request, response and event models of Cobalt's task API."""

from ._events import (
    Event,
    FailureReason,
    JobEvent,
    TaskCreatedData,
    TaskCreatedEvent,
    TaskFailedData,
    TaskFailedEvent,
    TaskNoteCreatedData,
    TaskNoteCreatedEvent,
    TaskNoteFailedData,
    TaskNoteFailedEvent,
    UnknownEvent,
    event_from_record,
    is_terminal,
    parse_event,
)
from ._requests import (
    TaskCreateParams,
    TaskCreateRequest,
    TaskNoteCreateParams,
    TaskNoteCreateRequest,
)
from ._responses import ErrorBody, Pagination, TaskCreated, TaskNoteCreated

__all__ = [
    "ErrorBody",
    "Event",
    "FailureReason",
    "JobEvent",
    "Pagination",
    "TaskCreateParams",
    "TaskCreateRequest",
    "TaskCreated",
    "TaskCreatedData",
    "TaskCreatedEvent",
    "TaskFailedData",
    "TaskFailedEvent",
    "TaskNoteCreateParams",
    "TaskNoteCreateRequest",
    "TaskNoteCreated",
    "TaskNoteCreatedData",
    "TaskNoteCreatedEvent",
    "TaskNoteFailedData",
    "TaskNoteFailedEvent",
    "UnknownEvent",
    "event_from_record",
    "is_terminal",
    "parse_event",
]
