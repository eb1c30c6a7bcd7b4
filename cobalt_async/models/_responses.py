from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from ._base import CobaltModel, LaxStr


class ErrorBody(CobaltModel):
    """Cobalt's error envelope: ``{"success": false, "message": ..., "error": ...}``."""

    success: bool = False
    message: str | None = None
    error: str | None = None


class TaskCreated(CobaltModel):
    """Cobalt's answer to ``POST /v1/tasks``."""

    task_id: LaxStr | None = None
    job_id: LaxStr
    message: str | None = None


class TaskNoteCreated(CobaltModel):
    """Cobalt's answer to ``POST /v1/tasks/notes``."""

    task_note_id: LaxStr | None = None
    job_id: LaxStr
    message: str | None = None


class PatientFetchAccepted(CobaltModel):
    """Cobalt's answer to ``POST /v1/patients/fetch`` (older versions: ``job_execution_id``)."""

    job_id: LaxStr
    message: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _older_name(cls, value: Any) -> Any:
        if isinstance(value, dict) and value.get("job_id") is None and "job_execution_id" in value:
            return {**value, "job_id": value["job_execution_id"]}
        return value


class Pagination(CobaltModel):
    current_page: int = 1
    total_pages: int = 1
    total_count: int | None = None
    page_size: int | None = None


class WebhookEventList(CobaltModel):
    """Cobalt's answer to ``GET /v1/webhook-events``; the items are parsed by the caller."""

    webhook_events: list[dict[str, Any]] = Field(default_factory=list)
    pagination: Pagination = Field(default_factory=Pagination)
