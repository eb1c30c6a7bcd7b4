"""
Smoke test of the benchmarks: every one runs and reports in the agreed shape.

Performance targets are not asserted here: speed is measured by ``python -m bench``, not by
timed tests. ``--smoke`` sizes make the whole run take a few seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench._common import Metric, Sizes, Target

ROOT = Path(__file__).resolve().parents[1]
SERVER_METRICS = {"wakeup_redis", "wakeup_postgres", "stores_redis", "stores_postgres"}
KEYS = {"name", "value", "baseline", "ratio", "target", "unit"}
NAMES = {
    "submit_throughput",
    "create_many_cpu",
    "webhook_ingest",
    "webhook_ingest_fragmented",
    "memory_per_handle",
    "memory_vs_correlator",
    "wakeup_inprocess",
    "wakeup_redis",
    "wakeup_sqlite",
    "wakeup_postgres",
    "stores_sqlite",
    "stores_redis",
    "stores_postgres",
    "scaling",
    "requests_per_job",
    "wait_all_cpu",
    "as_completed_cpu",
    "wait_all_memory",
    "gc_objects_per_handle",
    "gc_pause",
}


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )


@pytest.mark.slow
def test_every_benchmark_reports_one_json_line_with_its_baseline_and_ratio() -> None:
    done = _bench("--smoke", "--json")

    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert {record["name"] for record in records} == NAMES
    for record in records:
        assert KEYS <= record.keys(), record
        if record["skipped"]:
            # Only the server sinks' metrics may skip, for want of a server, and never in CI.
            assert record["name"] in SERVER_METRICS, record
            assert os.environ.get("CI") != "true", record
            continue
        assert isinstance(record["value"], int | float), record
        assert isinstance(record["baseline"], int | float), record
        assert isinstance(record["ratio"], int | float), record
        assert record["pass"] in (True, False), record


def test_only_selects_metrics_and_refuses_unknown_names() -> None:
    done = _bench("--smoke", "--json", "--only", "scaling")
    refused = _bench("--only", "nonsense")

    assert [json.loads(line)["name"] for line in done.stdout.splitlines()] == ["scaling"]
    assert refused.returncode == 2
    assert "unknown metric" in refused.stderr


@pytest.mark.parametrize(
    ("target", "value", "baseline", "passed"),
    [
        (Target("ratio", ">=", 0.9), 95.0, 100.0, True),
        (Target("ratio", ">=", 0.9), 80.0, 100.0, False),
        (Target("value", "<=", 1024), 1500.0, 5000.0, False),
        (Target("value", "==", 1.0), 1.0, 31.0, True),
    ],
)
def test_metric_verdict_applies_the_target_to_value_or_ratio(
    target: Target, value: float, baseline: float, passed: bool
) -> None:
    metric = Metric("m", "title", value, baseline, "u", target)

    assert metric.passed is passed
    assert metric.as_json()["ratio"] == pytest.approx(value / baseline, rel=1e-5)
    assert str(target) in metric.render()


def test_paired_ratio_replaces_value_over_baseline() -> None:
    metric = Metric("m", "t", 10.0, 20.0, "u", Target("ratio", ">=", 0.6), paired_ratio=0.7)

    assert metric.ratio == 0.7
    assert metric.passed is True


def test_quick_sizes_are_smaller_than_full_ones() -> None:
    quick, full = Sizes.make("quick"), Sizes.make("full")

    assert quick.memory_handles < full.memory_handles
    assert quick.scaling_large < full.scaling_large == 1_000_000
    assert full.memory_handles == 100_000
