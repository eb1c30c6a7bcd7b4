"""A FastAPI app under test whose Cobalt is a FakeCobalt, its webhooks coming back to the app."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import httpx

from .._errors import ConfigurationError
from ..sinks import InMemorySink, Sink
from ._fake import FakeCobalt

if TYPE_CHECKING:
    from fastapi import FastAPI

    from .._types import Receive, Scope, Send

APP_URL = "http://app.test"


@asynccontextmanager
async def app_with_fake(
    app: FastAPI,
    fake: FakeCobalt,
    *,
    webhook_path: str = "/webhooks/cobalt",
    sink: Sink | None = None,
) -> AsyncIterator[httpx.AsyncClient]:
    """
    Run *app* (built with ``cobalt_lifespan``) against the running *fake*, in-process.

    The app's client talks to the fake with the fake's credentials; the fake signs its
    webhooks with a secret the app accepts and posts them to the app's own *webhook_path*
    route, so a handle resolves exactly as in production. The app gets *sink*, by default a
    fresh ``InMemorySink``: nothing an earlier test stored leaks into this one. Yields an
    ``httpx.AsyncClient`` for the app; the app's lifespan runs for as long as the block.

    Raises:
        ConfigurationError: *app* has no route at *webhook_path*.
    """
    from ..fastapi import lifespan_overrides  # FastAPI is an extra: imported when used

    if not _routes_post(app, webhook_path):
        msg = (
            f"the app has no route at {webhook_path!r}: pass webhook_path= the path given to "
            "webhook_router(), and include that router in the app"
        )
        raise ConfigurationError(msg)
    overrides = lifespan_overrides(
        app,
        webhook_secrets=[fake.webhook_secret],
        sink=sink if sink is not None else InMemorySink(),
        base_url=fake.base_url,
        transport=fake.transport,
        client_id=fake.client_id,
        client_secret=fake.client_secret,
        access_token=fake.access_token,
    )
    with overrides:
        async with app.router.lifespan_context(app) as state:
            transport = httpx.ASGITransport(app=_WithState(app, state))
            async with _delivering_to(fake, f"{APP_URL}{webhook_path}", transport):
                async with httpx.AsyncClient(transport=transport, base_url=APP_URL) as http:
                    yield http


def _routes_post(app: FastAPI, path: str) -> bool:
    """Whether *app* has a route for ``POST path``, found as Starlette itself matches one."""
    from starlette.routing import Match

    scope = {"type": "http", "method": "POST", "path": path, "root_path": "", "headers": []}
    return any(route.matches(scope)[0] is Match.FULL for route in app.router.routes)


@asynccontextmanager
async def _delivering_to(
    fake: FakeCobalt, url: str, transport: httpx.AsyncBaseTransport
) -> AsyncIterator[None]:
    """The fake posts its webhooks to *url* through *transport* while inside."""
    saved = fake.receiver, fake.webhook_url, fake.webhook_transport
    fake.receiver, fake.webhook_url, fake.webhook_transport = None, url, transport
    try:
        yield
    finally:
        fake.receiver, fake.webhook_url, fake.webhook_transport = saved


class _WithState:
    """The app, with its lifespan's state in every request, as an ASGI server passes it."""

    def __init__(self, app: FastAPI, state: Mapping[str, Any] | None) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.state:
            scope = {**scope, "state": dict(self.state)}  # a shallow copy per request
        await self.app(scope, receive, send)
