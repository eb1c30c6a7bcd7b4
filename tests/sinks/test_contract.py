"""
The sink contract of ``cobalt_async.testing`` on ``InMemorySink`` and on a third-party sink.

``SharedStoreSink`` is written only against the public ``Sink`` interface, as a user's own
sink would be: several instances share one store and wake each other through ``recheck``,
as processes sharing a database do.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from cobalt_async.sinks import InMemorySink, Outcome, Sink, StoreStats
from cobalt_async.testing import SinkContract


class SharedStore:
    """What several ``SharedStoreSink`` instances share: outcomes, delivery keys, listeners."""

    def __init__(self) -> None:
        self.outcomes: dict[str, Outcome] = {}
        self.seen: set[str] = set()
        self.sinks: list[SharedStoreSink] = []


class SharedStoreSink(Sink):
    """A third-party sink: one store, many instances, wake-ups by ``recheck``."""

    def __init__(self, store: SharedStore) -> None:
        super().__init__()
        self._store = store
        store.sinks.append(self)

    async def put_if_absent(self, job_id: str, outcome: Outcome) -> Outcome | None:
        stored = self._store.outcomes.setdefault(job_id, outcome)
        if stored is not outcome:
            return stored
        for sink in self._store.sinks:
            if sink is not self and sink.is_awaited(job_id):
                await sink.recheck([job_id])
        return None

    async def get_outcomes(self, job_ids: Sequence[str]) -> dict[str, Outcome]:
        outcomes = self._store.outcomes
        return {job_id: outcomes[job_id] for job_id in job_ids if job_id in outcomes}

    async def first_seen(self, key: str) -> bool:
        new = key not in self._store.seen
        self._store.seen.add(key)
        return new

    def store_stats(self) -> StoreStats:
        return StoreStats()


class TestInMemorySink(SinkContract):
    """One process: every "process" of a scenario is the same sink."""

    async def make_sinks(self, count: int) -> list[Sink]:
        return [InMemorySink()] * count


class TestThirdPartySink(SinkContract):
    """Written against the public interface only, and sharing its store between instances."""

    async def make_sinks(self, count: int) -> list[Sink]:
        store = SharedStore()
        return [SharedStoreSink(store) for _ in range(count)]


class LastWinsSink(SharedStoreSink):
    """Broken: a later outcome replaces the first."""

    async def put_if_absent(self, job_id: str, outcome: Outcome) -> Outcome | None:
        self._store.outcomes[job_id] = outcome
        return None


class DeafSink(SharedStoreSink):
    """Broken: stores across instances but never wakes another one's waits."""

    async def put_if_absent(self, job_id: str, outcome: Outcome) -> Outcome | None:
        stored = self._store.outcomes.setdefault(job_id, outcome)
        return None if stored is outcome else stored


class BrokenContract(SinkContract):
    """The contract run on a broken sink, each scenario cut short."""

    scenario_timeout = 0.5
    backends = ("asyncio",)

    def __init__(self, sink_class: type[SharedStoreSink]) -> None:
        self.sink_class = sink_class

    async def make_sinks(self, count: int) -> list[Sink]:
        store = SharedStore()
        return [self.sink_class(store) for _ in range(count)]


@pytest.mark.parametrize(
    ("sink_class", "scenario"),
    [
        (LastWinsSink, "test_racing_puts_store_exactly_one"),
        (LastWinsSink, "test_first_outcome_wins_and_every_waiter_sees_it"),
        (DeafSink, "test_outcome_stored_during_the_wait_wakes_it"),
    ],
)
def test_the_contract_fails_a_sink_that_breaks_it(
    sink_class: type[SharedStoreSink], scenario: str
) -> None:
    """Guard the guard: a sink that keeps the last outcome, or wakes no one, fails."""
    with pytest.raises((AssertionError, TimeoutError)):
        getattr(BrokenContract(sink_class), scenario)()
