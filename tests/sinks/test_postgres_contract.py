"""The sink contract of ``cobalt_async.testing`` on ``PostgresSink``, against a real PostgreSQL."""

from __future__ import annotations

import os
import uuid

import pytest

from cobalt_async.sinks import Sink
from cobalt_async.testing import SinkContract
from tests._postgres_server import PostgresServer

try:
    from cobalt_async.sinks import PostgresSink
except ImportError:
    if os.environ.get("CI") == "true":
        raise  # CI installs the postgres extra: a missing one must fail, not skip
    pytest.skip("asyncpg is not installed", allow_module_level=True)

pytestmark = pytest.mark.postgres


class TestPostgresSink(SinkContract):
    """Each scenario's sinks share a schema of their own on the session's cluster."""

    backends = ("asyncio",)  # asyncpg is asyncio only

    @pytest.fixture(autouse=True)
    def _server(self, postgres_server: PostgresServer) -> None:
        self.dsn = postgres_server.dsn

    async def make_sinks(self, count: int) -> list[Sink]:
        schema = f"contract_{uuid.uuid4().hex[:12]}"
        return [PostgresSink(self.dsn, schema=schema) for _ in range(count)]
