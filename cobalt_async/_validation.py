"""Local validation of request fields: bad input is refused before anything is sent."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from ._errors import RequestValidationError

R = TypeVar("R", bound=BaseModel)


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


def _explain(model: type[BaseModel], fields: dict[Any, Any], exc: ValidationError) -> Exception:
    unexpected = sorted(str(key) for key in fields if key not in model.model_fields)
    if unexpected:
        allowed = ", ".join(model.model_fields)
        msg = f"Unexpected fields in request body: {', '.join(unexpected)} (allowed: {allowed})"
        return RequestValidationError(msg, field=unexpected[0])
    error = exc.errors()[0]
    if not error["loc"]:  # a rule across fields; its context names the first one
        field = str(error.get("ctx", {}).get("field", ""))
        return RequestValidationError(f"Invalid request: {error['msg']}", field=field or None)
    field = ".".join(str(part) for part in error["loc"])
    name = str(error["loc"][0])
    if error["type"] == "missing":
        msg = f"Missing required field: {field}"
    elif error["type"] == "string_pattern_mismatch" or error["type"] == "string_too_short":
        msg = f"Invalid field {field}: must be a non-empty string"
    else:
        detail = error["msg"]
        msg = f"Invalid field {field}: {detail[:1].lower()}{detail[1:]}"
        if name == "notify_list":
            msg += " (notify_list must be a list of non-empty strings)"
    return RequestValidationError(msg, field=name)


MAX_PAGE_SIZE = 100
"""Cobalt's largest page of ``GET /v1/webhook-events``."""

_SORTS = ("created_at", "-created_at")
_DELIVERY_STATUSES = (None, "success", "failed")
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def listing_params(
    *,
    job_id: object,
    event_type: object,
    delivery_status: object,
    start_date: object,
    end_date: object,
    page: object,
    page_size: object,
    sort: object,
) -> dict[str, Any]:
    """The query of ``GET /v1/webhook-events``, checked as Cobalt checks it, before sending."""
    _require(type(page) is int and page >= 1, "page", "must be an integer >= 1")
    ok = type(page_size) is int and 1 <= page_size <= MAX_PAGE_SIZE
    _require(ok, "page_size", f"must be an integer from 1 to {MAX_PAGE_SIZE}")
    _require(sort in _SORTS, "sort", "must be created_at or -created_at")
    _require(delivery_status in _DELIVERY_STATUSES, "delivery_status", "must be success or failed")
    valid_type = event_type is None or (isinstance(event_type, str) and event_type.strip())
    _require(bool(valid_type), "event_type", "must be a non-empty str, such as 'task.created'")
    valid_id = job_id is None or (type(job_id) in (str, int) and str(job_id).strip())
    _require(bool(valid_id), "job_id", "must be a non-empty str or an int")
    first, last = _day("start_date", start_date), _day("end_date", end_date)
    # ISO days compare as text; Cobalt would answer an empty listing, which hides the mistake.
    _require(not (first and last and first > last), "end_date", "must not be before start_date")
    params: dict[str, Any] = {"page": page, "page_size": page_size, "sort": sort}
    optional = {
        "job_id": None if job_id is None else str(job_id),
        "event_type": event_type,
        "delivery_status": delivery_status,
        "start_date": first,
        "end_date": last,
    }
    params.update((name, value) for name, value in optional.items() if value is not None)
    return params


def window(since: object, until: object) -> tuple[datetime, datetime | None]:
    """A replay's *since* and *until*, checked, in UTC."""
    start = _moment("since", since)
    end = None if until is None else _moment("until", until)
    _require(end is None or end >= start, "until", "must not be before since")
    return start, end


def _moment(name: str, value: object) -> datetime:
    """*value*, a timezone-aware ``datetime`` or a ``date`` (its midnight, UTC), in UTC."""
    if isinstance(value, datetime):
        _require(value.tzinfo is not None, name, "must be timezone-aware (datetime.now(UTC), say)")
        return value.astimezone(UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    raise invalid(name, "must be a timezone-aware datetime.datetime or a datetime.date")


def _day(name: str, value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, date) and not isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str) and _DAY.fullmatch(value):
        try:
            return date.fromisoformat(value).isoformat()
        except ValueError:
            pass  # 2026-02-30, say
    raise invalid(name, "must be a datetime.date or a 'YYYY-MM-DD' string")


def _require(condition: bool, field: str, problem: str) -> None:
    if not condition:
        raise invalid(field, problem)


def invalid(field: str, problem: str) -> RequestValidationError:
    """The error for a bad parameter: it names the parameter and what it must be."""
    return RequestValidationError(f"Invalid parameter {field}: {problem}", field=field)
