"""
The store commands' runner (``sinks._shared.Detached``): a command runs to its end in a task of
its own, whatever its caller does, and no error or coroutine is left behind unseen.
"""

from __future__ import annotations

import asyncio
import gc
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from cobalt_async.sinks._shared import Detached

pytestmark = pytest.mark.anyio

LIMIT = 10.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # what RedisSink and PostgresSink run on


class Failed(BaseException):
    """Not an Exception: what only a stopping interpreter raises in a command."""


@contextmanager
def nothing_reported() -> Iterator[None]:
    """Fail if asyncio reports an unretrieved error or Python an unawaited coroutine."""
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
            gc.collect()
    finally:
        loop.set_exception_handler(None)
    assert [] == reported
    assert [] == [str(warning.message) for warning in caught]


async def test_a_caller_that_stops_waiting_leaves_its_command_to_end() -> None:
    commands, ended, go_on = Detached(), [], anyio.Event()

    async def command() -> str:
        await go_on.wait()
        return "done"

    with anyio.fail_after(LIMIT):
        with anyio.move_on_after(0.01) as scope:
            await commands.run(command(), then=lambda: ended.append(1))
        assert scope.cancelled_caught
        (task,) = commands.running
        go_on.set()
        await task
    assert not task.cancelled()
    assert [1] == ended
    assert not commands.running


async def test_a_command_failing_after_its_caller_left_leaves_no_unseen_error() -> None:
    commands, go_on, failed = Detached(), anyio.Event(), anyio.Event()

    async def fails_late() -> None:
        await go_on.wait()
        failed.set()
        raise ConnectionError("gone")

    with nothing_reported(), anyio.fail_after(LIMIT):
        with anyio.move_on_after(0.01) as scope:
            await commands.run(fails_late())
        assert scope.cancelled_caught
        (task,) = commands.running
        go_on.set()  # only once its caller is gone
        await task
        del task
        assert failed.is_set()


async def test_an_error_reaches_the_caller_that_waits() -> None:
    async def fails() -> None:
        raise ConnectionError("refused")

    with nothing_reported(), anyio.fail_after(LIMIT):
        with pytest.raises(ConnectionError, match="refused"):
            await Detached().run(fails())


async def test_a_command_cancelled_before_its_first_step_frees_all() -> None:
    """As a closing event loop does: the caller learns at once, the admission is released."""
    commands, ended = Detached(), []

    async def command() -> None:
        raise AssertionError("never started")

    with nothing_reported(), anyio.fail_after(LIMIT):
        caller = asyncio.ensure_future(commands.run(command(), then=lambda: ended.append(1)))
        while not commands.running:
            await anyio.lowlevel.checkpoint()
        (task,) = commands.running
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        del task
    assert [1] == ended


async def test_a_command_raising_what_is_not_an_exception_frees_its_caller_at_once() -> None:
    commands, ended = Detached(), []

    async def command() -> None:
        raise Failed

    with nothing_reported(), anyio.fail_after(LIMIT):
        caller = asyncio.ensure_future(commands.run(command(), then=lambda: ended.append(1)))
        with pytest.raises(Failed):
            await caller  # at once: it has no deadline to wait for
    assert [1] == ended


async def test_finishing_waits_for_the_commands_and_cancels_none() -> None:
    commands, go_on = Detached(), anyio.Event()

    async def command() -> None:
        await go_on.wait()

    with anyio.fail_after(LIMIT):
        with anyio.move_on_after(0.01):
            await commands.run(command())
        await commands.finish(within=0.01)  # it gives up on the command, and leaves it be
        (task,) = commands.running
        assert not task.done()
        go_on.set()
        await commands.finish(within=LIMIT)
    assert not commands.running
    assert not task.cancelled()
