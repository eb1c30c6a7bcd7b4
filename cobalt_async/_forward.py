"""
``listen --forward-to``: Cobalt's record of events, polled, each new one delivered to a local
app as Cobalt would deliver it, for development without a public URL.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import httpx
from pydantic import ValidationError

from ._errors import APIError, APIStatusError
from ._jobs import WebhookEvents
from ._reconcile import created_at
from .models import Event, parse_event, webhook_body
from .testing._delivery import Delivery, Receiver
from .testing._history import Record
from .testing._stats import FakeStats

LOOKBACK = 60.0
"""Seconds before the newest event seen that a poll still reads: an event Cobalt records a
little after a newer one is still forwarded, once."""
MAX_SEEN = 100_000
"""Event ids remembered, so that none is forwarded twice (the oldest are forgotten first)."""
FATAL = (401, 403, 404)
"""Answers that polling again cannot mend: credentials, the EHR link, the base URL."""


@dataclass(slots=True)
class _Target:
    """What :class:`Delivery` reads: Cobalt's delivery policy toward one URL. Strictly private."""

    webhook_url: str | None
    webhook_secret: str
    webhook_transport: httpx.AsyncBaseTransport | None = None
    retry_delay: float = 1.0
    receiver: Receiver | None = None
    stats: FakeStats = field(default_factory=FakeStats)


class Forwarder:
    """
    Poll ``GET /v1/webhook-events`` and deliver each event not seen before to *url*.

    Each delivery is signed with *secret* and sent with Cobalt's headers and retry policy
    (one retry after a network error, a 5xx or a 429), so the app verifies it as it would
    verify Cobalt's. Events Cobalt had recorded before :meth:`prime` are not forwarded.
    """

    def __init__(
        self,
        events: WebhookEvents,
        url: str,
        secret: str,
        *,
        on_line: Callable[[str], None],
        transport: httpx.AsyncBaseTransport | None = None,
        retry_delay: float = 1.0,
    ) -> None:
        self._events = events
        self._delivery = Delivery(_Target(url, secret, transport, retry_delay), _quiet)
        self._on_line = on_line
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._newest = -math.inf

    async def aclose(self) -> None:
        await self._delivery.aclose()

    async def prime(self) -> int:
        """Take what Cobalt has recorded so far as seen; returns how many events that is."""
        return len(await self._unseen(priming=True))

    async def poll(self) -> int:
        """Forward the events recorded since the last poll, oldest first; returns how many."""
        unseen = await self._unseen(priming=False)
        for body, event in unseen:
            answer = await self._delivery.deliver(
                Record(body), drop=False, duplicate=False, fail_first=False
            )
            self._on_line(f"{event.type} job_id={event.job_id} id={event.id} -> {answer}")
        return len(unseen)

    async def run(self, interval: float, on_error: Callable[[APIError], None]) -> APIError:
        """Poll every *interval* seconds; returns the error that polling again cannot mend."""
        while True:
            try:
                await self.poll()
            except APIError as exc:
                if isinstance(exc, APIStatusError) and exc.status_code in FATAL:
                    return exc
                on_error(exc)
            await anyio.sleep(interval)

    async def _unseen(self, *, priming: bool) -> list[tuple[dict[str, Any], Event]]:
        """
        Events not seen before, oldest first, each marked seen now.

        Read newest first, back to the horizon, LOOKBACK before the newest event an earlier
        poll saw: a poll costs a page, however long the record is. Priming reads back from
        the newest event it finds; before any event was seen, the whole window is new.
        """
        horizon = self._newest - LOOKBACK
        since = datetime.fromtimestamp(horizon, UTC) if horizon > -math.inf else datetime.now(UTC)
        found: list[tuple[dict[str, Any], Event]] = []
        # A day of margin, since Cobalt's days may not be UTC days.
        pages = self._events.pages(start_date=(since - timedelta(days=1)).date())
        async for page in pages:
            past = False
            for record in page.records:
                body = webhook_body(record)
                try:
                    event = parse_event(body)
                except ValidationError:
                    continue  # not an event: list() skips it too
                created = created_at(event)
                if created is not None:
                    if priming and horizon == -math.inf:
                        horizon = created - LOOKBACK
                    self._newest = max(self._newest, created)
                    if created < horizon:
                        past = True
                        continue
                if self._first_sight(event):
                    found.append((body, event))
            if past:
                break
        found.reverse()
        return found

    def _first_sight(self, event: Event) -> bool:
        key = event.id or f"{event.type} {event.job_id} {event.created}"
        if key in self._seen:
            return False
        self._seen[key] = None
        if len(self._seen) > MAX_SEEN:
            self._seen.popitem(last=False)
        return True


def _quiet(line: str) -> None:
    """Delivery's line per attempt: the forwarder prints one per event instead."""
