"""
Builders of Cobalt webhook events and of signed deliveries, for tests.

Each factory returns the event as a plain dict, shaped as Cobalt sends it (operation envelope,
``job_id`` always a string). Keyword arguments beyond the named ones replace members of
``data``; an override of ``None`` leaves that member out.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime
from typing import Any

from .._signing import compact_json, sign_webhook

__all__ = [
    "make_task_created_event",
    "make_task_failed_event",
    "make_task_note_created_event",
    "make_task_note_failed_event",
    "signed_delivery",
]

DEFAULT_REFERENCE_ID = "atr_test"
"""``access_token_reference_id`` of events built without one."""

_DEFAULT_JOB_ID = "10000"
_TASK_FAILURE = ("emr_rejected", "The EMR rejected the task.")
_NOTE_FAILURE = ("emr_rejected", "The EMR rejected the task note.")


def utc_timestamp() -> str:
    """The current time as Cobalt writes it: ISO 8601, milliseconds, ``Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _envelope(
    kind: str,
    job_id: str | int,
    data: dict[str, Any],
    *,
    event_id: str | None,
    created: str | None,
    access_token_reference_id: str,
) -> dict[str, Any]:
    # Key order is part of the signed bytes, so it follows Cobalt's documented examples.
    return {
        "id": event_id or f"evt_{secrets.token_hex(12)}",
        "access_token_reference_id": access_token_reference_id,
        "object": "event",
        "created": created or utc_timestamp(),
        "type": kind,
        "job_id": str(job_id),
        "data": data,
    }


def _merge(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = {**data, **overrides}
    return {key: value for key, value in merged.items() if value is not None}


def _failure(
    failure_reason: str | None,
    reasons: list[dict[str, str]] | None,
    default: tuple[str, str],
) -> dict[str, Any]:
    if reasons is None:
        reasons = [{"code": default[0], "description": default[1]}]
    if failure_reason is None:
        # Cobalt documents failure_reason as the concatenation of the reasons' descriptions.
        failure_reason = "; ".join(reason.get("description", "") for reason in reasons)
    return {"failure_reason": failure_reason, "reasons": reasons}


def make_task_created_event(
    *,
    job_id: str | int = _DEFAULT_JOB_ID,
    emr_task_id: str | None = None,
    task_id: str | None = None,
    event_id: str | None = None,
    created: str | None = None,
    access_token_reference_id: str = DEFAULT_REFERENCE_ID,
    **data_overrides: Any,
) -> dict[str, Any]:
    """A ``task.created`` event; random ids where none are given."""
    data = {
        "task_id": task_id or secrets.token_hex(12),
        "emr_task_id": emr_task_id or str(uuid.uuid4()),
        "subject": "Follow-up appointment needed",
        "description": "Schedule a follow-up to review recent lab results.",
        "patient_mrn": "MRN-12345",
    }
    return _envelope(
        "task.created",
        job_id,
        _merge(data, data_overrides),
        event_id=event_id,
        created=created,
        access_token_reference_id=access_token_reference_id,
    )


def make_task_failed_event(
    *,
    job_id: str | int = _DEFAULT_JOB_ID,
    task_id: str | None = None,
    failure_reason: str | None = None,
    reasons: list[dict[str, str]] | None = None,
    event_id: str | None = None,
    created: str | None = None,
    access_token_reference_id: str = DEFAULT_REFERENCE_ID,
    **data_overrides: Any,
) -> dict[str, Any]:
    """A ``task.failed`` event; ``failure_reason`` defaults to the reasons' descriptions."""
    data = {
        "task_id": task_id or secrets.token_hex(12),
        **_failure(failure_reason, reasons, _TASK_FAILURE),
    }
    return _envelope(
        "task.failed",
        job_id,
        _merge(data, data_overrides),
        event_id=event_id,
        created=created,
        access_token_reference_id=access_token_reference_id,
    )


def make_task_note_created_event(
    *,
    job_id: str | int = _DEFAULT_JOB_ID,
    emr_task_id: str | None = None,
    task_note_id: str | None = None,
    emr_note_id: str | None = None,
    event_id: str | None = None,
    created: str | None = None,
    access_token_reference_id: str = DEFAULT_REFERENCE_ID,
    **data_overrides: Any,
) -> dict[str, Any]:
    """A ``task_note.created`` event; random ids where none are given."""
    data = {
        "task_note_id": task_note_id or secrets.token_hex(12),
        "emr_note_id": emr_note_id or str(uuid.uuid4()),
        "emr_task_id": emr_task_id or str(uuid.uuid4()),
        "note": "Patient called back, scheduled for next week.",
    }
    return _envelope(
        "task_note.created",
        job_id,
        _merge(data, data_overrides),
        event_id=event_id,
        created=created,
        access_token_reference_id=access_token_reference_id,
    )


def make_task_note_failed_event(
    *,
    job_id: str | int = _DEFAULT_JOB_ID,
    task_note_id: str | None = None,
    failure_reason: str | None = None,
    reasons: list[dict[str, str]] | None = None,
    event_id: str | None = None,
    created: str | None = None,
    access_token_reference_id: str = DEFAULT_REFERENCE_ID,
    **data_overrides: Any,
) -> dict[str, Any]:
    """A ``task_note.failed`` event; ``failure_reason`` defaults to the reasons' descriptions."""
    data = {
        "task_note_id": task_note_id or secrets.token_hex(12),
        **_failure(failure_reason, reasons, _NOTE_FAILURE),
    }
    return _envelope(
        "task_note.failed",
        job_id,
        _merge(data, data_overrides),
        event_id=event_id,
        created=created,
        access_token_reference_id=access_token_reference_id,
    )


def signed_delivery(
    event: dict[str, Any], secret: str, *, attempt: int = 1
) -> tuple[bytes, dict[str, str]]:
    """
    The body and headers of one delivery of *event*, exactly as Cobalt sends them.

    Feed them to ``WebhookReceiver.receive(body, headers)`` or POST them to a webhook app.
    """
    body = compact_json(event)
    headers = {
        "content-type": "application/json",
        "cobalt-verification": sign_webhook(body, secret),
        "webhook-id": str(event.get("id", "")),
        "webhook-timestamp": str(event.get("created", "")),
        "webhook-attempt": str(attempt),
    }
    return body, headers
