"""
pytest fixtures for testing code that uses cobalt_async, without a network.

Installed with the package (a ``pytest11`` entry point). The fixtures are async and work
under either plugin that runs async tests: mark the tests ``@pytest.mark.anyio`` (anyio's
plugin, on asyncio or trio) or ``@pytest.mark.asyncio`` (pytest-asyncio, strict or auto)::

    @pytest.mark.anyio
    async def test_books_a_callback(cobalt_client, fake_cobalt):
        handle = await cobalt_client.tasks.create(patient_mrn="MRN-1", description="Call")
        assert (await handle).data.emr_task_id

Each public fixture picks, per test, the implementation of the plugin that runs the test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

import pytest

from .._client import CobaltClient
from .._webhooks import WebhookReceiver
from ..sinks import InMemorySink
from ._fake import FakeCobalt

try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - the tests run with it installed
    pytest_asyncio = None  # type: ignore[assignment]

__all__ = ["cobalt_client", "cobalt_sink", "fake_cobalt"]

T = TypeVar("T")

_NOT_ASYNC = (
    "{name} is an async fixture: use it from an `async def` test marked @pytest.mark.anyio "
    "(anyio's plugin, on asyncio or trio) or @pytest.mark.asyncio (pytest-asyncio, "
    "`pip install pytest-asyncio`)"
)


@pytest.fixture
def cobalt_sink() -> InMemorySink:
    """The sink the fake's webhooks are delivered to."""
    return InMemorySink()


@pytest.fixture
def fake_cobalt(request: pytest.FixtureRequest) -> FakeCobalt:
    """A running FakeCobalt delivering signed webhooks to ``cobalt_sink``; tune its knobs."""
    fake: FakeCobalt = request.getfixturevalue(_implementation(request, "fake_cobalt"))
    return fake


@pytest.fixture
def cobalt_client(request: pytest.FixtureRequest) -> CobaltClient:
    """A CobaltClient wired to ``fake_cobalt`` in-process, resolving handles from webhooks."""
    client: CobaltClient = request.getfixturevalue(_implementation(request, "cobalt_client"))
    return client


def _implementation(request: pytest.FixtureRequest, name: str) -> str:
    """The fixture that builds *name* under the plugin running this test."""
    if "anyio_backend" in request.fixturenames:
        return f"_{name}_on_anyio"
    if pytest_asyncio is not None and request.node.get_closest_marker("asyncio") is not None:
        return f"_{name}_on_asyncio"
    pytest.fail(_NOT_ASYNC.format(name=name), pytrace=False)


@asynccontextmanager
async def _running_fake(sink: InMemorySink) -> AsyncIterator[FakeCobalt]:
    fake = FakeCobalt(latency=0.01)
    fake.receiver = WebhookReceiver(sink, secrets=[fake.webhook_secret])
    async with fake:
        yield fake


def _client_of(fake: FakeCobalt, sink: InMemorySink) -> CobaltClient:
    return CobaltClient(
        base_url=fake.base_url,
        transport=fake.transport,
        sink=sink,
        client_id=fake.client_id,
        client_secret=fake.client_secret,
        access_token=fake.access_token,
    )


# anyio's plugin runs a fixture's setup and teardown in one task: the contexts are entered here.


@pytest.fixture
async def _fake_cobalt_on_anyio(cobalt_sink: InMemorySink) -> AsyncIterator[FakeCobalt]:
    async with _running_fake(cobalt_sink) as fake:
        yield fake


@pytest.fixture
async def _cobalt_client_on_anyio(
    fake_cobalt: FakeCobalt, cobalt_sink: InMemorySink
) -> AsyncIterator[CobaltClient]:
    async with _client_of(fake_cobalt, cobalt_sink) as client:
        yield client


# pytest-asyncio sets a fixture up and tears it down in two tasks, and a task group's cancel
# scope must be left in the task that entered it: each context gets a task of its own.


@asynccontextmanager
async def _in_own_task(context: AbstractAsyncContextManager[T]) -> AsyncIterator[T]:
    """Enter and exit *context* in one task, whichever tasks enter and exit this."""
    entered: asyncio.Future[T] = asyncio.get_running_loop().create_future()
    release = asyncio.Event()

    async def host() -> None:
        async with context as value:
            entered.set_result(value)
            await release.wait()

    task = asyncio.create_task(host())
    either: list[asyncio.Future[Any]] = [task, entered]
    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    if not entered.done():
        await task  # raises what stopped the context on its way in
    try:
        yield entered.result()
    finally:
        release.set()
        await task


if pytest_asyncio is not None:

    @pytest_asyncio.fixture
    async def _fake_cobalt_on_asyncio(cobalt_sink: InMemorySink) -> AsyncIterator[FakeCobalt]:
        async with _in_own_task(_running_fake(cobalt_sink)) as fake:
            yield fake

    @pytest_asyncio.fixture
    async def _cobalt_client_on_asyncio(
        fake_cobalt: FakeCobalt, cobalt_sink: InMemorySink
    ) -> AsyncIterator[CobaltClient]:
        async with _in_own_task(_client_of(fake_cobalt, cobalt_sink)) as client:
            yield client
