from __future__ import annotations

from collections.abc import Iterator

import pytest

from cobalt_async import InMemorySink
from tests.support import FakeClock, fake_clock

pytest_plugins = ["tests._redis_server", "tests._redis_cluster", "tests._postgres_server"]

CONFIGURATION_VARIABLES = [
    "COBALT_CLIENT_ID",
    "COBALT_CLIENT_SECRET",
    "COBALT_ACCESS_TOKEN",
    "COBALT_BASE_URL",
    "COBALT_WEBHOOK_SECRET",
    "DATABASE_URL",
    "REDIS_URL",
    "WEB_CONCURRENCY",
]
"""Every environment variable the package or its examples read for configuration."""


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run every anyio test on both backends: the core must not depend on asyncio."""
    return str(request.param)


@pytest.fixture
def sink() -> InMemorySink:
    """A fresh in-process sink."""
    return InMemorySink()


@pytest.fixture
def clock() -> Iterator[FakeClock]:
    """InMemorySink's time, moved on by the test alone."""
    with fake_clock() as clock:
        yield clock


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Configuration comes from each test, never from the machine it runs on."""
    for name in CONFIGURATION_VARIABLES:
        monkeypatch.delenv(name, raising=False)
