"""
FakeCobalt's webhook delivery, with Cobalt's policy.

Cobalt waits 5 s for the first attempt. It retries once, after ``retry_delay``, with a 2 s
timeout, and only after a network error, a 5xx or a 429: never after another 4xx, nor after
a timeout (the receiver may have processed the slow delivery already).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Literal, Protocol, TypeAlias

import anyio
import httpx

from ._factories import signed_delivery, utc_timestamp
from ._history import Record, job_id_of
from ._stats import FakeStats

logger = logging.getLogger("cobalt_async.testing")

FIRST_TIMEOUT = 5.0
RETRY_TIMEOUT = 2.0

Answer: TypeAlias = int | Literal["network error", "timeout"]
"""What one delivery attempt got: the receiver's status, or why it got none."""


class Receipt(Protocol):
    @property
    def status_code(self) -> int: ...


class Receiver(Protocol):
    async def receive(self, body: bytes, headers: Mapping[str, str]) -> Receipt: ...


class DeliveryKnobs(Protocol):
    """The fake's knobs delivery reads, at each attempt: they may change while it runs."""

    receiver: Receiver | None
    webhook_url: str | None
    webhook_transport: httpx.AsyncBaseTransport | None
    webhook_secret: str
    retry_delay: float
    stats: FakeStats


def retryable(answer: Answer) -> bool:
    if isinstance(answer, int):
        return answer >= 500 or answer == 429
    return answer == "network error"


class Delivery:
    """Delivers finished events to a receiver in-process, or over HTTP to a webhook URL."""

    def __init__(self, knobs: DeliveryKnobs, log: Callable[[str], None]) -> None:
        self._knobs = knobs
        self._log = log
        self._http: httpx.AsyncClient | None = None
        self._http_transport: httpx.AsyncBaseTransport | None = None

    async def aclose(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()

    async def deliver(
        self, record: Record, *, drop: bool, duplicate: bool, fail_first: bool
    ) -> Answer | None:
        """
        Deliver *record* (twice when *duplicate*), or drop it, recording what happened.

        Returns the last attempt's answer; ``None`` when nothing was sent.
        """
        knobs = self._knobs
        if knobs.receiver is None and knobs.webhook_url is None:
            record.status = "failed"  # no webhook registered: the outcome is only pollable
            return None
        if drop:
            record.status = "failed"
            knobs.stats.dropped += 1
            self._log(f"webhook {record.event['type']} job_id={job_id_of(record.event)} -> dropped")
            return None
        if duplicate:
            knobs.stats.duplicated += 1
        answer: Answer | None = None
        for copy in range(2 if duplicate else 1):
            answer = await self._deliver_once(record, fail_first=fail_first and copy == 0)
        return answer

    async def _deliver_once(self, record: Record, *, fail_first: bool) -> Answer:
        stats = self._knobs.stats
        answer = await self._attempt(record, 1, FIRST_TIMEOUT, fail=fail_first)
        if retryable(answer):
            stats.retried += 1
            await anyio.sleep(self._knobs.retry_delay)
            answer = await self._attempt(record, 2, RETRY_TIMEOUT, fail=False)
        if isinstance(answer, int) and 200 <= answer < 300:
            stats.deliveries_succeeded += 1
            record.status = "success"
        else:
            stats.deliveries_failed += 1
            if record.status != "success":  # an earlier duplicate may have landed
                record.status = "failed"
        return answer

    async def _attempt(self, record: Record, attempt: int, timeout: float, *, fail: bool) -> Answer:
        self._knobs.stats.deliveries_attempted += 1
        record.attempts += 1
        record.last_attempt = utc_timestamp()
        answer: Answer = "network error"
        if not fail:
            body, headers = signed_delivery(
                record.event, self._knobs.webhook_secret, attempt=attempt
            )
            answer = await self._send(body, headers, timeout)
        if isinstance(answer, int):
            record.response_status = answer
        event = record.event
        job_id = job_id_of(event)
        self._log(f"webhook {event['type']} job_id={job_id} attempt={attempt} -> {answer}")
        return answer

    async def _send(self, body: bytes, headers: dict[str, str], timeout: float) -> Answer:
        receiver = self._knobs.receiver
        if receiver is not None:
            return await _call_receiver(receiver, body, headers, timeout)
        return await self._post(body, headers, timeout)

    async def _post(self, body: bytes, headers: dict[str, str], timeout: float) -> Answer:
        knobs = self._knobs
        if self._http is None or self._http_transport is not knobs.webhook_transport:
            await self.aclose()  # the transport knob changed: a client of the new one
            self._http = httpx.AsyncClient(transport=knobs.webhook_transport)
            self._http_transport = knobs.webhook_transport
        try:
            response = await self._http.post(
                knobs.webhook_url or "", content=body, headers=headers, timeout=timeout
            )
        except httpx.ConnectTimeout:
            return "network error"  # never reached the receiver: Cobalt retries
        except httpx.TimeoutException:
            return "timeout"
        except httpx.TransportError:
            return "network error"
        return response.status_code


async def _call_receiver(
    receiver: Receiver, body: bytes, headers: dict[str, str], timeout: float
) -> Answer:
    # In-process there is no connection to drop: a receiver slower than Cobalt's timeout
    # is cancelled, which is what a server sees when Cobalt hangs up.
    with anyio.move_on_after(timeout):
        try:
            return (await receiver.receive(body, headers)).status_code
        except Exception:
            logger.exception("the webhook receiver raised; counted as a 500 answer")
            return 500
    return "timeout"
