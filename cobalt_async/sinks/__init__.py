"""
Sinks store the outcomes of jobs and wake the waiters of this process.

``InMemorySink`` serves one process. ``SQLiteSink`` shares outcomes between the worker
processes of one host through one SQLite file, with no server. ``RedisSink``
(``pip install 'cobalt-async[redis]'``) and ``PostgresSink`` (``pip install
'cobalt-async[postgres]'``) share them between workers and pods. All three keep a durable
pending registry. ``sink_from_url(url)`` builds the one a deployment's URL names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._outcome import Outcome, PendingJob, PublishResult
from ._base import Sink, SinkStats, StoreStats
from ._memory import InMemorySink
from ._sqlite import SQLiteSink
from ._urls import postgres_sink_class, redis_sink_class, sink_from_url

if TYPE_CHECKING:
    from ._postgres import PostgresSink
    from ._redis import RedisSink

__all__ = [
    "InMemorySink",
    "Outcome",
    "PendingJob",
    "PostgresSink",
    "PublishResult",
    "RedisSink",
    "SQLiteSink",
    "Sink",
    "SinkStats",
    "StoreStats",
    "sink_from_url",
]


def __getattr__(name: str) -> Any:
    # RedisSink and PostgresSink need optional packages: import them only when asked for.
    if name == "RedisSink":
        return redis_sink_class()
    if name == "PostgresSink":
        return postgres_sink_class()
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
