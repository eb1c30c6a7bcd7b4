"""
pytest fixtures for testing code that uses cobalt_async, without a network.

Installed with the package (a ``pytest11`` entry point); the fixtures are async, so mark the
tests ``@pytest.mark.anyio`` (anyio's pytest plugin runs them)::

    @pytest.mark.anyio
    async def test_books_a_callback(cobalt_client, fake_cobalt):
        handle = await cobalt_client.tasks.create(patient_mrn="MRN-1", description="Call")
        assert (await handle).data.emr_task_id
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from .._client import CobaltClient
from .._webhooks import WebhookReceiver
from ..sinks import InMemorySink
from ._fake import FakeCobalt

__all__ = ["cobalt_client", "cobalt_sink", "fake_cobalt"]


@pytest.fixture
def cobalt_sink() -> InMemorySink:
    """The sink the fake's webhooks are delivered to."""
    return InMemorySink()


@pytest.fixture
async def fake_cobalt(cobalt_sink: InMemorySink) -> AsyncIterator[FakeCobalt]:
    """A running FakeCobalt delivering signed webhooks to ``cobalt_sink``; tune its knobs."""
    fake = FakeCobalt(latency=0.01)
    fake.receiver = WebhookReceiver(cobalt_sink, secrets=[fake.webhook_secret])
    async with fake:
        yield fake


@pytest.fixture
async def cobalt_client(
    fake_cobalt: FakeCobalt, cobalt_sink: InMemorySink
) -> AsyncIterator[CobaltClient]:
    """A CobaltClient wired to ``fake_cobalt`` in-process, resolving handles from webhooks."""
    async with CobaltClient(
        base_url=fake_cobalt.base_url,
        transport=fake_cobalt.transport,
        sink=cobalt_sink,
        client_id=fake_cobalt.client_id,
        client_secret=fake_cobalt.client_secret,
        access_token=fake_cobalt.access_token,
    ) as client:
        yield client
