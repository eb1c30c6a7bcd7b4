"""Reading JSON the way Cobalt's Node service writes it."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError


def is_json_error(error: ValidationError) -> bool:
    """Whether pydantic refused the document itself, not what it holds."""
    return any(detail["type"] == "json_invalid" for detail in error.errors())


def decode_json(data: bytes | str, error: ValidationError) -> Any:
    """
    *data* parsed by the stdlib, for a second look after pydantic refused it with *error*.

    The stdlib reads documents pydantic's parser refuses but ``JSON.stringify`` writes: a
    lone surrogate (``"\\ud83d"``, EHR text cut mid-emoji), or nesting past pydantic's depth
    limit. Raises *error* when *data* is not JSON at all.
    """
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise error from None
