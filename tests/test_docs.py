"""The pages of ``docs/``: their examples run as printed, and their links resolve."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import anyio
import pytest

from cobalt_async.models import parse_event
from cobalt_async.sinks import Sink
from cobalt_async.testing import SinkContract, make_task_created_event

pytestmark = pytest.mark.anyio

DOCS = Path(__file__).resolve().parent.parent / "docs"


def python_blocks(page: str) -> list[str]:
    text = (DOCS / page).read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, re.S)


def example_sink() -> type[Sink]:
    namespace: dict[str, Any] = {}
    exec(compile(python_blocks("writing-a-sink.md")[0], "writing-a-sink.md", "exec"), namespace)
    sink_class: type[Sink] = namespace["DictSink"]
    return sink_class


@pytest.mark.parametrize("page", sorted(path.name for path in DOCS.glob("*.md")))
def test_every_link_between_pages_resolves(page: str) -> None:
    """A page that points at another page or a module names one that exists."""
    text = (DOCS / page).read_text(encoding="utf-8")
    root = DOCS.parent
    for target in re.findall(r"\]\(([\w./-]+\.md)\)", text):
        assert (DOCS / target).is_file(), target
    for module in re.findall(r"`(cobalt_async/[\w/]+\.py)`", text):
        assert (root / module).is_file(), module


async def test_the_example_sink_resolves_a_wait_once() -> None:
    """The sink the guide writes serves a wait, an early arrival and a duplicate correctly."""
    event = parse_event(make_task_created_event(job_id="7"))
    async with example_sink()() as sink:
        assert "accepted" == await sink.publish(event)  # before anyone waits
        with anyio.fail_after(5):
            outcome = await sink.wait_for("7", timeout=None)
        assert "duplicate" == await sink.publish(event)

    assert ("7", "webhook") == (outcome.event.job_id, outcome.via)
    assert (1, 0) == (sink.stats().duplicates, sink.stats().pending)


class TestTheGuidesSinkKeepsTheContract(SinkContract):
    """The guide's ``DictSink``, one process, passes the contract the guide tells users to run."""

    async def make_sinks(self, count: int) -> list[Sink]:
        return [example_sink()()] * count
