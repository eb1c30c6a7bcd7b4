"""
Sinks store the outcomes of jobs and wake the waiters of this process.

``InMemorySink`` serves one process. ``SQLiteSink`` shares outcomes between the worker
processes of one host through one SQLite file, with no server. ``RedisSink``
(``pip install 'cobalt-async[redis]'``) shares them between workers and pods. Both keep a
durable pending registry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._outcome import Outcome, PendingJob, PublishResult
from ._base import Sink, SinkStats, StoreStats
from ._memory import InMemorySink
from ._sqlite import SQLiteSink

if TYPE_CHECKING:
    from ._redis import RedisSink

__all__ = [
    "InMemorySink",
    "Outcome",
    "PendingJob",
    "PublishResult",
    "RedisSink",
    "SQLiteSink",
    "Sink",
    "SinkStats",
    "StoreStats",
]


def __getattr__(name: str) -> Any:
    # RedisSink needs the optional redis package: import it only when asked for.
    if name == "RedisSink":
        try:
            from ._redis import RedisSink
        except ImportError as exc:
            msg = "RedisSink needs redis-py: pip install 'cobalt-async[redis]'"
            raise ImportError(msg) from exc
        return RedisSink
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
