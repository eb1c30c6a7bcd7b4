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
from typing import Any, Literal

from .._signing import compact_json, sign_webhook

__all__ = [
    "make_patient_live_fetch_completed_event",
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
_FETCH_FAILURE = ("emr_unavailable", "The EMR could not be reached.")
_SAMPLE_PATIENT = {
    "id": "pat_123",
    "mrn": "MRN-12345",
    "first_name": "Jane",
    "last_name": "Doe",
    "date_of_birth": "1990-01-01",
    "tasks": [{"emr_task_id": "9bef4113-e9ce-4895-9a17-2c18cd625116", "subject": "Call back"}],
}


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


def make_patient_live_fetch_completed_event(
    *,
    job_id: str | int = "job_10000",
    patients: list[dict[str, Any]] | None = None,
    success: bool = True,
    shape: Literal["new", "old"] = "new",
    tasks_at_top_level: bool = False,
    event_id: str | None = None,
    timestamp: str | None = None,
    access_token_reference_id: str = DEFAULT_REFERENCE_ID,
    **data_overrides: Any,
) -> dict[str, Any]:
    """
    A ``patient.live_fetch_completed`` event, in Cobalt's live-fetch envelope.

    *shape* ``"new"`` names the job ``job_id`` (beside ``access_token_reference_id``),
    ``"old"`` names it ``job_execution_id`` (beside ``user_id``). Each patient's ``tasks``
    stay on it, or with *tasks_at_top_level* move to ``data.tasks``, each naming its
    patient's ``patient_mrn``. A failed fetch (*success* false) finds nobody.
    """
    if patients is None:
        patients = [] if not success else [_SAMPLE_PATIENT]
    found = [dict(patient) for patient in patients]
    data: dict[str, Any] = {"success": success, "patient_count": len(found), "patients": found}
    if tasks_at_top_level:
        data["tasks"] = [
            {**task, "patient_mrn": patient.get("mrn")}
            for patient in found
            for task in patient.pop("tasks", [])
        ]
    if not success:
        data.update(_failure(None, None, _FETCH_FAILURE))
    first = (
        {"access_token_reference_id": access_token_reference_id, "job_id": str(job_id)}
        if shape == "new"
        else {"user_id": "user_test", "job_execution_id": str(job_id)}
    )
    return {
        "id": event_id or f"evt_{secrets.token_hex(12)}",
        **first,
        "timestamp": timestamp or utc_timestamp(),
        "type": "patient.live_fetch_completed",
        "action": "sync",
        "data": _merge(data, data_overrides),
    }


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
        "webhook-timestamp": str(event.get("created") or event.get("timestamp") or ""),
        "webhook-attempt": str(attempt),
    }
    return body, headers
