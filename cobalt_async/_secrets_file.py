"""
The webhook secrets file: one shared source every receiver of a fleet re-reads.

One secret a line; ``retire-at=<ISO 8601>`` after a secret ends its grace period; a line
``expect-new-secret`` marks a rotation in progress (unknown signatures then get 503, which
Cobalt retries, rather than 401). ``#`` starts a comment. Written atomically (a temporary
file renamed over it), so a receiver never reads half of it.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ._errors import ConfigurationError

FILE_ENV = "COBALT_WEBHOOK_SECRETS_FILE"
EXPECTING = "expect-new-secret"
_RETIRE = "retire-at="
# How often a receiver looks at the file when every signature verifies: a rotation is
# also noticed at the first delivery no loaded secret verifies, so this only bounds how
# late a retirement or an "expect-new-secret" line takes effect.
CHECK_INTERVAL = 1.0


@dataclass(frozen=True, slots=True)
class SecretEntry:
    secret: str
    retire_at: datetime | None = None

    def __repr__(self) -> str:
        return f"SecretEntry(secret='**********', retire_at={self.retire_at!r})"


@dataclass(frozen=True, slots=True)
class SecretsContent:
    entries: tuple[SecretEntry, ...]
    expecting: bool = False

    def rotated(self, new_secret: str, *, grace: float) -> SecretsContent:
        """*new_secret* added, every other secret retiring within *grace* seconds at most."""
        deadline = datetime.fromtimestamp(time.time() + grace, UTC)
        kept = tuple(
            replace(entry, retire_at=min(entry.retire_at or deadline, deadline))
            for entry in self.entries
            if entry.secret != new_secret
        )
        return SecretsContent((*kept, SecretEntry(new_secret)))


def grace_seconds(value: float | timedelta) -> float:
    """A grace period or delay as seconds; refused unless finite and >= 0."""
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not math.isfinite(seconds)
        or seconds < 0
    ):
        msg = f"a grace period is seconds >= 0 or a timedelta, got {value!r}"
        raise ConfigurationError(msg)
    return float(seconds)


def parse(text: str) -> SecretsContent:
    """The file's content; the error names the line, never its secret."""
    entries: list[SecretEntry] = []
    expecting = False
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line == EXPECTING:
            expecting = True
            continue
        secret, *options = line.split()
        retire_at = None
        for option in options:
            if not option.startswith(_RETIRE):
                msg = (
                    f"webhook secrets file, line {number}: unknown option (use {_RETIRE}<ISO 8601>)"
                )
                raise ConfigurationError(msg)
            retire_at = _instant(option.removeprefix(_RETIRE), number)
        entries.append(SecretEntry(secret, retire_at))
    return SecretsContent(tuple(entries), expecting)


def _instant(text: str, number: int) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        msg = (
            f"webhook secrets file, line {number}: retire-at needs an ISO 8601 time with its "
            "offset, such as 2026-12-07T21:00:00Z"
        )
        raise ConfigurationError(msg)
    return moment


def render(content: SecretsContent) -> str:
    lines = ["# Cobalt webhook secrets: one a line (cobalt_async docs/webhooks.md)"]
    if content.expecting:
        lines.append(EXPECTING)
    for entry in content.entries:
        retire = ""
        if entry.retire_at is not None:
            retire = (
                f" {_RETIRE}{entry.retire_at.astimezone(UTC).isoformat().replace('+00:00', 'Z')}"
            )
        lines.append(entry.secret + retire)
    return "\n".join(lines) + "\n"


def write(path: str | os.PathLike[str], content: SecretsContent) -> None:
    """Replace the file at *path* with *content* at once, readable by its owner only."""
    target = Path(path)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(render(content))
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class SecretsFile:
    """A secrets file and whether it changed since it was last read."""

    def __init__(
        self, path: str | os.PathLike[str], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self._seen: tuple[int, int, int] | None = None
        self._next_check = -float("inf")

    def read(self) -> SecretsContent:
        try:
            stat = self.path.stat()
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            msg = f"cannot read the webhook secrets file ({FILE_ENV}): {exc.strerror}"
            raise ConfigurationError(msg) from None
        self._seen = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        return parse(text)

    def changed(self, *, now: bool = False) -> bool:
        """Whether the file changed; looked at once per :data:`CHECK_INTERVAL` unless *now*."""
        moment = self._clock()
        if not now and moment < self._next_check:
            return False
        self._next_check = moment + CHECK_INTERVAL
        try:
            stat = self.path.stat()
        except OSError:
            return False  # being replaced, or gone: keep what was loaded
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino) != self._seen
