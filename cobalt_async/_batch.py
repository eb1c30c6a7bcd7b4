"""Batches: bounded-concurrency submission, and waiting for many handles at once."""

from __future__ import annotations

import logging
import math
import random
import warnings
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import anyio
import anyio.lowlevel

from ._errors import CobaltError, RateLimitError
from ._handles import JobHandle, JobStatus, OutcomeSource
from ._http import MAX_RETRY_AFTER
from ._outcome import Outcome
from ._parking import Wakers, park

logger = logging.getLogger("cobalt_async.batch")

R = TypeVar("R")
H = TypeVar("H", bound=JobHandle[Any])

DEFAULT_CONCURRENCY = 32
_YIELD_EVERY = 256
"""``as_completed`` yields to the event loop at least once per this many handles."""
MAX_RATE_LIMIT_RETRIES = 8


@dataclass(frozen=True, slots=True)
class BatchProgress:
    """Where a batch submission stands; passed to ``on_progress`` after every item."""

    total: int
    submitted: int
    """Items Cobalt accepted (each has a handle)."""
    rejected: int
    """Items refused locally or by Cobalt, or whose submission failed."""
    rate_limited: int
    """429 answers so far; the batch slowed down and resubmitted those items."""
    index: int
    """Position in the input of the item that just settled."""
    result: JobHandle[Any] | CobaltError
    """That item's handle (record its job_id now, to survive a crash) or its error."""

    @property
    def done(self) -> int:
        return self.submitted + self.rejected

    @property
    def outcome(self) -> JobHandle[Any] | CobaltError:
        """Deprecated name of :attr:`result` (a job's outcome is another thing)."""
        warnings.warn(
            "BatchProgress.outcome is renamed BatchProgress.result",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.result


ProgressCallback = Callable[[BatchProgress], None]


class _Throttle:
    """Shared by a batch's workers: pauses them all on a 429 and halves concurrency."""

    def __init__(self, concurrency: int) -> None:
        self.limiter = anyio.CapacityLimiter(concurrency)
        self.ceiling = concurrency
        self.resume_at = 0.0
        self.rate_limited = 0
        self.slowed = False
        """Whether a 429 came: from then on every request takes a slot of the limiter."""

    async def wait_turn(self) -> None:
        # A deadline, not an event: a 429 answered during the pause moves it further away.
        if not self.slowed:
            return
        while (delay := self.resume_at - anyio.current_time()) > 0:  # noqa: ASYNC110
            await anyio.sleep(delay)

    def on_rate_limit(self, error: RateLimitError, attempt: int) -> None:
        self.rate_limited += 1
        self.slowed = True
        # Capped as single requests cap it: one absurd Retry-After must not stall the batch.
        pause = None if error.retry_after is None else min(error.retry_after, MAX_RETRY_AFTER)
        if pause is None:
            pause = random.uniform(0.5, 1.0) * min(30.0, 2**attempt)
        self.resume_at = max(self.resume_at, anyio.current_time() + pause)
        self.limiter.total_tokens = max(1, math.ceil(self.limiter.total_tokens / 2))

    def on_success(self) -> None:
        # Additive increase back towards the requested concurrency.
        if self.slowed and self.limiter.total_tokens < self.ceiling:
            self.limiter.total_tokens += 1


@dataclass(slots=True)
class _Batch(Generic[R, H]):
    build: Callable[[Any], R]
    submit: Callable[[R], Awaitable[H]]
    total: int
    throttle: _Throttle
    on_progress: ProgressCallback | None
    results: list[H | CobaltError | None] = field(default_factory=list)
    submitted: int = 0
    rejected: int = 0

    async def run_one(self, index: int, item: Any) -> None:
        result = await self._submit_one(item)
        self.results[index] = result
        if isinstance(result, CobaltError):
            self.rejected += 1
        else:
            self.submitted += 1
        if self.on_progress is not None:
            progress = BatchProgress(
                self.total,
                self.submitted,
                self.rejected,
                self.throttle.rate_limited,
                index,
                result,
            )
            try:
                self.on_progress(progress)
            except Exception:
                # A broken callback must not cost the handles of jobs Cobalt accepted:
                # losing them invites a resubmission, that is, a duplicate EHR write.
                logger.exception("on_progress callback failed for item %d", index)

    async def _submit_one(self, item: Any) -> H | CobaltError:
        try:
            request = self.build(item)
        except CobaltError as exc:
            return exc
        throttle = self.throttle
        for attempt in range(MAX_RATE_LIMIT_RETRIES + 1):
            # Unthrottled, the workers are no more than the concurrency asked for: the
            # limiter (and its trip through the event loop per item) only serves a slowdown.
            async with throttle.limiter if throttle.slowed else nullcontext():
                # Wait with the slot in hand: a worker queued on the limiter while a 429
                # arrived must not send the moment it gets a slot, inside Retry-After.
                await throttle.wait_turn()
                try:
                    handle = await self.submit(request)
                except RateLimitError as exc:
                    # A 429 means Cobalt did not take the request: resubmitting is safe.
                    if attempt == MAX_RATE_LIMIT_RETRIES:
                        return exc
                    throttle.on_rate_limit(exc, attempt)
                    continue
                except CobaltError as exc:
                    return exc
            throttle.on_success()
            return handle
        raise AssertionError  # pragma: no cover


async def submit_many(
    items: Iterable[Any],
    *,
    build: Callable[[Any], R],
    submit: Callable[[R], Awaitable[H]],
    concurrency: int,
    on_progress: ProgressCallback | None,
) -> list[H | CobaltError]:
    """Submit every item; one result per item, in input order: a handle or its error."""
    if concurrency < 1:
        msg = "concurrency must be at least 1"
        raise ValueError(msg)
    pending = list(enumerate(items))
    batch: _Batch[R, H] = _Batch(build, submit, len(pending), _Throttle(concurrency), on_progress)
    batch.results = [None] * len(pending)
    queue = iter(pending)

    async def worker() -> None:
        for index, item in queue:
            await batch.run_one(index, item)

    async with anyio.create_task_group() as task_group:
        for _ in range(min(concurrency, len(pending))):
            task_group.start_soon(worker)
    return [result for result in batch.results if result is not None]


@dataclass(frozen=True, slots=True)
class WaitResult(Generic[H]):
    """What :func:`wait_all` learnt before its deadline."""

    succeeded: list[H]
    failed: list[H]
    """Handles whose job failed; ``handle.event`` is the failure event."""
    pending: list[H]
    """Handles still without an outcome: their jobs may yet succeed. Do not resubmit."""
    malformed: list[H] = field(default_factory=list)
    """Handles whose terminal event could not be read (``MalformedEventError``). Do not resubmit."""

    @property
    def unknown_job_ids(self) -> list[str]:
        return [handle.job_id for handle in self.pending]


class _Group(Generic[H]):
    """The unfinished handles of one source, by job_id. Strictly private."""

    __slots__ = ("by_id", "more", "source", "then")

    def __init__(self, source: OutcomeSource) -> None:
        self.source = source
        self.by_id: dict[str, H] = {}
        self.more: dict[str, list[H]] = {}
        """Further handles of a job_id already in ``by_id`` (the same job, or handle, twice)."""
        self.then: Callable[[H], None] | None = None
        """Called with each handle as it gets its outcome."""

    def add(self, handle: H) -> None:
        if handle.job_id in self.by_id:
            self.more.setdefault(handle.job_id, []).append(handle)
        else:
            self.by_id[handle.job_id] = handle

    def settle(self, job_id: str, outcome: Outcome) -> None:
        """Give the handles of *job_id* its outcome."""
        handle, then = self.by_id[job_id], self.then
        handle._settle(outcome)
        if then is not None:
            then(handle)
        for other in self.more.get(job_id, ()) if self.more else ():
            other._settle(outcome)
            if then is not None:
                then(other)

    async def wait(self, deadline: float) -> None:
        timeout = None if deadline == math.inf else max(0.0, deadline - anyio.current_time())
        await self.source.wait_many(self.by_id, self.settle, timeout)


def _groups(handles: Iterable[H]) -> list[_Group[H]]:
    """The handles without an outcome yet, grouped by the client they wait through."""
    groups: dict[int, _Group[H]] = {}
    for handle in handles:
        if handle.done():
            continue
        source = handle._jobs
        group = groups.get(id(source))
        if group is None:
            group = groups[id(source)] = _Group(source)
        group.add(handle)
    return list(groups.values())


async def wait_all(handles: Sequence[H], *, timeout: float | None = None) -> WaitResult[H]:
    """
    Wait for every handle, with one overall deadline.

    Never raises for a job's failure, an unreadable event or a timeout: the result sorts the
    handles instead,
    and ``unknown_job_ids`` names the jobs still without an outcome at the deadline.
    The wait costs no task per handle: each job's slot calls this one waiting task back.
    """
    deadline = math.inf if timeout is None else anyio.current_time() + timeout
    groups = _groups(handles)
    if len(groups) == 1:
        await groups[0].wait(deadline)
    elif groups:
        async with anyio.create_task_group() as task_group:
            for group in groups:
                task_group.start_soon(group.wait, deadline)
    by_status: dict[JobStatus, list[H]] = {status: [] for status in JobStatus}
    for handle in handles:
        by_status[handle.status].append(handle)
    return WaitResult(
        by_status[JobStatus.SUCCEEDED],
        by_status[JobStatus.FAILED],
        by_status[JobStatus.PENDING],
        by_status[JobStatus.MALFORMED],
    )


class Completed(Generic[H]):
    """Handles in the order they finish; ``pending`` lists those left at the deadline."""

    def __init__(self, handles: Sequence[H]) -> None:
        self._handles = handles
        self._finished: deque[H] = deque()
        self._waiting = 0
        """Groups of handles still waiting."""
        self._parked = Wakers()
        self._taken = 0

    def _add(self, handle: H) -> None:
        self._finished.append(handle)
        self._parked.wake()

    def _group_done(self) -> None:
        self._waiting -= 1
        self._parked.wake()

    def __aiter__(self) -> Completed[H]:
        return self

    async def __anext__(self) -> H:
        # A finished handle is taken without a trip through the event loop: one per handle
        # would cost more than the rest of the wait. Every _YIELD_EVERY-th still yields.
        self._taken += 1
        if not self._taken % _YIELD_EVERY:
            await anyio.lowlevel.checkpoint()
        while not self._finished:
            if not self._waiting:
                raise StopAsyncIteration
            await park(self._parked)
        return self._finished.popleft()

    @property
    def pending(self) -> list[H]:
        return [handle for handle in self._handles if not handle.done()]


@asynccontextmanager
async def as_completed(
    handles: Sequence[H], *, timeout: float | None = None
) -> AsyncIterator[Completed[H]]:
    """
    Yield handles as their jobs finish, successfully or not.

    Use it as ``async with as_completed(handles) as finished: async for handle in
    finished: ...``. Iteration ends when every handle finished or *timeout* passed;
    ``finished.pending`` then names what is still unknown. Leaving the block early stops
    the waits without losing any outcome. One task waits for all the handles of a client.
    """
    deadline = math.inf if timeout is None else anyio.current_time() + timeout
    completed = Completed(handles)
    for handle in handles:
        if handle.done():
            completed._add(handle)  # finished already: yielded first, in their order
    groups = _groups(handles)
    completed._waiting = len(groups)

    async def watch(group: _Group[H]) -> None:
        group.then = completed._add
        try:
            await group.wait(deadline)
        finally:
            completed._group_done()

    error: Exception | None = None
    async with anyio.create_task_group() as task_group:
        for group in groups:
            task_group.start_soon(watch, group)
        try:
            yield completed
        except Exception as exc:
            # Raised again outside the task group, so the caller gets it as it was raised
            # (``await handle`` -> JobFailedError), not wrapped in an ExceptionGroup.
            error = exc
        finally:
            task_group.cancel_scope.cancel()
    if error is not None:
        raise error
