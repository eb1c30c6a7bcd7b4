"""What every benchmark shares: the result record, its two renderings, sizes and statistics."""

from __future__ import annotations

import gc
import json
import math
import multiprocessing
import operator
import statistics
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, ParamSpec, TypeAlias, TypedDict, TypeVar

import anyio
import httpx

from cobalt_async import CobaltClient, PollPolicy
from cobalt_async.sinks import Sink

P = ParamSpec("P")
T = TypeVar("T")

Op: TypeAlias = Literal[">=", "<=", "=="]
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "==": lambda value, bound: math.isclose(value, bound, rel_tol=1e-9, abs_tol=1e-9),
}

# Credentials and secret shared by the fake, the SDK and the raw baselines.
CLIENT_ID = "ci_test"
CLIENT_SECRET = "cs_test"
ACCESS_TOKEN = "at_test"
WEBHOOK_SECRET = "whsec_test"


class Credentials(TypedDict):
    client_id: str
    client_secret: str
    access_token: str


CREDENTIALS: Credentials = {
    "client_id": CLIENT_ID,
    "client_secret": CLIENT_SECRET,
    "access_token": ACCESS_TOKEN,
}

NO_POLL = PollPolicy(silence=3600.0, max_silence=3600.0)
"""A backstop an hour away: no poll fires while a benchmark runs."""


def _unreachable(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"a benchmark sent {request.method} {request.url} to Cobalt")


def offline_client(sink: Sink, **options: Any) -> CobaltClient:
    """A client on *sink* that fails any request it would send to Cobalt."""
    return CobaltClient(
        **CREDENTIALS, sink=sink, transport=httpx.MockTransport(_unreachable), **options
    )


@dataclass(frozen=True, slots=True)
class Target:
    """A pass condition on a metric's ``value`` or on its ``ratio`` to the baseline."""

    on: Literal["value", "ratio"]
    op: Op
    bound: float

    def __str__(self) -> str:
        return f"{self.on} {self.op} {self.bound:g}"

    def check(self, value: float | None, ratio: float | None) -> bool | None:
        subject = value if self.on == "value" else ratio
        if subject is None or math.isnan(subject):
            return None
        return _OPS[self.op](subject, self.bound)


@dataclass(slots=True)
class Metric:
    """One measured figure, its baseline from the same run, their ratio and the verdict."""

    name: str
    title: str
    value: float | None
    baseline: float | None
    unit: str
    target: Target
    value_label: str = "SDK"
    baseline_label: str = "baseline"
    details: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None
    seconds: float | None = None
    """Wall time the metric took, its fresh interpreter's start included."""
    paired_ratio: float | None = None
    """The median of per-round ratios, when rounds were paired: it replaces value/baseline,
    since pairing cancels the drift of a shared machine between rounds."""

    @property
    def ratio(self) -> float | None:
        if self.paired_ratio is not None:
            return self.paired_ratio
        if self.value is None or not self.baseline:
            return None
        return self.value / self.baseline

    @property
    def passed(self) -> bool | None:
        return None if self.skipped else self.target.check(self.value, self.ratio)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": _rounded(self.value),
            "baseline": _rounded(self.baseline),
            "ratio": _rounded(self.ratio),
            "target": str(self.target),
            "unit": self.unit,
            "pass": self.passed,
            "skipped": self.skipped,
            "seconds": _rounded(self.seconds),
            "details": {key: _rounded(value) for key, value in self.details.items()},
        }

    def render(self) -> str:
        if self.skipped:
            return f"[SKIP] {self.name}: {self.title}\n       {self.skipped}"
        verdict = {True: "PASS", False: "FAIL", None: "????"}[self.passed]
        ratio = "n/a" if self.ratio is None else f"{self.ratio:.3f}"
        if self.paired_ratio is not None:
            ratio += " (median of paired rounds)"
        lines = [
            f"[{verdict}] {self.name}: {self.title}"
            + ("" if self.seconds is None else f" ({self.seconds:.1f} s)"),
            f"       {self.value_label}: {_fmt(self.value)} {self.unit}"
            f" | {self.baseline_label}: {_fmt(self.baseline)} {self.unit}"
            f" | ratio {ratio} | target {self.target}",
        ]
        lines.extend(f"       - {key}: {_fmt(value)}" for key, value in self.details.items())
        return "\n".join(lines)

    def line(self, as_json: bool) -> str:
        return json.dumps(self.as_json()) if as_json else self.render()


def skipped(name: str, title: str, unit: str, target: Target, reason: str) -> Metric:
    return Metric(name, title, None, None, unit, target, skipped=reason)


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return None
        return float(f"{value:.6g}")
    return value


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if value == 0 or 0.01 <= abs(value) < 1e6:
            return f"{value:,.3f}".rstrip("0").rstrip(".")
        return f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


