"""Helpers shared by the test modules, so that none imports another; fixtures are in conftest.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from unittest import mock

import anyio

from cobalt_async.sinks import _memory

# -- waiting and time --------------------------------------------------------------------------


async def until(predicate: Callable[[], bool], *, timeout: float = 5.0) -> None:
    """Yield to other tasks until *predicate* holds; fail after *timeout* seconds."""
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.lowlevel.checkpoint()


class FakeClock:
    """Stands in for the ``time`` module of ``cobalt_async.sinks._memory``."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@contextmanager
def fake_clock() -> Iterator[FakeClock]:
    """InMemorySink's time is a FakeClock while this is open."""
    clock = FakeClock()
    with mock.patch.object(_memory, "time", clock):
        yield clock
