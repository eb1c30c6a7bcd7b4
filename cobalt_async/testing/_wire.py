"""FakeCobalt's wire: its replies, and the checks Cobalt makes of a request's fields."""

from __future__ import annotations

import hmac
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from .._signing import compact_json
from .._types import Receive, Send

MAX_BODY = 1 << 20


@dataclass(slots=True)
class Reply:
    """An answer, before it is sent: status, JSON payload, extra headers."""

    status: int
    payload: dict[str, Any]
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


def error(status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> Reply:
    """Cobalt's error envelope."""
    return Reply(status, {"success": False, "message": message}, headers or [])


def matches(given: bytes | None, expected: str) -> bool:
    """Whether a credential header holds *expected*, in constant time."""
    return given is not None and hmac.compare_digest(given, expected.encode())


def field_problem(
    body: dict[str, Any], allowed: Iterable[str], required: Iterable[str], strings: Iterable[str]
) -> str | None:
    """What Cobalt would answer 400 about these fields, or ``None``."""
    unexpected = sorted(set(body).difference(allowed))
    if unexpected:
        return f"Unexpected fields in request body: {', '.join(unexpected)}"
    for name in required:
        value = body.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            return f"Missing required field: {name}"
    for name in strings:
        # null is no string either: an optional field is left out, not sent as null.
        if name in body and not isinstance(body[name], str):
            return f"{name} must be a string"
    return None


def notify_problem(value: object) -> str | None:
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return None
    return "notify_list must be an array of strings"


def positive_int(raw: str | None, default: int) -> int | None:
    """A query parameter as an integer >= 1 (*default* when absent), or ``None``."""
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if value >= 1 else None


async def read_json(receive: Receive) -> dict[str, Any] | Reply:
    """A request's JSON object, or the reply that refuses it."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_BODY:
            return error(413, "Request body too large.")
        if message["type"] != "http.request" or not message.get("more_body", False):
            break
    try:
        parsed = json.loads(b"".join(chunks))
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        return error(400, "Request body must be a JSON object.")
    return parsed


async def send_reply(send: Send, reply: Reply) -> None:
    body = compact_json(reply.payload)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        # As a gateway would: errors then carry an id to quote, as they do in front of Cobalt.
        (b"x-request-id", f"req_{uuid.uuid4().hex[:24]}".encode()),
        *reply.headers,
    ]
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def is_day(value: object) -> bool:
    """Whether *value* is a date written ``YYYY-MM-DD``, as Cobalt's date fields take."""
    if not isinstance(value, str) or len(value) != 10:
        return False
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return True