Mode: TypeAlias = Literal["full", "quick", "smoke"]


@dataclass(frozen=True, slots=True)
class Sizes:
    """
    How much work each benchmark does.

    ``full`` is the reference run (minutes); ``quick`` stays under a minute in all; ``smoke``
    only proves that every benchmark runs and reports (its figures mean nothing).
    """

    mode: Mode
    submit_rounds: int
    submit_requests: int
    submit_concurrency: int
    ingest_rounds: int
    ingest_events: int
    memory_handles: int
    wake_samples: int
    redis_samples: int
    """Wake-ups measured across processes, through each server sink and raw."""
    sqlite_samples: int
    store_rounds: int
    store_events: int
    scaling_small: int
    scaling_large: int
    scaling_events: int
    scaling_rounds: int
    """Rounds per process; each size runs in ``scaling_processes`` processes of its own."""
    scaling_processes: int
    requests_jobs: int
    requests_time_unit: float
    """Real seconds per simulated second in the requests-per-job scenarios."""
    profile_scale: int
    waits_handles: int
    waits_rounds: int
    gc_pending: int
    cli_simulator: bool = False
    """Submit to ``python -m cobalt_async simulate`` rather than ``bench._simserver``."""

    @classmethod
    def make(cls, mode: Mode, *, cli_simulator: bool = False) -> Sizes:
        return cls(mode=mode, cli_simulator=cli_simulator, **_SIZES[mode])


_SIZES: dict[str, dict[str, Any]] = {
    "full": {
        "submit_rounds": 30,
        "submit_requests": 500,
        "submit_concurrency": 32,
        "ingest_rounds": 21,
        "ingest_events": 2_000,
        "memory_handles": 100_000,
        "wake_samples": 10_000,
        "redis_samples": 2_000,
        "sqlite_samples": 1_000,
        "store_rounds": 11,
        "store_events": 2_000,
        "scaling_small": 1_000,
        "scaling_large": 1_000_000,
        "scaling_events": 500,
        "scaling_rounds": 31,
        "scaling_processes": 3,
        "requests_jobs": 40,
        "requests_time_unit": 0.05,
        "profile_scale": 4,
        "waits_handles": 100_000,
        "waits_rounds": 3,
        "gc_pending": 1_000_000,
    },
    "quick": {
        "submit_rounds": 8,
        "submit_requests": 120,
        "submit_concurrency": 32,
        "ingest_rounds": 9,
        "ingest_events": 1_000,
        "memory_handles": 10_000,
        "wake_samples": 1_000,
        "redis_samples": 200,
        "sqlite_samples": 200,
        "store_rounds": 5,
        "store_events": 500,
        "scaling_small": 1_000,
        "scaling_large": 50_000,
        "scaling_events": 500,
        "scaling_rounds": 15,
        "scaling_processes": 2,
        "requests_jobs": 10,
        "requests_time_unit": 0.05,
        "profile_scale": 1,
        "waits_handles": 10_000,
        "waits_rounds": 3,
        "gc_pending": 30_000,
    },
    "smoke": {
        "submit_rounds": 2,
        "submit_requests": 20,
        "submit_concurrency": 4,
        "ingest_rounds": 1,
        "ingest_events": 50,
        "memory_handles": 200,
        "wake_samples": 50,
        "redis_samples": 5,
        "sqlite_samples": 5,
        "store_rounds": 1,
        "store_events": 20,
        "scaling_small": 50,
        "scaling_large": 200,
        "scaling_events": 20,
        "scaling_rounds": 2,
        "scaling_processes": 1,
        "requests_jobs": 3,
        "requests_time_unit": 0.01,
        "profile_scale": 1,
        "waits_handles": 200,
        "waits_rounds": 1,
        "gc_pending": 2_000,
    },
}


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], q: float) -> float:
    """The *q*-th percentile (0-100), nearest-rank on the sorted sample."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def in_fresh_interpreter(function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """*function* called in a spawned interpreter: a heap of its own making and nothing else."""
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
        return pool.submit(function, *args, **kwargs).result()


@contextmanager
def gc_settled() -> Iterator[None]:
    """Collect first, so that a timed section does not pay for earlier garbage."""
    gc.collect()
    yield


async def until(
    predicate: Callable[[], bool], *, interval: float = 0.001, timeout: float = 60
) -> None:
    """Poll *predicate*: the counters watched here (``sink.stats()``...) offer no event."""
    with anyio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110
            await anyio.sleep(interval)
