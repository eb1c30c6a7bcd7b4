"""Webhook signatures (Cobalt's scheme) and the one ingestion path, WebhookReceiver."""

from __future__ import annotations

import hashlib
import hmac
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import anyio
from pydantic import ValidationError

from ._errors import ConfigurationError, SinkUnavailableError, WebhookVerificationError
from .models import Event, parse_event

if TYPE_CHECKING:
    from .sinks import Sink

logger = logging.getLogger("cobalt_async.webhooks")

SIGNATURE_HEADER = "cobalt-verification"
DELIVERY_ID_HEADER = "webhook-id"
DEFAULT_MAX_BODY_BYTES = 1 << 20
# Cobalt waits 5 s for the first delivery and 2 s for its single retry: a sink that cannot
# store within 1.5 s gets a 503 early enough for that retry to land.
DEFAULT_PUBLISH_TIMEOUT = 1.5

Headers: TypeAlias = Mapping[str, str] | Iterable[tuple[bytes | str, bytes | str]]
EventHook: TypeAlias = Callable[[Event], Awaitable[None] | None]
ReceiptOutcome: TypeAlias = Literal[
    "accepted", "duplicate", "conflict", "unauthorized", "invalid", "too_large", "unavailable"
]


def compact_json(payload: Any) -> bytes:
    """Serialise *payload* as JavaScript's ``JSON.stringify`` does for Cobalt's events."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def sign_webhook(payload: Mapping[str, Any] | bytes | str, secret: str) -> str:
    """
    Sign a webhook body exactly as Cobalt does: hex HMAC-SHA256 of ``JSON.stringify(payload)``.

    A mapping is serialised compactly first; bytes and str are signed as given.
    """
    if isinstance(payload, Mapping):
        body = compact_json(payload)
    else:
        body = payload.encode() if isinstance(payload, str) else payload
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class _Verifier:
    """Checks Cobalt signatures against one or more secrets. Strictly private."""

    def __init__(self, secrets: Sequence[str]) -> None:
        if isinstance(secrets, str) or not secrets or not all(secrets):
            msg = (
                "secrets must be a non-empty list of webhook secrets, e.g. "
                "secrets=[os.environ['COBALT_WEBHOOK_SECRET']]; during a rotation pass both"
            )
            raise ConfigurationError(msg)
        self._macs = [hmac.new(secret.encode(), digestmod=hashlib.sha256) for secret in secrets]

    def _matches(self, body: bytes, signature: bytes) -> bool:
        found = False
        for mac in self._macs:
            candidate = mac.copy()
            candidate.update(body)
            # No early exit: the time taken does not tell which secret matched.
            found |= hmac.compare_digest(candidate.hexdigest().encode(), signature)
        return found

    def verify(self, body: bytes, signature: str | bytes | None) -> Any:
        """
        Return the parsed body if it was re-serialised to verify, else ``_RAW``.

        Raises:
            WebhookVerificationError: No secret produced this signature.
        """
        if not signature:
            msg = f"missing {SIGNATURE_HEADER} header: this request was not signed by Cobalt"
            raise WebhookVerificationError(msg)
        # As bytes: compare_digest refuses str with non-ASCII characters (TypeError), and a
        # garbage header must be a plain mismatch (401), not a crash.
        if isinstance(signature, str):
            signature = signature.encode("utf-8", "backslashreplace")
        expected = signature.strip().lower()
        if self._matches(body, expected):
            return _RAW
        try:
            parsed = json.loads(body)
            compact = compact_json(parsed)
        except (ValueError, RecursionError):
            # Not JSON, nested past the recursion limit, or a lone surrogate that UTF-8
            # cannot encode: no compact form was signed, and an unsigned body must get a
            # 401, not crash the receiver.
            pass
        else:
            if self._matches(compact, expected):
                return parsed
        msg = f"{SIGNATURE_HEADER} does not match: wrong secret, or the body was altered"
        raise WebhookVerificationError(msg)


_RAW: Any = object()


CONTENT_LENGTH_HEADER = "content-length"
_HeaderValue: TypeAlias = str | bytes | None
_NAMES = (SIGNATURE_HEADER, DELIVERY_ID_HEADER, CONTENT_LENGTH_HEADER)
_SIGNATURE_KEY, _DELIVERY_ID_KEY, _CONTENT_LENGTH_KEY = (name.encode() for name in _NAMES)
# Where each header this module reads goes in _delivery_headers' answer, by str and bytes name.
_WANTED: dict[str | bytes, int] = {
    name: index for index, text in enumerate(_NAMES) for name in (text, text.encode())
}


def _delivery_headers(headers: Headers) -> tuple[_HeaderValue, str | None, _HeaderValue]:
    """
    Signature, delivery id (as text) and ``Content-Length``, as sent.

    Names are case-insensitive; of a repeated header, the last value counts (if a sender
    mixes spellings of one name, the lower-case one may win: the HMAC decides either way).
    """
    if type(headers) is list:
        # ASGI servers send lower-case names: a dict of them answers at C speed. When one
        # of the three is missing, it may be there in another case: the full scan looks.
        by_name = dict(headers)
        signature = by_name.get(_SIGNATURE_KEY)
        delivery_id = by_name.get(_DELIVERY_ID_KEY)
        length = by_name.get(_CONTENT_LENGTH_KEY)
        if signature is not None and delivery_id is not None and length is not None:
            return signature, _text(delivery_id), length
    scanned: list[_HeaderValue] = [None, None, None]
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    for key, value in pairs:
        slot = _WANTED.get(key.lower())
        if slot is not None:
            scanned[slot] = value
    return scanned[0], _text(scanned[1]), scanned[2]


def _text(value: _HeaderValue) -> str | None:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def verify_webhook(body: bytes, headers: Headers, secrets: Sequence[str]) -> Event:
    """
    Verify a delivery and parse its event, without storing anything.

    Raises:
        WebhookVerificationError: The signature is missing or wrong, or the body is not an event.
    """
    parsed = _Verifier(secrets).verify(body, _delivery_headers(headers)[0])
    try:
        return parse_event(body if parsed is _RAW else parsed)
    except ValidationError as exc:
        msg = "the signed body is not a Cobalt event"
        raise WebhookVerificationError(msg) from exc


@dataclass(frozen=True, slots=True)
class Receipt:
    """What :meth:`WebhookReceiver.receive` did with a delivery, and the status to answer."""

    status_code: int
    outcome: ReceiptOutcome
    detail: str
    event: Event | None = None


# A publish's results (the sinks' PublishResult) with their receipts, shared: a receipt is
# immutable, and these carry no event, for callers that only answer the status.
_STORED = {result: Receipt(200, result, result) for result in ("accepted", "duplicate", "conflict")}


class WebhookReceiver:
    """
    Verify, parse, de-duplicate and store Cobalt webhook deliveries.

    ``receive()`` never raises for a bad delivery: its receipt carries the status code to
    answer (design §5). The optional *on_event* hook sees every new event, of any type.
    """

    def __init__(
        self,
        sink: Sink,
        *,
        secrets: Sequence[str],
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        publish_timeout: float = DEFAULT_PUBLISH_TIMEOUT,
        on_event: EventHook | None = None,
    ) -> None:
        self.sink = sink
        self.max_body_bytes = max_body_bytes
        self.publish_timeout = publish_timeout
        self.on_event = on_event
        self._verifier = _Verifier(secrets)

    def __repr__(self) -> str:
        return f"<WebhookReceiver sink={self.sink!r} max_body_bytes={self.max_body_bytes}>"

    async def receive(self, body: bytes, headers: Headers, *, dispatch: bool = True) -> Receipt:
        """
        Ingest one delivery: *body* must be the raw bytes exactly as received.

        With ``dispatch=False`` the *on_event* hook is not run; call :meth:`dispatch` later
        (the ASGI app does, after answering).
        """
        if type(body) is not bytes and not isinstance(body, bytearray | memoryview):
            msg = (
                "receive() needs the raw request body as bytes, not "
                f"{type(body).__name__}: a parsed and re-serialised body may not match "
                "the bytes Cobalt signed"
            )
            raise TypeError(msg)
        signature, delivery_id, _ = _delivery_headers(headers)
        body = body if type(body) is bytes else bytes(body)
        receipt = await self._ingest(body, signature, delivery_id)
        if dispatch:
            await self.dispatch(receipt)
        return receipt

    async def _ingest(
        self,
        body: bytes,
        signature: str | bytes | None,
        delivery_id: str | None,
        *,
        keep_event: bool = True,
    ) -> Receipt:
        """
        Everything :meth:`receive` does but dispatch, from the headers it reads.

        With ``keep_event=False`` a stored event's receipt is a shared one, without the event:
        for callers that only answer its status.
        """
        event = self._verified(body, signature)
        if isinstance(event, Receipt):
            return event
        try:
            if getattr(self.sink, "stores_in_process", False):
                result = await self.sink.publish(event, delivery_id=delivery_id)
            else:
                with anyio.fail_after(self.publish_timeout):
                    result = await self.sink.publish(event, delivery_id=delivery_id)
        except (SinkUnavailableError, TimeoutError) as exc:
            logger.error("webhook for job %s not stored, answering 503: %s", event.job_id, exc)
            return Receipt(503, "unavailable", "the sink could not store the event", event)
        if logger.isEnabledFor(logging.DEBUG):  # one check, not two calls, per delivery
            logger.debug("webhook %s for job %s: %s", event.type, event.job_id, result)
        shared = None if keep_event else _STORED.get(result)
        return shared or Receipt(200, result, result, event)

    def _verified(self, body: bytes, signature: str | bytes | None) -> Event | Receipt:
        """The delivery's event, or the receipt that refuses it."""
        if len(body) > self.max_body_bytes:
            return Receipt(413, "too_large", f"body over {self.max_body_bytes} bytes")
        try:
            parsed = self._verifier.verify(body, signature)
        except WebhookVerificationError as exc:
            logger.warning("webhook refused: %s", exc)
            return Receipt(401, "unauthorized", str(exc))
        try:
            return parse_event(body if parsed is _RAW else parsed)
        except ValidationError:
            return Receipt(400, "invalid", "the signed body is not a Cobalt event")

    async def dispatch(self, receipt: Receipt) -> None:
        """Run the *on_event* hook for a newly accepted event; its errors are logged, not raised."""
        if self.on_event is None or receipt.outcome != "accepted" or receipt.event is None:
            return
        try:
            result = self.on_event(receipt.event)
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("on_event hook failed for a %s event", receipt.event.type)
