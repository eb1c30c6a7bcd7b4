"""``COBALT_LOG=debug|info``: the package's log lines on stderr, for quick debugging."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .models import Event

LOGGER = "cobalt_async"
ENV = "COBALT_LOG"
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO}


def configure_from_environment() -> None:
    """Send the package's records at ``COBALT_LOG``'s level to stderr, once; unset does nothing."""
    value = os.environ.get(ENV, "").strip().lower()
    if not value:
        return
    logger = logging.getLogger(LOGGER)
    level = _LEVELS.get(value)
    if level is None:
        logger.warning("%s=%r ignored: use debug or info", ENV, value)
        return
    if not any(isinstance(handler, _StderrHandler) for handler in logger.handlers):
        logger.addHandler(_StderrHandler())
    logger.setLevel(level)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The one handler ``COBALT_LOG`` adds; its ids are in ``extra`` fields as well."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))


def ids(
    job_id: str | None = None, *, event: Event | None = None, answer: str | None = None
) -> dict[str, str]:
    """A record's structured ``extra`` fields: ids and types only, never text from the EHR."""
    fields = {"cobalt_job_id": job_id, "cobalt_answer": answer}
    if event is not None:
        fields |= {
            "cobalt_job_id": getattr(event, "job_id", None) or job_id,
            "cobalt_event_type": event.type,
            "cobalt_event_id": event.id,
        }
    return {name: value for name, value in fields.items() if value is not None}
