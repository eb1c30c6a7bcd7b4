from __future__ import annotations

import pytest

pytest_plugins = ["tests._redis_server"]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run every anyio test on both backends: the core must not depend on asyncio."""
    return str(request.param)
