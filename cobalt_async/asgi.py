"""
A pure ASGI webhook endpoint: mount :class:`WebhookApp` under any path of any ASGI framework.

```python
receiver = WebhookReceiver(sink, secrets=[os.environ["COBALT_WEBHOOK_SECRET"]])
app = WebhookApp(receiver)        # serve it alone, or mount it in Starlette, Litestar, ...
```

It needs no web framework: only the ASGI protocol.
"""

from __future__ import annotations

import functools
import json

from ._signing import delivery_headers
from ._types import Message, Receive, Scope, Send
from ._webhooks import WebhookReceiver

__all__ = ["WebhookApp"]


class WebhookApp:
    """
    An ASGI app that hands every ``POST`` to a :class:`~cobalt_async.WebhookReceiver`.

    It answers before any user code runs: the body is read (and refused with 413 as soon as
    it passes ``receiver.max_body_bytes``), verified and stored, the answer is sent, and only
    then does the receiver's *on_event* hook run; its errors are logged, never answered.
    Other methods get 405; lifespan events are acknowledged; websockets are refused.
    The answer is ``{"status": <receipt.result>}`` and never echoes the body.
    """

    def __init__(self, receiver: WebhookReceiver) -> None:
        self.receiver = receiver

    def __repr__(self) -> str:
        return f"<WebhookApp receiver={self.receiver!r}>"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await _not_a_delivery(scope, receive, send)
            return
        limit = self.receiver.max_body_bytes
        signature, delivery_id, length = delivery_headers(scope["headers"])
        if _declares_over(length, limit):
            await _send_too_large(send)
            return
        try:
            message = await receive()
            body = _chunk(message)
            # Nearly every delivery arrives in one message, taken as it is.
            if message.get("more_body", False):
                body = await _read_rest(body, receive, limit)
        except _Disconnected:
            return  # Cobalt hung up; it retries on its own schedule.
        if len(body) > limit:
            await _send_too_large(send)
            return
        # The headers are read already: straight to the receiver's ingestion, as receive()
        # would go after reading them. Without a hook, only the receipt's status is used.
        hook = self.receiver.on_event
        receipt = await self.receiver.ingest(
            body, signature, delivery_id, keep_event=hook is not None
        )
        # As _send_status does, without a coroutine of its own on the path of every delivery.
        start, answer = _answer(receipt.status_code, receipt.result)
        await send(start)
        await send(answer)
        # Only now: a slow or failing hook must not delay the answer past Cobalt's 5 s.
        if hook is not None:
            await self.receiver.dispatch(receipt)


class _Disconnected(Exception):
    """The client went away before the whole body arrived."""


async def _read_rest(first: bytes, receive: Receive, limit: int) -> bytes:
    """Collect the rest of a body; stop reading as soon as it passes *limit*."""
    body = bytearray(first)
    while len(body) <= limit:
        message = await receive()
        body += _chunk(message)
        if not message.get("more_body", False):
            break
    return bytes(body)


def _chunk(message: Message) -> bytes:
    if message["type"] == "http.disconnect":
        raise _Disconnected
    body = message.get("body", b"")
    # ASGI promises bytes; a server that sends a bytearray still gets its body verified.
    return body if type(body) is bytes else bytes(body)


def _declares_over(length: str | bytes | None, limit: int) -> bool:
    if length is None:
        return False
    try:
        return int(length) > limit
    except ValueError:
        return False  # malformed: the server refuses it, or the stream tells


_Headers = tuple[tuple[bytes, bytes], ...]


@functools.cache
def _answer_messages(status: int, result: str, extra: _Headers) -> tuple[Message, Message]:
    """An answer's messages: only the result, never the body or a secret."""
    body = json.dumps({"status": result}, separators=(",", ":")).encode()
    length = str(len(body)).encode()
    headers = ((b"content-type", b"application/json"), (b"content-length", length), *extra)
    start = {"type": "http.response.start", "status": status, "headers": headers}
    return start, {"type": "http.response.body", "body": body}


def _answer(status: int, result: str, extra: _Headers = ()) -> tuple[Message, Message]:
    """The two messages of an answer, built once; sent as copies."""
    start, body = _answer_messages(status, result, extra)
    # Copies, with a list of headers: middleware may change the messages it is sent.
    return {**start, "headers": list(start["headers"])}, {**body}


async def _send_status(send: Send, status: int, result: str, extra: _Headers = ()) -> None:
    start, body = _answer(status, result, extra)
    await send(start)
    await send(body)


async def _send_too_large(send: Send) -> None:
    # The rest of the body is never read, so the connection cannot carry another request.
    await _send_status(send, 413, "too_large", ((b"connection", b"close"),))


async def _not_a_delivery(scope: Scope, receive: Receive, send: Send) -> None:
    kind = scope["type"]
    if kind == "http":
        await _send_status(send, 405, "method_not_allowed", ((b"allow", b"POST"),))
    elif kind == "lifespan":
        await _lifespan(receive, send)
    elif kind == "websocket":
        await _refuse_websocket(receive, send)


async def _lifespan(receive: Receive, send: Send) -> None:
    # Nothing to start: the receiver's sink is opened by whoever owns it (the client).
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _refuse_websocket(receive: Receive, send: Send) -> None:
    message = await receive()
    if message["type"] == "websocket.connect":
        # A close before accept makes the server answer the handshake with 403.
        await send({"type": "websocket.close", "code": 1008})
