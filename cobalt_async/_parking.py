"""
Parking a task until something wakes it, on asyncio and trio alike, for the cost of a future.

``anyio.Event`` costs an event, its deque and two coroutines per waiting task (and its
``set()`` goes through two wrapper layers). A correlation slot needs less: a task parks on
it with :func:`park` (a bare future on asyncio, a rescheduled task on trio), and ``wake()``
wakes whatever is parked. A :class:`Listener` is called back instead, so one task can wait
for many holders at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, Protocol, TypeAlias


class Wakers:
    """
    What is parked on something: one waker, a list of them, or ``None``.

    A waker is an asyncio future, a parked trio task or a :class:`Listener`. Most holders
    have exactly one, so it is kept as is, without a list.
    """

    __slots__ = ("wakers",)

    def __init__(self) -> None:
        self.wakers: Waker | list[Waker] | None = None

    def add(self, waker: Waker) -> None:
        wakers = self.wakers
        if wakers is None or _finished(wakers):
            self.wakers = waker
        elif isinstance(wakers, list):
            # Futures of waits cancelled since the last wake-up go now: the list stays as
            # long as the waits still parked here.
            wakers[:] = [parked for parked in wakers if not _finished(parked)]
            if waker not in wakers:
                wakers.append(waker)
        elif wakers is not waker:
            self.wakers = [wakers, waker]

    def discard(self, waker: Waker) -> None:
        wakers = self.wakers
        if wakers is waker:
            self.wakers = None
        elif isinstance(wakers, list) and waker in wakers:
            wakers.remove(waker)

    def wake(self) -> None:
        """Wake everything parked here; each waits again if it has to."""
        wakers, self.wakers = self.wakers, None
        if wakers is None:
            return
        if isinstance(wakers, list):
            for waker in wakers:
                _notify(waker, self)
        elif isinstance(wakers, asyncio.Future):  # the common case, without a call
            if not wakers.done():
                wakers.set_result(None)
        else:
            wakers.notify(self)


class _Rescheduled:
    """A trio task parked on a holder. Strictly private."""

    __slots__ = ("task",)

    def __init__(self, task: Any) -> None:
        self.task = task

    def notify(self, holder: Wakers) -> None:
        import trio

        trio.lowlevel.reschedule(self.task)


class Listener(Protocol):
    """A waker that is called back: woken by *holder*, it does what it must without a task."""

    def notify(self, holder: Wakers) -> None: ...


Waker: TypeAlias = "asyncio.Future[None] | Listener"


def _notify(waker: Waker, holder: Wakers) -> None:
    if isinstance(waker, asyncio.Future):
        if not waker.done():
            waker.set_result(None)
    else:
        waker.notify(holder)


def park(holder: Wakers) -> Awaitable[None]:
    """
    What to await, at once, until *holder* wakes (or the task is cancelled).

    On asyncio a bare future, awaited in the caller's own frame: no ``anyio.Event`` and its
    layers (an event, its deque, two coroutines), nor a coroutine of its own, per pending
    wait. A wait cancelled meanwhile leaves its done future behind; the holder drops it
    when it next wakes or takes a waker. On trio, a task the holder reschedules.
    """
    loop = asyncio._get_running_loop()
    if loop is None:
        return _park_trio(holder)
    future: asyncio.Future[None] = loop.create_future()
    holder.add(future)
    return future


def _finished(waker: Waker | list[Waker]) -> bool:
    return isinstance(waker, asyncio.Future) and waker.done()


async def _park_trio(holder: Wakers) -> None:
    import trio

    parked = _Rescheduled(trio.lowlevel.current_task())
    holder.add(parked)

    def abort(_: object) -> trio.lowlevel.Abort:
        holder.discard(parked)
        return trio.lowlevel.Abort.SUCCEEDED

    await trio.lowlevel.wait_task_rescheduled(abort)
