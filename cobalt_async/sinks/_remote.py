"""
What the sinks whose store is a server share: how an outcome is written down, how an outage
is counted and logged, and how long to wait before reconnecting.
"""

from __future__ import annotations

import json
import logging
import random
import time

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
