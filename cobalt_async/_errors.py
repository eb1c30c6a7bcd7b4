"""
Every error ``cobalt_async`` raises shares one root, :class:`CobaltError`.

    CobaltError
    ├── ConfigurationError (ValueError)        a client or receiver was set up wrongly
    ├── RequestValidationError (ValueError)    refused locally, before any request was sent
    ├── ClientClosedError (RuntimeError)       the client was used after aclose()
    ├── APIError                               Cobalt answered, or the request failed in transit
    │   ├── APIStatusError                     Cobalt answered with an error status
    │   │   ├── BadRequestError                400: missing or unexpected field
    │   │   ├── AuthenticationError            401: client_id or client_secret not accepted
    │   │   ├── LoginRequiredError             403: the EHR link expired, run Cobalt Link again
    │   │   ├── NotFoundError                  404: unknown user, MRN or task
    │   │   ├── RateLimitError                 429
    │   │   └── ServerError                    5xx
    │   └── CobaltConnectionError              the request failed in transit
    │       └── CobaltTimeoutError             ... by timing out
    ├── JobFailedError                         Cobalt reported the job as failed
    ├── MalformedEventError                    Cobalt's terminal event for the job is unreadable
    ├── JobTimeoutError (TimeoutError)         a wait gave up; the job itself goes on
    ├── WebhookVerificationError (ValueError)  a webhook's signature did not verify
    └── SinkUnavailableError                   the sink could not store or read outcomes

``APIError.outcome_unknown`` is true when a create request may have reached Cobalt
(a 5xx, a read timeout, a dropped connection): the job may exist, so do not resubmit blindly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._outcome import JobKind
    from .models import (
        FailureReason,
        JobEvent,
        MalformedJobEvent,
        TaskCreateRequest,
        TaskNoteCreateRequest,
    )

_UNKNOWN_OUTCOME_ADVICE = (
    "The request may have reached Cobalt, so the job may exist: do not resubmit blindly. "
    "Find it with `await client.jobs.reconcile(exc)` before creating it again."
)


class CobaltError(Exception):
    """Base class of every error raised by cobalt_async."""


class ConfigurationError(CobaltError, ValueError):
    """A client, sink or receiver was configured wrongly; the message says what to set."""


class RequestValidationError(CobaltError, ValueError):
    """A request was refused locally before anything was sent to Cobalt."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ClientClosedError(CobaltError, RuntimeError):
    """The client was used after it was closed."""


class APIError(CobaltError):
    """A request to Cobalt did not succeed."""

    def __init__(
        self,
        message: str,
        *,
        method: str,
        path: str,
        status_code: int | None = None,
        outcome_unknown: bool = False,
    ) -> None:
        self.message = message
        self.method = method
        self.path = path
        self.status_code = status_code
        self.outcome_unknown = outcome_unknown
        self.request: TaskCreateRequest | TaskNoteCreateRequest | None = None
        """For an outcome-unknown create: the request it was about (what reconcile matches)."""
        self.kind: JobKind | None = None
        """For an outcome-unknown create: the kind of job it would have made."""
        self.sent_at: float | None = None
        """For an outcome-unknown create: Unix time the request was sent."""
        super().__init__(self._describe())

    def _describe(self) -> str:
        status = f" -> {self.status_code}" if self.status_code is not None else ""
        text = f"{self.method} {self.path}{status}: {self.message}"
        if not self.outcome_unknown:
            return text
        # The advice is sentences of its own, whatever punctuation Cobalt's message ends with.
        ended = text if text.endswith((".", "!", "?")) else f"{text}."
        return f"{ended} {_UNKNOWN_OUTCOME_ADVICE}"


