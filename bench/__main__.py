"""``python -m bench``: run the benchmarks (see ``bench/__init__.py``)."""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import anyio

from . import _ingest, _memory, _requests, _scaling, _submit, _wakeup
from ._common import Metric, Mode, Sizes

Measure = Callable[[Sizes], Awaitable[Metric]]

METRICS: dict[str, Measure] = {
    "submit": _submit.measure,
    "ingest": _ingest.measure,
    "memory": _memory.measure,
    "wakeup": _wakeup.measure_inprocess,
    "wakeup_redis": _wakeup.measure_redis,
    "scaling": _scaling.measure,
    "requests": _requests.measure,
}
"""Short names, in run order; ``--only`` takes these."""

PROFILED = ("submit", "ingest", "wakeup", "wakeup_redis")


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in METRICS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown metric(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(METRICS)}"
        )
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=(
            "cobalt_async benchmarks: each metric is printed with a baseline measured in the "
            "same run, their ratio, its target and PASS/FAIL."
        ),
    )
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--quick", action="store_true", help="smaller sizes: under 60 s in all")
    sizes.add_argument(
        "--smoke", action="store_true", help="tiny sizes: proves it runs, figures mean nothing"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per metric per line")
    parser.add_argument(
        "--only", type=_names, default=list(METRICS), help=f"comma-separated: {', '.join(METRICS)}"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help=f"profile the hot paths ({', '.join(PROFILED)}) instead of measuring",
    )
    parser.add_argument("--profile-dir", type=Path, help="where to write the call trees")
    parser.add_argument(
        "--cli-simulator",
        action="store_true",
        help="submit to `python -m cobalt_async simulate` (its socket leaves Nagle on)",
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 when a metric misses its target"
    )
    return parser


def run_metric(name: str, sizes: Sizes) -> Metric | str:
    """The metric, or the traceback of its failure (a broken benchmark must not hide others)."""
    try:
        return anyio.run(METRICS[name], sizes, backend="asyncio")
    except Exception:
        return traceback.format_exc()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    mode: Mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    sizes = Sizes.make(mode, cli_simulator=args.cli_simulator)
    if args.profile:
        try:
            from ._profile import run_profiles
        except ModuleNotFoundError as exc:
            print(
                f"python -m bench: --profile needs {exc.name}: "
                'python -m pip install -e ".[bench]"',
                file=sys.stderr,
            )
            return 2
        only = set(args.only) & set(PROFILED)
        for report in anyio.run(run_profiles, sizes, only, args.profile_dir, backend="asyncio"):
            print(report, flush=True)
        return 0
    started = time.perf_counter()
    if not args.json:
        print(f"cobalt_async benchmarks ({mode}): {', '.join(args.only)}", flush=True)
    errors = misses = 0
    for name in args.only:
        metric_started = time.perf_counter()
        result = run_metric(name, sizes)
        if isinstance(result, str):
            errors += 1
            print(f"[ERROR] {name}:\n{result}", file=sys.stderr, flush=True)
            continue
        misses += result.passed is False
        result.seconds = time.perf_counter() - metric_started
        print(result.line(args.json), flush=True)
    if not args.json:
        print(f"done in {time.perf_counter() - started:.1f} s", flush=True)
    return 1 if errors or (args.strict and misses) else 0


if __name__ == "__main__":
    sys.exit(main())
