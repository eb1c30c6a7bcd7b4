"""Async Python SDK for Cobalt's EHR task API: submit tasks and notes, await their outcome."""

from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from ._batch import BatchProgress, Completed, WaitResult, as_completed, wait_all
from ._client import CobaltClient
from ._config import NOT_GIVEN, PollPolicy
from ._errors import (
    APIError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    CobaltConnectionError,
    CobaltError,
    CobaltTimeoutError,
    ConfigurationError,
    JobFailedError,
    JobTimeoutError,
    LoginRequiredError,
    MalformedEventError,
    NotFoundError,
    RateLimitError,
    RequestValidationError,
    ServerError,
    SinkUnavailableError,
    WebhookVerificationError,
)
from ._handles import JobHandle, JobStatus
from ._jobs import ReplaySummary, WebhookEventPage
from ._logs import configure_from_environment as _configure_logs_from_environment
from ._outcome import JobKind
from ._reconcile import Reconciliation
from ._signing import sign_webhook, verify_webhook
from ._version import __version__
from ._webhooks import Receipt, WebhookReceiver
from .models import (
    Event,
    JobEvent,
    MalformedJobEvent,
    Patient,
    PatientLiveFetchCompletedEvent,
    PatientTask,
    TaskCreatedEvent,
    TaskFailedEvent,
    TaskNoteCreatedEvent,
    TaskNoteFailedEvent,
    UnknownEvent,
    Webhook,
    WebhookList,
)
from .sinks import InMemorySink, Sink, SinkStats, SQLiteSink

if _TYPE_CHECKING:
    from .sinks import PostgresSink

__all__ = [
    "NOT_GIVEN",
    "APIError",
    "APIStatusError",
    "AuthenticationError",
    "BadRequestError",
    "BatchProgress",
    "ClientClosedError",
    "CobaltClient",
    "CobaltConnectionError",
    "CobaltError",
    "CobaltTimeoutError",
    "Completed",
    "ConfigurationError",
    "Event",
    "InMemorySink",
    "JobEvent",
    "JobFailedError",
    "JobHandle",
    "JobKind",
    "JobStatus",
    "JobTimeoutError",
    "LoginRequiredError",
    "MalformedEventError",
    "MalformedJobEvent",
    "NotFoundError",
    "Patient",
    "PatientLiveFetchCompletedEvent",
    "PatientTask",
    "PollPolicy",
    "PostgresSink",
    "RateLimitError",
    "Receipt",
    "Reconciliation",
    "ReplaySummary",
    "RequestValidationError",
    "SQLiteSink",
    "ServerError",
    "Sink",
    "SinkStats",
    "SinkUnavailableError",
    "TaskCreatedEvent",
    "TaskFailedEvent",
    "TaskNoteCreatedEvent",
    "TaskNoteFailedEvent",
    "UnknownEvent",
    "WaitResult",
    "Webhook",
    "WebhookEventPage",
    "WebhookList",
    "WebhookReceiver",
    "WebhookVerificationError",
    "__version__",
    "as_completed",
    "sign_webhook",
    "verify_webhook",
    "wait_all",
]

_LAZY = frozenset({"PostgresSink"})
"""Exports that need an extra, imported when first asked for."""

# Tracebacks and reprs name the public path, not the private module.
for _name in __all__:
    if _name in _LAZY:
        continue
    _obj = globals()[_name]
    if "._" in getattr(_obj, "__module__", "").removeprefix("cobalt_async"):
        try:
            _obj.__module__ = __name__
        except (AttributeError, TypeError):
            pass
del _name, _obj


def __getattr__(name: str) -> _Any:
    if name in _LAZY:
        from . import sinks

        value = getattr(sinks, name)  # an ImportError naming the extra when it is missing
        value.__module__ = __name__
        globals()[name] = value
        return value
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


_configure_logs_from_environment()