class APIStatusError(APIError):
    """
    Cobalt answered with an error status and its ``{success: false, message}`` envelope.

    ``retry_after`` carries the ``Retry-After`` header in seconds, when Cobalt sent one;
    ``headers`` every header of the answer, and ``request_id`` the id a proxy or Cobalt gave
    the request (quote it to Cobalt's support), when one was sent.
    """

    status_code: int

    def __init__(
        self,
        message: str,
        *,
        method: str,
        path: str,
        status_code: int,
        error: str | None = None,
        retry_after: float | None = None,
        outcome_unknown: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.error = error
        self.retry_after = retry_after
        self.headers: Mapping[str, str] = headers if headers is not None else {}
        self.request_id = _request_id(self.headers)
        super().__init__(
            message,
            method=method,
            path=path,
            status_code=status_code,
            outcome_unknown=outcome_unknown,
        )

    def _describe(self) -> str:
        text = super()._describe()
        return text if self.request_id is None else f"{text} (request id {self.request_id})"


_REQUEST_ID_HEADERS = ("x-request-id", "request-id", "x-amzn-requestid")
"""Cobalt documents none; these are what its proxies and most APIs send."""


def _request_id(headers: Mapping[str, str]) -> str | None:
    lowered = {name.lower(): value for name, value in headers.items()}
    return next((lowered[name] for name in _REQUEST_ID_HEADERS if lowered.get(name)), None)


class BadRequestError(APIStatusError):
    """400: Cobalt refused the request; ``fields`` names the missing or unexpected fields."""

    @property
    def fields(self) -> tuple[str, ...]:
        head, _, names = self.message.partition(":")
        # Only "Missing required field: x" / "Unexpected fields in request body: a, b" (and
        # "...parameters: ...") name fields; "Patient not found: MRN-1" does not.
        if not any(word in head.lower() for word in ("field", "parameter")):
            return ()
        return tuple(name.strip(" .") for name in names.split(",") if name.strip(" ."))

    @property
    def field(self) -> str | None:
        return self.fields[0] if self.fields else None


class AuthenticationError(APIStatusError):
    """401: Cobalt did not accept ``client_id`` and ``client_secret``; see the message."""


class LoginRequiredError(APIStatusError):
    """403: the provider's EHR link expired; run Cobalt Link in update mode."""


class NotFoundError(APIStatusError):
    """404: Cobalt does not know the user, patient or task."""


class RateLimitError(APIStatusError):
    """429: too many requests; ``retry_after`` is Cobalt's hint in seconds, when given."""


class ServerError(APIStatusError):
    """5xx: Cobalt failed. For a create request the outcome is unknown."""


class CobaltConnectionError(APIError):
    """The request failed in transit."""


class CobaltTimeoutError(CobaltConnectionError):
    """The request timed out."""


class JobFailedError(CobaltError):
    """Cobalt reported the job as failed; ``event`` is the failure event."""

    def __init__(self, event: JobEvent) -> None:
        self.event = event
        self.job_id = event.job_id
        self.failure_reason: str | None = getattr(event.data, "failure_reason", None)
        self.reasons: tuple[FailureReason, ...] = tuple(getattr(event.data, "reasons", None) or ())
        # Codes only: the descriptions name patients and providers (see exc.failure_reason).
        codes = ", ".join(reason.code for reason in self.reasons if reason.code)
        detail = f"reasons: {codes}" if codes else "see exc.failure_reason"
        super().__init__(f"job {self.job_id} failed ({event.type}); {detail}")


class MalformedEventError(CobaltError):
    """
    Cobalt sent a signed terminal event for the job that this version cannot read.

    The job may well have succeeded in the EHR: do not resubmit. ``event.raw`` holds the
    payload as sent, ``problem`` what was wrong with it; a newer cobalt-async may read it.
    """

    def __init__(self, event: MalformedJobEvent) -> None:
        self.event = event
        self.job_id = event.job_id
        self.problem = event.problem
        super().__init__(
            f"job {self.job_id}: its {event.type} event is not one this version can read "
            f"({self.problem}). The job may have succeeded: do not resubmit; inspect "
            "exc.event.raw, or upgrade cobalt-async."
        )


class JobTimeoutError(CobaltError, TimeoutError):
    """A wait for a job gave up before its outcome was known."""

    def __init__(self, job_id: str, timeout: float) -> None:
        self.job_id = job_id
        self.timeout = timeout
        super().__init__(
            f"job {job_id} has no outcome after {timeout:g} s. A timeout does not mean the job "
            "failed and it was not cancelled: await the handle again, or attach to the job_id "
            "later. Do not resubmit."
        )


class WebhookVerificationError(CobaltError, ValueError):
    """A webhook delivery failed signature verification."""


class SinkUnavailableError(CobaltError):
    """The sink could not store or read outcomes (for example, Redis is down)."""
