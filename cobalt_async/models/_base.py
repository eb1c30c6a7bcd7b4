from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, GetCoreSchemaHandler
from pydantic_core import CoreSchema, core_schema


class _StrOrInteger:
    """
    Cobalt sends job_id (and some other ids) as a JSON number in one place and as a string
    in another; 12345 and "12345" must be the same id. Floats and booleans are refused.
    """

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        # All in pydantic-core: a Python validator would be called for every id of every
        # webhook, though nearly all of them are strings already.
        return core_schema.union_schema(
            [
                core_schema.str_schema(),
                core_schema.no_info_after_validator_function(
                    str, core_schema.int_schema(strict=True)
                ),
            ],
            mode="left_to_right",
            custom_error_type="string_or_integer_type",
            custom_error_message="Input should be a string or an integer",
            # Always a str once validated: a JSON Schema of the output says "string".
            serialization=core_schema.to_string_ser_schema(),
        )


LaxStr = Annotated[str, _StrOrInteger]
"""A string that Cobalt sometimes sends as a JSON number."""


class _Hidden:
    """Stands in a repr for a value that may be EHR text."""

    def __repr__(self) -> str:
        return "..."


_HIDDEN = _Hidden()
# Fields whose values are never EHR text: ids, types, codes, counters.
_SHOWN = frozenset({
    "id", "type", "object", "created", "code", "success", "error", "problem",
    "current_page", "total_pages", "total_count", "page_size", "timestamp", "action",
    "patient_count",
})  # fmt: skip


def _shown(name: str | None, value: Any) -> bool:
    if value is None or isinstance(value, BaseModel | bool):
        return True  # a model hides its own text
    if isinstance(value, list) and all(isinstance(item, BaseModel) for item in value):
        return True
    return name is not None and (name in _SHOWN or name.endswith("_id"))


class _QuietRepr(BaseModel):
    """
    A repr (and str) that names ids, types and codes, never EHR text.

    Cobalt's notes, descriptions and failure reasons name patients and providers, and a repr
    ends up in every ``logger.exception()``; the values stay on the attributes.
    """

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, value if _shown(name, value) else _HIDDEN


class CobaltModel(_QuietRepr):
    """Base of response and event models: immutable, and tolerant of fields Cobalt adds."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class OpenModel(_QuietRepr):
    """Base of event payloads: immutable; unknown fields are kept (``model_extra``), not used."""

    model_config = ConfigDict(frozen=True, extra="allow")


class RequestModel(_QuietRepr):
    """Base of request models: immutable and strict, as Cobalt is."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
