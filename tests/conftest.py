from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import FakeClock, fake_clock

pytest_plugins = ["tests._redis_server"]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run every anyio test on both backends: the core must not depend on asyncio."""
    return str(request.param)


@pytest.fixture
def clock() -> Iterator[FakeClock]:
    """InMemorySink's time, moved on by the test alone."""
    with fake_clock() as clock:
        yield clock
