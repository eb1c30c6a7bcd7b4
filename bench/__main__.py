"""``python -m bench``: run the benchmarks (see ``bench/__init__.py``)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import anyio

from ._common import Mode, Sizes
from ._run import METRICS, run_isolated

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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    mode: Mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    sizes = Sizes.make(mode, cli_simulator=args.cli_simulator)
    if args.profile:
        try:
            from ._profile import run_profiles
        except ModuleNotFoundError as exc:
            print(
                f'python -m bench: --profile needs {exc.name}: python -m pip install -e ".[bench]"',
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
        result = run_isolated(name, sizes)
        if isinstance(result, str):
            errors += 1
            print(f"[ERROR] {name}:\n{result}", file=sys.stderr, flush=True)
            continue
        for metric in result:
            misses += metric.passed is False
            metric.seconds = time.perf_counter() - metric_started
            print(metric.line(args.json), flush=True)
    if not args.json:
        print(f"done in {time.perf_counter() - started:.1f} s", flush=True)
    return 1 if errors or (args.strict and misses) else 0


if __name__ == "__main__":
    sys.exit(main())
