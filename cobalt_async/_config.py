"""Immutable configuration values and their named defaults."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ._errors import ConfigurationError

DEFAULT_BASE_URL = "https://api.usecobalt.com/v1"
DEFAULT_JOB_TIMEOUT = 180.0
"""Cobalt recommends waiting 2-3 minutes for a task or note before giving up."""


class NotGiven(enum.Enum):
    """Sentinel for "argument not given", distinct from ``None`` (which means "no limit")."""

    NOT_GIVEN = enum.auto()

    def __repr__(self) -> str:
        return "NOT_GIVEN"


NOT_GIVEN = NotGiven.NOT_GIVEN


@dataclass(frozen=True, slots=True)
class PollPolicy:
    """
    When a handle asks Cobalt for its job's outcome with ``GET /v1/webhook-events``.

    Without a sink polling is the only way to learn an outcome: the first poll comes after
    *interval* seconds and the pause grows by *backoff* up to *max_interval*. With a sink the
    webhook is expected instead; a poll is only a backstop after *silence* seconds without
    one (growing up to *max_silence*), and once more before a wait times out.
    """

    interval: float = 1.0
    max_interval: float = 10.0
    backoff: float = 1.5
    silence: float = 60.0
    max_silence: float = 120.0

    def __post_init__(self) -> None:
        # Negated comparisons, so that NaN (which compares false) is refused too.
        if not (self.interval > 0 and self.silence > 0):
            msg = "PollPolicy intervals must be positive; Cobalt's own helper polls every 1 s"
            raise ConfigurationError(msg)
        if not self.backoff >= 1:
            msg = "PollPolicy.backoff must be at least 1 (1 keeps a fixed interval)"
            raise ConfigurationError(msg)

    def first_delay(self, *, webhooks_expected: bool) -> float:
        return self.silence if webhooks_expected else self.interval

    def next_delay(self, delay: float, *, webhooks_expected: bool) -> float:
        cap = self.max_silence if webhooks_expected else self.max_interval
        return min(delay * self.backoff, max(cap, delay))


DEFAULT_POLL_POLICY = PollPolicy()
