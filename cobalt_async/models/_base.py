from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict


def _number_to_str(value: Any) -> Any:
    # Cobalt sends job_id (and some other ids) as a JSON number in one place and as a
    # string in another; 12345 and "12345" must be the same id.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


LaxStr = Annotated[str, BeforeValidator(_number_to_str)]
"""A string that Cobalt sometimes sends as a JSON number."""


class CobaltModel(BaseModel):
    """Base of response and event models: immutable, and tolerant of fields Cobalt adds."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class OpenModel(BaseModel):
    """Base of event payloads: immutable; unknown fields are kept (``model_extra``), not used."""

    model_config = ConfigDict(frozen=True, extra="allow")


class RequestModel(BaseModel):
    """Base of request models: immutable and strict, as Cobalt is."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
