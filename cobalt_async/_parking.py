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
        if wakers is None:
            self.wakers = waker
        elif isinstance(wakers, list):
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
        if isinstance(wakers, list):
            for waker in wakers:
                _notify(waker, self)
        elif wakers is not None:
            _notify(wakers, self)


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


async def park(holder: Wakers) -> None:
    """
    Sleep until *holder* wakes (or the task is cancelled).

    A bare future on asyncio, a rescheduled task on trio: no ``anyio.Event`` and its
    layers (an event, its deque, two coroutines) per pending wait.
    """
    loop = asyncio._get_running_loop()
    if loop is None:
        await _park_trio(holder)
        return
    future: asyncio.Future[None] = loop.create_future()
    holder.add(future)
    try:
        await future
    except BaseException:
        holder.discard(future)
        raise


async def _park_trio(holder: Wakers) -> None:
    import trio

    parked = _Rescheduled(trio.lowlevel.current_task())
    holder.add(parked)

    def abort(_: object) -> trio.lowlevel.Abort:
        holder.discard(parked)
        return trio.lowlevel.Abort.SUCCEEDED

    await trio.lowlevel.wait_task_rescheduled(abort)
