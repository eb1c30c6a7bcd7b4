"""
What the sinks whose store is a server share: how an outcome is written down, how an outage
is counted and logged, and how long to wait before reconnecting.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Awaitable, Callable

import anyio

from .._errors import ConfigurationError, SinkUnavailableError
from .._outcome import Outcome, PendingJob
from ..models import JobEvent, parse_event


def encode_outcome(outcome: Outcome) -> bytes:
    """The stored form of an outcome: ``{"via", "trace"?, "event"}`` as compact JSON."""
    event = outcome.event.model_dump_json().encode()
    # A traceparent is [0-9a-f-] only: it needs no escaping.
    trace = b'"trace":"%s",' % outcome.trace.encode() if outcome.trace else b""
    return b'{"via":"%s",%s"event":%s}' % (outcome.via.encode(), trace, event)


def decode_outcome(value: bytes | str) -> Outcome:
    """The outcome :func:`encode_outcome` wrote."""
    stored = json.loads(value)
    event: JobEvent = parse_event(stored["event"])  # type: ignore[assignment]
    return Outcome(event, stored.get("via", "webhook"), stored.get("trace"))


def encode_pending(job: PendingJob) -> str:
    """A pending-registry entry, without its job id (the key it is stored under)."""
    return json.dumps(
        {"kind": job.kind, "submitted_at": job.submitted_at, "deadline": job.deadline}
    )


def decode_pending(job_id: str, value: bytes | str) -> PendingJob:
    entry = json.loads(value)
    return PendingJob(job_id, entry["kind"], entry["submitted_at"], entry.get("deadline"))


def reconnect_delay(failures: int) -> float:
    """Seconds before reconnect attempt *failures*: jittered, growing, at most 2 s."""
    return random.uniform(0, min(2.0, 0.05 * 2 ** min(failures, 6)))


class Outage:
    """Counts the commands an outage failed, and logs it twice: as it starts and ends."""

    def __init__(self, store: str, logger: logging.Logger) -> None:
        self.store = store
        self.outages = 0
        self.failed_commands = 0
        self._logger = logger
        self._started: float | None = None
        self._failed_in_this_one = 0

    def failed(self, reason: str) -> None:
        self.failed_commands += 1
        self._failed_in_this_one += 1
        if self._started is None:
            self._started = time.monotonic()
            self.outages += 1
            self._logger.warning("%s; its commands fail until it answers again", reason)

    def answered(self) -> None:
        if self._started is not None:
            seconds = time.monotonic() - self._started
            self._logger.warning(
                "%s answers again after %.1f s; %d command(s) failed meanwhile",
                self.store,
                seconds,
                self._failed_in_this_one,
            )
            self._started = None
            self._failed_in_this_one = 0


def not_open(sink: str) -> ConfigurationError:
    """The error of a wait on a sink whose listener is not running."""
    msg = (
        f"{sink} is not open: use `async with sink:` or "
        "`async with CobaltClient(sink=sink)` before awaiting handles"
    )
    return ConfigurationError(msg)


class Rereads:
    """
    Re-reads of every job a sink's process awaits: when asked (its wake-up channel came
    back, or a wait's own store read failed, so a wake-up may have been missed), retried
    until the store answers, and every *interval* seconds in any case.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._asked = anyio.Event()

    def ask(self) -> None:
        self._asked.set()

    def reset(self) -> None:
        """Forget a request (for a sink closed, to be opened again)."""
        self._asked = anyio.Event()

    async def run(self, recheck: Callable[[], Awaitable[None]], interval: float) -> None:
        failures = 0
        while True:
            with anyio.move_on_after(interval):
                await self._asked.wait()
            self._asked = anyio.Event()
            try:
                await recheck()
                failures = 0
            except Exception as exc:
                failures += 1
                if not isinstance(exc, SinkUnavailableError):
                    self._logger.exception("re-reading pending jobs failed")
                self._asked.set()
                await anyio.sleep(reconnect_delay(failures))
