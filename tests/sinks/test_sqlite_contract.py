"""
The sink contract of ``cobalt_async.testing`` on ``SQLiteSink``, on asyncio and trio.

Each scenario's sinks share one database file of their own: separate instances, with their
own connections and listeners, as worker processes sharing the file would have.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from cobalt_async.sinks import Sink, SQLiteSink
from cobalt_async.testing import SinkContract


class TestSQLiteSink(SinkContract):
    """Several sinks on one file stand for several processes."""

    @pytest.fixture(autouse=True)
    def _directory(self, tmp_path: Path) -> None:
        self.directory = tmp_path

    async def make_sinks(self, count: int) -> list[Sink]:
        path = self.directory / f"contract-{uuid.uuid4().hex[:12]}.sqlite"
        return [SQLiteSink(path) for _ in range(count)]


class TestSQLiteSinkSharingOneFileUnderPrefixes(SinkContract):
    """Tables under a prefix of their own, beside another sink's in the same file."""

    backends = ("trio",)

    @pytest.fixture(autouse=True)
    def _directory(self, tmp_path: Path) -> None:
        self.path = tmp_path / "app.sqlite"

    async def make_sinks(self, count: int) -> list[Sink]:
        prefix = f"cobalt_{uuid.uuid4().hex[:8]}_"
        return [SQLiteSink(self.path, table_prefix=prefix) for _ in range(count)]
