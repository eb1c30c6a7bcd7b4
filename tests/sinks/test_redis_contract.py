"""The sink contract of ``cobalt_async.testing`` on ``RedisSink``, against a real redis-server."""

from __future__ import annotations

import os
import uuid

import pytest

from cobalt_async.sinks import Sink
from cobalt_async.testing import SinkContract
from tests._redis_server import RedisServer

try:
    from cobalt_async.sinks import RedisSink
except ImportError:
    if os.environ.get("CI") == "true":
        raise  # CI installs the redis extra: a missing one must fail, not skip
    pytest.skip("redis-py is not installed", allow_module_level=True)

pytestmark = pytest.mark.redis


class TestRedisSink(SinkContract):
    """Each scenario's sinks share a namespace of their own on the session's server."""

    backends = ("asyncio",)  # redis-py is asyncio only

    @pytest.fixture(autouse=True)
    def _server(self, redis_server: RedisServer) -> None:
        self.url = redis_server.url

    async def make_sinks(self, count: int) -> list[Sink]:
        namespace = f"contract-{uuid.uuid4().hex[:12]}"
        return [RedisSink(self.url, namespace=namespace) for _ in range(count)]
