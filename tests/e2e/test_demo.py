"""``python -m cobalt_async demo --json`` end to end: real servers, injected faults, no loss."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

TIMEOUT = 90.0
SUMMARY_KEYS = {"submitted", "succeeded", "failed", "lost", "resolved_via", "wall_s"}


def run_demo(
    *flags: str, timeout: float = TIMEOUT, measured: bool = True
) -> tuple[int, dict[str, Any]]:
    """
    Run the demo with ``--json``; returns its exit status and the summary object.

    ``measured=False`` keeps coverage out of the subprocess: the chaos run covers no line
    the short runs do not, and coverage would triple its time.
    """
    env = None if measured else {k: v for k, v in os.environ.items() if "COVERAGE" not in k}
    result = subprocess.run(
        [sys.executable, "-m", "cobalt_async", "demo", "--json", *flags],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    lines = result.stdout.strip().splitlines()
    assert lines, f"no summary on stdout; stderr: {result.stderr[-2000:]}"
    summary = json.loads(lines[-1])
    assert isinstance(summary, dict)
    assert SUMMARY_KEYS <= summary.keys()
    return result.returncode, summary


def assert_accounted_for(summary: dict[str, Any]) -> None:
    """Every submitted job ended exactly one way, and was resolved exactly one way."""
    assert summary["succeeded"] + summary["failed"] + summary["lost"] == summary["submitted"]
    assert sum(summary["resolved_via"].values()) == summary["submitted"] - summary["lost"]


def test_demo_loses_nothing_under_duplicates_early_and_dropped_webhooks() -> None:
    """Injected faults: every job is resolved, and only the injected failures fail."""
    status, summary = run_demo(
        *("--tasks", "200", "--duplicate-rate", "0.1", "--early-rate", "0.1"),
        *("--drop-rate", "0.05", "--failure-rate", "0.05", "--seed", "7"),
        *("--poll-silence", "3"),  # dropped webhooks are what this test waits for
    )

    assert summary["lost"] == 0, summary.get("lost_job_ids")
    assert status == 0
    assert_accounted_for(summary)
    assert summary["failed"] == summary["failed_expected"] > 0
    assert summary["webhooks_dropped"] > 0
    assert summary["resolved_via"].get("poll", 0) > 0  # dropped webhooks found by polling
    assert summary["backstop_polls"] > 0
    assert summary["duplicates"] > 0  # duplicate deliveries were seen and ignored
    # Each created task's patient is fetched, and a note appended to each task found.
    assert summary["tasks"] == 200
    assert summary["fetches"] <= 200
    assert summary["staff_notes"] > 0
    assert 200 < summary["submitted"] <= 700


def test_demo_reconciles_creates_whose_answer_was_lost_and_writes_nothing_twice() -> None:
    """Lost answers: found again in Cobalt's record, never resubmitted, none lost."""
    status, summary = run_demo(
        *("--tasks", "200", "--lost-answer-rate", "0.1", "--early-rate", "0.1"),
        *("--seed", "5", "--latency", "0.1"),
    )

    assert status == 0
    assert summary["lost"] == summary["duplicate_writes"] == summary["unreconciled"] == 0
    # A lost create is reconciled; a lost fetch is sent again, as it only reads.
    assert summary["reconciled"] > 0
    assert summary["reconciled"] + summary["fetches_repeated"] == summary["answers_lost"]
    assert_accounted_for(summary)
    assert summary["submitted"] == 700  # every task, fetch and note, the reconciled ones too


def test_demo_with_default_settings_resolves_700_jobs_quickly() -> None:
    """
    200 tasks, a live fetch of each one's patient, and a note on each of the 300 tasks found
    (100 made by clinic staff): all succeeded via webhooks, well within 20 s.
    """
    status, summary = run_demo()

    assert status == 0
    assert summary["submitted"] == 700
    assert (summary["tasks"], summary["fetches"], summary["notes"]) == (200, 200, 300)
    assert summary["staff_notes"] == 100
    assert summary["succeeded"] == 700
    assert summary["lost"] == summary["failed"] == 0
    # No fault injected: nothing to recover by polling, no delivery repeated.
    assert summary["resolved_via"] == {"webhook": 700}
    assert summary["duplicates"] == summary["backstop_polls"] == 0
    assert_accounted_for(summary)
    assert summary["wall_s"] < 20


