from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Sequence

from .._errors import ConfigurationError
from .._outcome import Outcome, PendingJob
from ._base import Sink, StoreStats

logger = logging.getLogger("cobalt_async.sinks")

_MULTI_WORKER_HINT = (
    "%d Cobalt outcome(s) expired in this process without anyone awaiting them. If the app "
    "runs several workers or pods, the webhook lands on one process and the wait happens in "
    "another: use a shared sink, cobalt_async.sinks.RedisSink(url)."
)


class InMemorySink(Sink):
    """
    The sink for one process: outcomes and dedup ids in bounded, expiring dicts.

    The outcome buffer is also the early-arrival buffer: an event that arrives before
    anyone waits (even before the POST response) is kept until *outcome_ttl* expires. The
    outcome of a job submitted through this process's client is kept until a wait reads it,
    however many there are; *max_outcomes* bounds the others (jobs this process did not
    submit, and outcomes already read). It cannot serve several workers or pods: use
    ``RedisSink``.
    """

    stores_in_process = True

    def __init__(
        self,
        *,
        outcome_ttl: float = 3600.0,
        max_outcomes: int = 10_000,
        dedup_ttl: float = 86_400.0,
        max_dedup_ids: int = 100_000,
    ) -> None:
        if min(outcome_ttl, dedup_ttl) <= 0 or min(max_outcomes, max_dedup_ids) < 1:
            msg = "InMemorySink TTLs must be positive and its bounds at least 1"
            raise ConfigurationError(msg)
        super().__init__()
        self.outcome_ttl = outcome_ttl
        self.max_outcomes = max_outcomes
        self.dedup_ttl = dedup_ttl
        self.max_dedup_ids = max_dedup_ids
        # Each outcome with its expiry, in expiry order (one TTL): eviction pops the front.
        self._outcomes: OrderedDict[str, tuple[Outcome, float]] = OrderedDict()
        self._seen: OrderedDict[str, float] = OrderedDict()
        # Jobs submitted here whose outcome has not arrived, and outcomes of such jobs not
        # read yet: bounded by the TTL only, so a large batch loses none before its wait.
        self._tracked: OrderedDict[str, float] = OrderedDict()
        self._held: OrderedDict[str, tuple[Outcome, float]] = OrderedDict()
        self._evicted = 0
        # No entry expires before this: most calls to _purge end at this comparison.
        self._soonest = math.inf
        # Stored while nobody here awaited them, and not read since.
        self._unclaimed_ids: set[str] = set()
        self._unclaimed_count = 0
        self._warned = False

    def __repr__(self) -> str:
        buffered = len(self._outcomes) + len(self._held)
        return f"<InMemorySink buffered={buffered} pending={self._correlator.pending}>"

    async def add_pending(self, job: PendingJob) -> None:
        self._purge()
        early = self._outcomes.pop(job.job_id, None)
        if early is not None:
            # Its webhook came before the POST answer: hold it from now on. (It joins the
            # back with an expiry a request's time older: it may outlive its TTL by that.)
            self._unclaimed_ids.discard(job.job_id)
            self._held[job.job_id] = early
            return
        self._tracked[job.job_id] = expires = time.monotonic() + self.outcome_ttl
        self._tracked.move_to_end(job.job_id)
        self._soonest = min(self._soonest, expires)

    async def get_outcomes(self, job_ids: Sequence[str]) -> dict[str, Outcome]:
        self._purge()
        found = {}
        for job_id in job_ids:
            stored = self._outcomes.get(job_id) or self._claim(job_id)
            if stored is not None:
                self._unclaimed_ids.discard(job_id)
                found[job_id] = stored[0]
        return found

    def _claim(self, job_id: str) -> tuple[Outcome, float] | None:
        """A held outcome, read now: it joins the bounded buffer, for later reads."""
        held = self._held.pop(job_id, None)
        if held is None:
            return None
        self._outcomes[job_id] = stored = (held[0], time.monotonic() + self.outcome_ttl)
        self._purge()
        return stored

    async def put_if_absent(self, job_id: str, outcome: Outcome) -> Outcome | None:
        # Once per webhook: the expiry check is inlined, so _purge runs only when something
        # can have expired or the bound is passed.
        outcomes = self._outcomes
        now = time.monotonic()
        if now >= self._soonest:
            self._purge()
        stored = outcomes.get(job_id) or self._held.get(job_id)
        if stored is not None:
            return stored[0]
        expires = now + self.outcome_ttl
        if expires < self._soonest:
            self._soonest = expires
        awaited = self.is_awaited(job_id)
        if self._tracked.pop(job_id, None) is not None and not awaited:
            self._held[job_id] = (outcome, expires)
            return None
        outcomes[job_id] = (outcome, expires)
        if not awaited:
            self._unclaimed_ids.add(job_id)
        if len(outcomes) > self.max_outcomes:
            self._purge()
        return None

    async def first_seen(self, key: str) -> bool:
        now = self._purge()
        if key in self._seen:
            return False
        self._seen[key] = expires = now + self.dedup_ttl
        if expires < self._soonest:
            self._soonest = expires
        if len(self._seen) > self.max_dedup_ids:
            self._purge()
        return True

    def store_stats(self) -> StoreStats:
        self._purge()
        buffered = len(self._outcomes) + len(self._held)
        return StoreStats(buffered, self._evicted, unclaimed=self._unclaimed_count)

    def _purge(self) -> float:
        now = time.monotonic()
        outcomes, seen = self._outcomes, self._seen
        if now < self._soonest and (
            len(outcomes) <= self.max_outcomes and len(seen) <= self.max_dedup_ids
        ):
            return now
        # Both dicts are in expiry order (one TTL each), so expiry pops from the front.
        while outcomes and (
            len(outcomes) > self.max_outcomes or next(iter(outcomes.values()))[1] <= now
        ):
            job_id, _ = outcomes.popitem(last=False)
            self._evicted += 1
            if job_id in self._unclaimed_ids:
                self._unclaimed_ids.discard(job_id)
                self._note_unclaimed()
        while seen and (len(seen) > self.max_dedup_ids or next(iter(seen.values())) <= now):
            seen.popitem(last=False)
            self._evicted += 1
        self._expire_tracked(now)
        self._soonest = min(
            next(iter(outcomes.values()))[1] if outcomes else math.inf,
            next(iter(seen.values())) if seen else math.inf,
            next(iter(self._tracked.values())) if self._tracked else math.inf,
            next(iter(self._held.values()))[1] if self._held else math.inf,
        )
        return now

    def _expire_tracked(self, now: float) -> None:
        # One TTL each, so both are in expiry order: expiry pops from the front.
        tracked, held = self._tracked, self._held
        while tracked and next(iter(tracked.values())) <= now:
            tracked.popitem(last=False)
        while held and next(iter(held.values()))[1] <= now:
            held.popitem(last=False)
            self._evicted += 1
            self._note_unclaimed()

    def _note_unclaimed(self) -> None:
        self._unclaimed_count += 1
        if not self._warned:
            self._warned = True
            logger.warning(_MULTI_WORKER_HINT, self._unclaimed_count)
