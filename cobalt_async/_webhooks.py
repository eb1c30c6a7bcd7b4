"""The one ingestion path, WebhookReceiver: verify, parse, de-duplicate, store, answer."""

from __future__ import annotations

import inspect
import logging
import math
import os
import time
import warnings
from collections.abc import Awaitable, Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal, TypeAlias

import anyio
from pydantic import ValidationError

from ._errors import ConfigurationError, SinkUnavailableError, WebhookVerificationError
from ._logs import ids
from ._outcome import Via
from ._secrets_file import FILE_ENV, SecretsContent, SecretsFile, grace_seconds
from ._signing import RAW, Headers, HeaderValue, Verifier, delivery_headers
from ._telemetry import delivered, delivery_span, observing, sink_error, tracer
from .models import Event, MalformedJobEvent, parse_event
from .sinks import Sink

logger = logging.getLogger("cobalt_async.webhooks")

DEFAULT_MAX_BODY_BYTES = 1 << 20
# Cobalt waits 5 s for the first delivery and 2 s for its single retry: a sink that cannot
# store within 1.5 s gets a 503 early enough for that retry to land.
DEFAULT_PUBLISH_TIMEOUT = 1.5
# Cobalt accepts a rotated-out secret for 24 hours; a receiver by default does the same.
DEFAULT_ROTATION_GRACE = timedelta(hours=24)
# Long enough to rotate at Cobalt and hand the receivers the answer.
DEFAULT_ROTATION_HOLD = 60.0

EventHook: TypeAlias = Callable[[Event], Awaitable[None] | None]
ReceiptResult: TypeAlias = Literal[
    "accepted",
    "duplicate",
    "conflict",
    "unreadable",
    "unauthorized",
    "invalid",
    "too_large",
    "unavailable",
]


@dataclass(frozen=True, slots=True)
class Receipt:
    """What :meth:`WebhookReceiver.receive` did with a delivery, and the status to answer."""

    status_code: int
    result: ReceiptResult
    """What happened to the delivery: stored (``"accepted"``), recognised, or refused, and why."""
    detail: str
    event: Event | None = None

    @property
    def outcome(self) -> ReceiptResult:
        """Deprecated name of :attr:`result` (a job's outcome is another thing)."""
        warnings.warn("Receipt.outcome is renamed Receipt.result", DeprecationWarning, stacklevel=2)
        return self.result


# A publish's results (the sinks' PublishResult) with their receipts, shared: a receipt is
# immutable, and these carry no event, for callers that only answer the status.
_STORED = {result: Receipt(200, result, result) for result in ("accepted", "duplicate", "conflict")}


# Results of an event stored for the first time: the ones the on_event hook sees.
_NEW = frozenset({"accepted", "unreadable"})