def test_demo_exits_1_and_names_the_jobs_it_lost() -> None:
    """Jobs still unresolved at ``--timeout`` are lost: reported by job_id, exit status 1."""
    status, summary = run_demo("--tasks", "5", "--latency", "60", "--timeout", "1")

    assert status == 1
    assert summary["lost"] == summary["submitted"] == 5
    assert len(summary["lost_job_ids"]) == 5
    assert summary["succeeded"] == summary["failed"] == 0
    assert_accounted_for(summary)


@pytest.mark.timeout(600)
def test_demo_chaos_3000_tasks_loses_nothing() -> None:
    """3,000 tasks (about 10,000 jobs) under every fault at once, HTTP errors too: none lost."""
    status, summary = run_demo(
        *("--tasks", "3000", "--duplicate-rate", "0.1", "--early-rate", "0.1"),
        *("--drop-rate", "0.05", "--failure-rate", "0.05", "--http-error-rate", "0.05"),
        *("--lost-answer-rate", "0.02", "--seed", "11", "--timeout", "400"),
        *("--poll-silence", "3"),
        timeout=500,
        measured=False,
    )

    assert summary["lost"] == 0, summary.get("lost_job_ids")
    assert status == 0
    assert_accounted_for(summary)
    assert summary["failed"] == summary["failed_expected"] > 0
    assert summary["rejected"] == 0
    # Every dropped webhook of a job the demo follows is found by polling (an unreconciled
    # job, failed with its answer lost, is followed by nobody).
    dropped = summary["webhooks_dropped"]
    assert summary["resolved_via"]["poll"] >= dropped - summary["unreconciled"] > 0
    # Lost answers are found again, except those of failed jobs, which echo nothing to match.
    assert summary["duplicate_writes"] == 0
    lost_answers = summary["reconciled"] + summary["unreconciled"] + summary["fetches_repeated"]
    assert lost_answers == summary["answers_lost"] > 0
    assert summary["reconciled"] > summary["unreconciled"]
    # A fetch for each task that succeeded (about 95% of them), a note for each task found.
    assert 0.9 * 3000 < summary["fetches"] <= 3000
    assert 0.9 * 1.5 * summary["fetches"] < summary["notes"] <= 1.5 * summary["fetches"]


@pytest.mark.parametrize("sink", ["sqlite", "redis", "postgres"])
def test_demo_through_a_shared_sink_loses_nothing(
    sink: str, request: pytest.FixtureRequest
) -> None:
    """``--sink``: the receiver stores into one instance and the client waits on another."""
    flags = ["--sink", sink]
    # Servers of this test alone: job ids restart with every demo.
    if sink == "redis":
        flags += ["--sink-url", request.getfixturevalue("fresh_redis_server").url]
    if sink == "postgres":
        flags += ["--sink-url", request.getfixturevalue("fresh_postgres_server").dsn]
    status, summary = run_demo(
        *("--tasks", "60", "--duplicate-rate", "0.2", "--early-rate", "0.2", "--seed", "3"), *flags
    )

    assert (status, summary["lost"]) == (0, 0)
    names = {"sqlite": "SQLiteSink", "redis": "RedisSink", "postgres": "PostgresSink"}
    assert summary["sink"] == names[sink]
    assert_accounted_for(summary)
    assert summary["duplicates"] > 0
    assert summary["resolved_via"] == {"webhook": summary["submitted"]}


def test_demo_with_a_server_sink_and_no_url_says_what_to_set() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cobalt_async", "demo", "--sink", "redis"],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "REDIS_URL"},
        timeout=TIMEOUT,
        check=False,
    )
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        "cobalt-async demo: demo --sink redis needs a server: pass --sink-url or set REDIS_URL\n"
    )
