"""
Sinks store the outcomes of jobs and wake the waiters of this process.

``InMemorySink`` serves one process. ``RedisSink`` (``pip install 'cobalt-async[redis]'``)
and ``PostgresSink`` (``pip install 'cobalt-async[postgres]'``) share outcomes between workers
and pods and keep a durable pending registry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._outcome import Outcome, PendingJob, PublishResult
from ._base import Sink, SinkStats, StoreStats
from ._memory import InMemorySink

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
    "Sink",
    "SinkStats",
    "StoreStats",
]


def __getattr__(name: str) -> Any:
    # RedisSink and PostgresSink need optional packages: import them only when asked for.
    if name == "RedisSink":
        try:
            from ._redis import RedisSink
        except ImportError as exc:
            msg = "RedisSink needs redis-py: pip install 'cobalt-async[redis]'"
            raise ImportError(msg) from exc
        return RedisSink
    if name == "PostgresSink":
        try:
            from ._postgres import PostgresSink
        except ImportError as exc:
            msg = "PostgresSink needs asyncpg: pip install 'cobalt-async[postgres]'"
            raise ImportError(msg) from exc
        return PostgresSink
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