class WebhookReceiver:
    """
    Verify, parse, de-duplicate and store Cobalt webhook deliveries.

    ``receive()`` never raises for a bad delivery: its receipt carries the status code to
    answer (``docs/webhooks.md`` gives the table and why). The optional *on_event* hook sees
    every new event, of any type.
    """

    def __init__(
        self,
        sink: Sink,
        *,
        secrets: Sequence[str] = (),
        secrets_file: str | os.PathLike[str] | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        publish_timeout: float = DEFAULT_PUBLISH_TIMEOUT,
        on_event: EventHook | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """
        Args:
            secrets: The webhook secrets deliveries may be signed with (two while rotating).
            secrets_file: Read the secrets from this file instead, and again whenever it
                changes: how a fleet of workers rolls a new secret without a restart
                (docs/webhooks.md, "Rotating across workers").
            clock: Seconds on a monotonic clock, which secret retirements are timed on; a
                test injects its own.
        """
        self.sink = sink
        self.max_body_bytes = max_body_bytes
        self.publish_timeout = publish_timeout
        self.on_event = on_event
        self._hold_until = -math.inf
        self._clock = clock
        self._file = None if secrets_file is None else SecretsFile(secrets_file, clock=clock)
        if self._file is None:
            self._verifier = Verifier(secrets, clock=clock)
        elif secrets:
            msg = "pass secrets= or secrets_file=, not both: the file is the one source"
            raise ConfigurationError(msg)
        else:
            self._verifier = self._loaded(self._file.read())

    def _loaded(self, content: SecretsContent) -> Verifier:
        if not content.entries:
            msg = f"the webhook secrets file ({FILE_ENV}) lists no secret"
            raise ConfigurationError(msg)
        verifier = Verifier([entry.secret for entry in content.entries], clock=self._clock)
        wall = time.time()
        for entry in content.entries:
            if entry.retire_at is not None:
                verifier.retire(entry.secret, after=entry.retire_at.timestamp() - wall)
        self._hold_until = self._clock() + DEFAULT_ROTATION_HOLD if content.expecting else -math.inf
        return verifier

    def _reload(self, *, now: bool) -> bool:
        """Re-read the secrets file if it changed; whether it was."""
        if self._file is None or not self._file.changed(now=now):
            return False
        try:
            self._verifier = self._loaded(self._file.read())
        except ConfigurationError as exc:
            # Half-edited by hand, say: the secrets loaded before stay in force.
            logger.warning("webhook secrets file not reloaded: %s", exc)
            return False
        logger.info("webhook secrets reloaded: %d in force", self._verifier.count)
        return True

    def expect_new_secret(self, *, within: float | timedelta = DEFAULT_ROTATION_HOLD) -> None:
        """
        Until a secret is added (or *within* passes), answer 503 where a signature fits none.

        For the moment between rotating at Cobalt and handing the new secret to this
        receiver: a delivery already signed with it gets a 503, which Cobalt retries once
        after 1 s, instead of a 401, which it never retries. Nothing is stored meanwhile.
        """
        self._hold_until = self._verifier.clock() + grace_seconds(within)

    def rotate_secret(
        self, new_secret: str, *, retire_old_after: float | timedelta = DEFAULT_ROTATION_GRACE
    ) -> None:
        """
        Accept *new_secret* now, and the secrets accepted so far for *retire_old_after* more.

        Call it with the secret ``client.webhooks.rotate_secret()`` returned, on a running
        receiver: deliveries signed with either secret verify during the grace period, so
        none is refused while Cobalt switches. The default grace is Cobalt's own: 24 hours.
        """
        grace = grace_seconds(retire_old_after)
        self._verifier.add(new_secret)
        self._verifier.retire_all_but(new_secret, after=grace)
        self._hold_until = -math.inf

    def add_secret(self, secret: str) -> None:
        """Accept *secret* as well as the others, until it is retired."""
        self._verifier.add(secret)
        self._hold_until = -math.inf

    def retire_secret(self, secret: str, *, after: float | timedelta = 0.0) -> None:
        """
        Stop accepting *secret* *after* a delay (default: now).

        Raises:
            ConfigurationError: The receiver does not accept *secret* (the message does not
                repeat it).
        """
        if not self._verifier.retire(secret, after=grace_seconds(after)):
            msg = "retire_secret(): this receiver does not accept that secret"
            raise ConfigurationError(msg)

    @property
    def secret_count(self) -> int:
        """How many secrets verify deliveries now (counted, never shown)."""
        return self._verifier.count

    def __repr__(self) -> str:
        return (
            f"<WebhookReceiver sink={self.sink!r} max_body_bytes={self.max_body_bytes} "
            f"secrets={self.secret_count}>"
        )

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
        signature, delivery_id, _ = delivery_headers(headers)
        body = body if type(body) is bytes else bytes(body)
        receipt = await self.ingest(body, signature, delivery_id)
        if dispatch:
            await self.dispatch(receipt)
        return receipt

    async def receive_event(
        self, event: Event, *, delivery_id: str | None = None, via: Via = "webhook"
    ) -> Receipt:
        """
        Ingest an event already verified, as :meth:`receive` ingests a delivery once verified.

        The same de-duplication, sink and *on_event* hook: what
        ``client.webhook_events.replay()`` feeds Cobalt's record through, so that an event
        received live and replayed later resolves nothing twice. *via* says how the outcome
        was learnt (``"poll"`` for one read from Cobalt's record).
        """
        receipt = await self._store(event, delivery_id or event.id, True, via)
        await self.dispatch(receipt)
        return receipt

    async def ingest(
        self,
        body: bytes,
        signature: HeaderValue,
        delivery_id: str | None,
        *,
        keep_event: bool = True,
    ) -> Receipt:
        """
        Everything :meth:`receive` does but dispatch, given the two headers it reads.

        For servers that read the headers themselves (the ASGI app does, to refuse an
        oversized body before reading it). With ``keep_event=False`` a stored event's
        receipt is a shared one, without the event: for callers that only answer its status.
        """
        if observing():
            return await self._observed(body, signature, delivery_id, keep_event)
        event = self._verified(body, signature)
        if isinstance(event, Receipt):
            return event
        return await self._store(event, delivery_id, keep_event)

    async def _observed(
        self, body: bytes, signature: HeaderValue, delivery_id: str | None, keep_event: bool
    ) -> Receipt:
        """:meth:`ingest` in a delivery span, counted by its answer."""
        found = tracer()
        with delivery_span(found) if found is not None else nullcontext() as span:
            event = self._verified(body, signature)
            if isinstance(event, Receipt):
                receipt, job_id = event, None
            else:
                receipt, job_id = await self._store(event, delivery_id, keep_event), event.job_id
            delivered(span, receipt.status_code, receipt.result, job_id)
            return receipt

    async def _store(
        self, event: Event, delivery_id: str | None, keep_event: bool, via: Via = "webhook"
    ) -> Receipt:
        # Only a replay names *via*: a sink whose publish() predates it still takes deliveries.
        if via == "webhook":
            publishing = self.sink.publish(event, delivery_id=delivery_id)
        else:
            publishing = self.sink.publish(event, delivery_id=delivery_id, via=via)
        try:
            if getattr(self.sink, "stores_in_process", False):
                result = await publishing
            else:
                with anyio.fail_after(self.publish_timeout):
                    result = await publishing
        except (SinkUnavailableError, TimeoutError) as exc:
            logger.error(
                "webhook for job %s not stored, answering 503: %s",
                event.job_id,
                exc,
                extra=ids(event=event, answer="unavailable"),
            )
            sink_error("publish")
            return Receipt(503, "unavailable", "the sink could not store the event", event)
        if logger.isEnabledFor(logging.DEBUG):  # one check, not two calls, per delivery
            logger.debug(
                "webhook %s for job %s: %s",
                event.type,
                event.job_id,
                result,
                extra=ids(event=event, answer=result),
            )
        if type(event) is MalformedJobEvent and result == "accepted":
            # Stored, so its waiters learn now; not a 2xx, so that Cobalt records the
            # delivery as failed and a newer version can recover it from the listing.
            logger.warning(
                "webhook for job %s unreadable: %s",
                event.job_id,
                event.problem,
                extra=ids(event=event, answer="unreadable"),
            )
            return Receipt(422, "unreadable", event.problem, event)
        shared = None if keep_event else _STORED.get(result)
        return shared or Receipt(200, result, result, event)

    def _verified(self, body: bytes, signature: HeaderValue) -> Event | Receipt:
        """The delivery's event, or the receipt that refuses it."""
        if len(body) > self.max_body_bytes:
            return Receipt(413, "too_large", f"body over {self.max_body_bytes} bytes")
        self._reload(now=False)
        try:
            try:
                parsed = self._verifier.verify(body, signature)
            except WebhookVerificationError:
                # Signed with a secret the file got since it was last read?
                if not self._reload(now=True):
                    raise
                parsed = self._verifier.verify(body, signature)
        except WebhookVerificationError as exc:
            if self._verifier.clock() < self._hold_until:
                logger.warning("webhook held for a secret rotation, answering 503: %s", exc)
                return Receipt(503, "unavailable", "signature unknown during a secret rotation")
            logger.warning("webhook refused: %s", exc)
            return Receipt(401, "unauthorized", str(exc))
        try:
            return parse_event(body if parsed is RAW else parsed)
        except ValidationError:
            return Receipt(400, "invalid", "the signed body is not a Cobalt event")

    async def dispatch(self, receipt: Receipt) -> None:
        """Run the *on_event* hook for a newly accepted event; its errors are logged, not raised."""
        if self.on_event is None or receipt.result not in _NEW or receipt.event is None:
            return
        try:
            result = self.on_event(receipt.event)
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("on_event hook failed for a %s event", receipt.event.type)
