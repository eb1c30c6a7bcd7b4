"""Local validation of request fields: bad input is refused before anything is sent."""

from __future__ import annotations

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
