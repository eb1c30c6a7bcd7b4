"""The metrics by name, and how each one is run."""

from __future__ import annotations

import traceback
from collections.abc import Awaitable, Callable

import anyio

from . import _gc, _ingest, _memory, _requests, _scaling, _stores, _submit, _waits, _wakeup
from ._common import Metric, Sizes, in_fresh_interpreter

Measure = Callable[[Sizes], Awaitable[Metric | list[Metric]]]

METRICS: dict[str, Measure] = {
    "submit": _submit.measure,
    "ingest": _ingest.measure,
    "memory": _memory.measure,
    "correlator": _memory.measure_correlator,
    "wakeup": _wakeup.measure_inprocess,
    "wakeup_redis": _wakeup.measure_redis,
    "wakeup_sqlite": _wakeup.measure_sqlite,
    "wakeup_postgres": _wakeup.measure_postgres,
    "stores_sqlite": _stores.measure_sqlite,
    "stores_redis": _stores.measure_redis,
    "stores_postgres": _stores.measure_postgres,
    "scaling": _scaling.measure,
    "requests": _requests.measure,
    "waits": _waits.measure,
    "gc": _gc.measure,
}
"""Short names, in run order; ``--only`` takes these."""


def run_metric(name: str, sizes: Sizes) -> list[Metric] | str:
    """The metrics, or the traceback of a failure (a broken benchmark must not hide others)."""
    try:
        measured = anyio.run(METRICS[name], sizes, backend="asyncio")
    except Exception:
        return traceback.format_exc()
    return measured if isinstance(measured, list) else [measured]


def run_isolated(name: str, sizes: Sizes) -> list[Metric] | str:
    """
    :func:`run_metric` in a fresh interpreter.

    In one process, a metric measured after another one ran on the heap that one left
    behind: the ingestion ratio read about 0.06 lower after the submission benchmark than
    alone. A figure must not depend on which others were selected, or in what order.
    """
    try:
        return in_fresh_interpreter(run_metric, name, sizes)
    except Exception:
        return traceback.format_exc()  # the worker died: say so, and go on with the others
