"""
What the sinks whose store lives outside the process share: the encoding of an outcome and of
a pending entry, commands run apart from their callers, the reporting of an outage, the re-read
of every pending job, the retry backoff, and the error of a wait on a sink not open.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio

from .._errors import ConfigurationError, SinkUnavailableError
from .._outcome import Outcome, PendingJob
from ..models import JobEvent, parse_event

T = TypeVar("T")


def encode_outcome(outcome: Outcome) -> bytes:
    """An outcome as one JSON document: its event, how it was learnt, and its traceparent."""
    event = outcome.event.model_dump_json().encode()
    # A traceparent is [0-9a-f-] only: it needs no escaping.
    trace = b'"trace":"%s",' % outcome.trace.encode() if outcome.trace else b""
    return b'{"via":"%s",%s"event":%s}' % (outcome.via.encode(), trace, event)


def decode_outcome(value: bytes | str) -> Outcome:
    """The outcome :func:`encode_outcome` encoded."""
    stored = json.loads(value)
    event: JobEvent = parse_event(stored["event"])  # type: ignore[assignment]
    return Outcome(event, stored.get("via", "webhook"), stored.get("trace"))


def carried_outcome(
    job_id: str, encoded: bytes | str | None, logger: logging.Logger
) -> Outcome | None:
    """
    The stored outcome a wake-up carried, so that the wait settles without reading it back.

    ``None`` when it carries none (sent by an earlier version) or one unreadable: the waiter's
    store is read instead, as it always may be.
    """
    if not encoded:
        return None
    try:
        return decode_outcome(encoded)
    except (ValueError, KeyError, TypeError):
        logger.warning("job %s: unreadable wake-up, reading the store instead", job_id)
        return None


def encode_pending(job: PendingJob) -> str:
    """A pending-registry entry, without its job id (the key it is stored under)."""
    return json.dumps(
        {"kind": job.kind, "submitted_at": job.submitted_at, "deadline": job.deadline}
    )


def decode_pending(job_id: str, value: bytes | str) -> PendingJob:
    """The entry :func:`encode_pending` encoded, for *job_id*."""
    entry = json.loads(value)
    return PendingJob(job_id, entry["kind"], entry["submitted_at"], entry.get("deadline"))


def not_open(sink: str) -> ConfigurationError:
    """The error of a wait on a sink whose listener is not running."""
    msg = (
        f"{sink} is not open: use `async with sink:` or "
        "`async with CobaltClient(sink=sink)` before awaiting handles"
    )
    return ConfigurationError(msg)


def backoff(failures: int) -> float:
    """Seconds before the next attempt after *failures* in a row: jittered, at most 2 s."""
    return random.uniform(0, min(2.0, 0.05 * 2 ** min(failures, 6)))


class Detached:
    """
    Store commands, each run to its end in a task of its own, which is never cancelled.

    A caller may stop waiting (at its deadline, or cancelled) while its command finishes on
    its connection under the driver's own timeouts: a driver cancelled mid-command drops the
    connection, or returns it in an unknown state.
    """

    def __init__(self) -> None:
        self.running: set[asyncio.Task[None]] = set()
        """The commands not finished yet, some perhaps no longer awaited."""

    async def run(self, command: Awaitable[T], *, then: Callable[[], None] | None = None) -> T:
        """What *command* returns or raises; *then* is called as it ends, awaited or not."""
        answer: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(_hand_over(command, answer))
        self.running.add(task)
        task.add_done_callback(functools.partial(self._ended, command, answer, then))
        return await answer

    def _ended(
        self,
        command: Awaitable[Any],
        answer: asyncio.Future[Any],
        then: Callable[[], None] | None,
        task: asyncio.Task[None],
    ) -> None:
        self.running.discard(task)
        if then is not None:
            then()
        if task.cancelled():
            # Only a closing event loop cancels one, perhaps before its first step: a
            # coroutine never started is closed, or Python warns that nobody awaited it.
            if inspect.iscoroutine(command):
                command.close()
            answer.cancel()
        elif (error := task.exception()) is not None and not answer.done():
            answer.set_exception(error)  # not an Exception, which _hand_over hands over

    async def finish(self, *, within: float) -> None:
        """Give the commands still running up to *within* seconds to end; cancel none."""
        if self.running:
            await asyncio.wait(set(self.running), timeout=within)


async def _hand_over(command: Awaitable[T], answer: asyncio.Future[T]) -> None:
    # The reply is set from here, not by a done-callback as asyncio.shield's is: the caller
    # resumes a loop cycle sooner.
    try:
        result = await command
    except Exception as exc:
        if not answer.done():  # cancelled with a caller that stopped waiting
            answer.set_exception(exc)
    else:
        if not answer.done():
            answer.set_result(result)


class Outage:
    """Counts the commands an outage failed, and logs it twice: as it starts and ends."""

    def __init__(self, store: str, logger: logging.Logger) -> None:
        self.store = store
        self.logger = logger
        self.outages = 0
        self.failed_commands = 0
        self._started: float | None = None
        self._failed_in_this_one = 0

    def failed(self, reason: str) -> None:
        self.failed_commands += 1
        self._failed_in_this_one += 1
        if self._started is None:
            self._started = time.monotonic()
            self.outages += 1
            self.logger.warning("%s; its commands fail until it answers again", reason)

    def answered(self) -> None:
        if self._started is not None:
            seconds = time.monotonic() - self._started
            self.logger.warning(
                "%s answers again after %.1f s; %d command(s) failed meanwhile",
                self.store,
                seconds,
                self._failed_in_this_one,
            )
            self._started = None
            self._failed_in_this_one = 0


class Rereads:
    """
    Re-reads every pending job when asked, and every *interval* in any case. Strictly private.

    Asked after a wake-up channel came back, and after a wait's own store read failed: that
    wait cannot know whether its outcome was stored before it registered, and the channel
    will not announce it again.
    """

    def __init__(self, interval: float, logger: logging.Logger) -> None:
        self.interval = interval
        self.logger = logger
        self._asked = anyio.Event()

    def ask(self) -> None:
        self._asked.set()

    def reset(self) -> None:
        """Forget a request (the sink closed: its next opening re-reads anyway)."""
        self._asked = anyio.Event()

    async def serve(self, recheck: Callable[[], Awaitable[None]]) -> None:
        """Run *recheck* when asked, retrying until the store answers, for as long as it runs."""
        failures = 0
        while True:
            with anyio.move_on_after(self.interval):
                await self._asked.wait()
            self._asked = anyio.Event()
            try:
                await recheck()
                failures = 0
            except Exception as exc:
                failures += 1
                if not isinstance(exc, SinkUnavailableError):
                    self.logger.exception("re-reading pending jobs failed")
                self._asked.set()
                await anyio.sleep(backoff(failures))
