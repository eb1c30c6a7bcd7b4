"""What a FakeCobalt did: counters a test asserts on."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class FakeStats:
    """What a :class:`FakeCobalt` did so far; the counters only grow."""

    requests: int = 0
    tasks_accepted: int = 0
    notes_accepted: int = 0
    fetches_accepted: int = 0
    """Live fetches (``POST /v1/patients/fetch``) accepted."""
    rejected: int = 0
    """Requests answered with a 4xx, except the injected 429s."""
    api_errors: int = 0
    """Injected 503 answers."""
    rate_limited: int = 0
    """Injected 429 answers."""
    answers_lost: int = 0
    """Creates whose job exists but whose answer was replaced by an injected 504."""
    jobs_finished: int = 0
    failed_jobs: int = 0
    early: int = 0
    """Jobs whose webhook was delivered before the POST was answered."""
    dropped: int = 0
    duplicated: int = 0
    deliveries_attempted: int = 0
    """Every delivery attempt, retries included."""
    deliveries_succeeded: int = 0
    deliveries_failed: int = 0
    """Deliveries that got no 2xx answer, after the retry if there was one."""
    retried: int = 0
