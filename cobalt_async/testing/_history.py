"""FakeCobalt's record of finished events, and ``GET /v1/webhook-events`` over it."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeAlias

from ._patients import PatientDirectory
from ._wire import Reply, error, is_day, positive_int

RecordShape: TypeAlias = Literal["new", "old"]

MAX_PAGE_SIZE = 100
# The documented filter takes success or failed; the older `status` also takes pending.
_DELIVERY_STATUSES = {
    "delivery_status": ("success", "failed"),
    "status": ("success", "failed", "pending"),
}


@dataclass(slots=True)
class Record:
    """One finished event, and its delivery history."""

    event: dict[str, Any]
    status: str = "pending"
    attempts: int = 0
    last_attempt: str | None = None
    response_status: int | None = None


class HistoryKnobs(Protocol):
    """The fake's knobs the history reads, each time: they may change while it runs."""

    max_events: int
    record_shape: RecordShape
    webhook_url: str | None


class EventHistory:
    """Every finished event, oldest first, at most ``knobs.max_events`` of them."""

    def __init__(self, knobs: HistoryKnobs, patients: PatientDirectory) -> None:
        self._knobs = knobs
        self._patients = patients
        self.records: deque[Record] = deque()
        self._by_job: dict[str, Record] = {}

    def __len__(self) -> int:
        return len(self.records)

    def add(self, event: dict[str, Any]) -> Record:
        """Record a finished job's event; the oldest are forgotten past the bound."""
        record = Record(event)
        self.records.append(record)
        self._by_job[job_id_of(event)] = record
        while len(self.records) > self._knobs.max_events:
            self._forget(self.records.popleft())
        return record

    def _forget(self, record: Record) -> None:
        # Bounded, so that a simulator serving for hours does not grow without limit.
        event = record.event
        del self._by_job[job_id_of(event)]
        if event["type"] == "task.created":
            self._patients.forget_task(event["data"]["emr_task_id"])

    def listing(self, query: dict[str, str]) -> Reply:
        """The answer to ``GET /v1/webhook-events`` with *query*, as Cobalt checks it."""
        page = positive_int(query.get("page"), 1)
        size = positive_int(query.get("page_size"), 50)
        sort = query.get("sort", "-created_at")
        if page is None or size is None:
            return error(400, "page and page_size must be positive integers")
        if size > MAX_PAGE_SIZE:
            return error(400, f"page_size must be at most {MAX_PAGE_SIZE}")
        if sort not in ("created_at", "-created_at"):
            return error(400, "sort must be created_at or -created_at")
        problem = _filter_problem(query)
        if problem is not None:
            return error(400, problem)
        records = self._select(query)
        if sort == "-created_at":
            records.reverse()
        items = [self._item(record) for record in records[(page - 1) * size : page * size]]
        pagination = {
            "current_page": page,
            "total_pages": math.ceil(len(records) / size),
            "total_count": len(records),
            "page_size": size,
        }
        return Reply(200, {"success": True, "webhook_events": items, "pagination": pagination})

    def _select(self, query: dict[str, str]) -> list[Record]:
        job_id = query.get("job_id")
        if job_id is None:
            records: Iterable[Record] = self.records
        else:
            found = self._by_job.get(job_id)
            records = () if found is None else (found,)
        kind = query.get("event_type")
        status = query.get("delivery_status", query.get("status"))
        first, last = query.get("start_date", ""), query.get("end_date", "9999-12-31")
        return [
            record
            for record in records
            if (kind is None or record.event["type"] == kind)
            and (status is None or record.status == status)
            # Cobalt's timestamps start with the day, so comparing text compares days.
            and first <= created_of(record.event)[:10] <= last
        ]

    def _item(self, record: Record) -> dict[str, Any]:
        event = record.event
        if self._knobs.record_shape == "new":
            return {
                "event_id": event["id"],
                "event_type": event["type"],
                "webhook_url": self._knobs.webhook_url or "",
                "delivery_status": record.status,
                "data": event["data"],
                "created_at": created_of(event),
                "job_id": job_id_of(event),
                "access_token_reference_id": event.get("access_token_reference_id"),
            }
        return {
            "id": event["id"],
            "access_token_reference_id": event.get("access_token_reference_id"),
            "object": event.get("object", "event"),
            "created": created_of(event),
            "type": event["type"],
            "job_id": job_id_of(event),
            "status": record.status,
            "delivered": record.status == "success",
            "delivery_attempts": record.attempts,
            "last_delivery_attempt": record.last_attempt,
            "response_status_code": record.response_status,
            "data": event["data"],
        }


def _filter_problem(query: dict[str, str]) -> str | None:
    for name, allowed in _DELIVERY_STATUSES.items():
        if name in query and query[name] not in allowed:
            return f"{name} must be one of {', '.join(allowed)}"
    for name in ("start_date", "end_date"):
        if name in query and not is_day(query[name]):
            return f"{name} must be a date as YYYY-MM-DD"
    return None


def job_id_of(event: dict[str, Any]) -> str:
    """The job an event settles; the live-fetch envelope once called it ``job_execution_id``."""
    job_id = event.get("job_id")
    return str(job_id if job_id is not None else event["job_execution_id"])


def created_of(event: dict[str, Any]) -> str:
    """When an event was created: ``created``, or the live-fetch envelope's ``timestamp``."""
    return str(event.get("created") or event["timestamp"])
