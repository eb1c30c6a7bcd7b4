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


class CobaltModel(BaseModel):
    """Base of response and event models: immutable, and tolerant of fields Cobalt adds."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class OpenModel(BaseModel):
    """Base of event payloads: immutable; unknown fields are kept (``model_extra``), not used."""

    model_config = ConfigDict(frozen=True, extra="allow")


class RequestModel(BaseModel):
    """Base of request models: immutable and strict, as Cobalt is."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
