"""Helpers shared by the test modules, so that none imports another; fixtures are in conftest.py."""

from __future__ import annotations

from collections.abc import Callable

import anyio

# -- waiting and time --------------------------------------------------------------------------


async def until(predicate: Callable[[], bool], *, timeout: float = 5.0) -> None:
    """Yield to other tasks until *predicate* holds; fail after *timeout* seconds."""
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.lowlevel.checkpoint()
