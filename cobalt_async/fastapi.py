"""
FastAPI wiring: one shared client per app, a webhook route, and a dependency.

```python
app = FastAPI(lifespan=cobalt_lifespan(sink=InMemorySink()))
app.include_router(webhook_router("/webhooks/cobalt"))


@app.post("/tasks")
async def create_task(client: CobaltDep) -> dict[str, str]: ...
```

Needs the ``fastapi`` extra: ``pip install 'cobalt-async[fastapi]'``.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, TypedDict, Unpack

import httpx

try:
    from fastapi import APIRouter, Depends, FastAPI, Request
    from starlette.routing import Route
except ImportError as exc:
    _msg = "cobalt_async.fastapi needs FastAPI: pip install 'cobalt-async[fastapi]'"
    raise ImportError(_msg) from exc

from ._client import CobaltClient
from ._config import NOT_GIVEN, NotGiven, PollPolicy
from ._errors import ConfigurationError
from ._secrets_file import FILE_ENV
from ._types import Receive, Scope, Send
from ._webhooks import DEFAULT_MAX_BODY_BYTES, EventHook, WebhookReceiver
from .asgi import WebhookApp
from .sinks import InMemorySink, Sink, sink_from_url

__all__ = [
    "ClientOptions",
    "CobaltDep",
    "CobaltLifespan",
    "app_client",
    "cobalt_lifespan",
    "get_client",
    "lifespan_overrides",
    "webhook_router",
]

logger = logging.getLogger("cobalt_async.fastapi")

SECRET_ENV = "COBALT_WEBHOOK_SECRET"
_STATE_KEY = "cobalt_async"
_OVERRIDES_KEY = "cobalt_async_overrides"
_HOW_TO_SINK = (
    "pass sink=InMemorySink() (one worker), database_url='sqlite:///cobalt.db' (several workers "
    "on one host) or redis_url='redis://...' (several hosts or pods)"
)
_NO_SECRET = f"no webhook secret: set {SECRET_ENV} or pass webhook_secrets=[...]"
AppLifespan = Callable[[FastAPI], AbstractAsyncContextManager[Any]]


class ClientOptions(TypedDict, total=False):
    """Keyword arguments of :class:`~cobalt_async.CobaltClient` that the lifespan passes on."""

    client_id: str
    client_secret: str
    access_token: str
    base_url: str
    transport: httpx.AsyncBaseTransport
    http_client: httpx.AsyncClient
    timeout: httpx.Timeout | float
    max_retries: int
    poll: PollPolicy
    job_timeout: float | None


@dataclass(frozen=True, slots=True)
class _Runtime:
    """What a running lifespan keeps on ``app.state``."""

    client: CobaltClient
    receiver: WebhookReceiver | None
    missing: str | None
    """Why there is no receiver: what to set."""


class CobaltLifespan:
    """
    A FastAPI lifespan that opens one :class:`~cobalt_async.CobaltClient` and its sink.

    Built by :func:`cobalt_lifespan`; pass it as ``FastAPI(lifespan=...)``. Configuration
    is read when the app starts, so a missing credential or secret fails the startup.
    """

    def __init__(
        self,
        *,
        webhook_secrets: Sequence[str] | None,
        sink: Sink | None | NotGiven,
        redis_url: str | None,
        database_url: str | None,
        on_event: EventHook | None,
        max_body_bytes: int,
        lifespan: AppLifespan | None,
        client_options: ClientOptions,
    ) -> None:
        choices = {
            "sink=": not isinstance(sink, NotGiven),
            "redis_url=": bool(redis_url),
            "database_url=": bool(database_url),
        }
        given = [name for name, chosen in choices.items() if chosen]
        if len(given) > 1:
            msg = f"pass one of sink=, redis_url= and database_url=, not {' and '.join(given)}"
            raise ConfigurationError(msg)
        if isinstance(webhook_secrets, str):
            msg = "webhook_secrets is a list: webhook_secrets=[secret]"
            raise ConfigurationError(msg)
        self.webhook_secrets = webhook_secrets
        self.sink = sink
        self.sink_url = redis_url or database_url
        self.on_event = on_event
        self.max_body_bytes = max_body_bytes
        self.lifespan = lifespan
        self.client_options = client_options

    def __call__(self, app: FastAPI) -> AbstractAsyncContextManager[Any]:
        return self._run(app)

    @asynccontextmanager
    async def _run(self, app: FastAPI) -> AsyncIterator[Any]:
        receiver, missing, client = self._overridden(app)._start()
        async with client:
            setattr(app.state, _STATE_KEY, _Runtime(client, receiver, missing))
            try:
                if self.lifespan is None:
                    yield None
                else:
                    async with self.lifespan(app) as state:
                        yield state
            finally:
                delattr(app.state, _STATE_KEY)

    def _overridden(self, app: FastAPI) -> CobaltLifespan:
        """This lifespan with what :func:`lifespan_overrides` set on *app*, if anything."""
        overrides: _Overrides | None = getattr(app.state, _OVERRIDES_KEY, None)
        if overrides is None:
            return self
        effective = copy.copy(self)
        base = dict(self.client_options)
        if "transport" in overrides.client_options:
            base.pop("http_client", None)  # the override's transport replaces the app's client
        effective.client_options = {**base, **overrides.client_options}  # type: ignore[typeddict-item]
        if overrides.webhook_secrets is not None:
            effective.webhook_secrets = overrides.webhook_secrets
        if not isinstance(overrides.sink, NotGiven):
            effective.sink, effective.sink_url = overrides.sink, None
        return effective

    def _start(self) -> tuple[WebhookReceiver | None, str | None, CobaltClient]:
        """The receiver, why there is none, and the client; every setting missing at once."""
        problems: list[str] = []
        receiver, missing, client = None, None, None
        try:
            sink = self._sink()
            receiver, missing = self._receiver(sink)
        except ConfigurationError as exc:
            sink = None
            problems.append(str(exc))
        try:
            client = CobaltClient(sink=sink, **self.client_options)
        except ConfigurationError as exc:
            problems.append(str(exc))
        if client is None or problems:
            # One message for everything, so that a deployment is fixed in one restart.
            msg = "cobalt_lifespan cannot start: " + "; and ".join(problems)
            raise ConfigurationError(msg)
        return receiver, missing, client

    def _secrets(self) -> Sequence[str]:
        if self.webhook_secrets is not None:
            return self.webhook_secrets
        # A comma-separated value carries both secrets during a rotation.
        raw = os.environ.get(SECRET_ENV, "")
        return [secret.strip() for secret in raw.split(",") if secret.strip()]

    def _secrets_file(self) -> str:
        """``COBALT_WEBHOOK_SECRETS_FILE``, unless secrets were given in code."""
        if self.webhook_secrets is not None:
            return ""
        return os.environ.get(FILE_ENV, "").strip()

    def _sink(self) -> Sink | None:
        if self.sink_url:
            return sink_from_url(self.sink_url)
        if not isinstance(self.sink, NotGiven):
            return self.sink
        # An in-process sink is fed only by this app's webhook route, which needs the secret.
        webhooks = self.webhook_secrets is not None or self._secrets() or self._secrets_file()
        return InMemorySink() if webhooks else None

    def _receiver(self, sink: Sink | None) -> tuple[WebhookReceiver | None, str | None]:
        """The receiver, or why there is none; raises for a setup that cannot work."""
        if sink is None:
            if self.webhook_secrets is not None:
                msg = f"webhook_secrets given but sink=None stores no webhooks: {_HOW_TO_SINK}"
                raise ConfigurationError(msg)
            if isinstance(self.sink, NotGiven):
                return None, _NO_SECRET  # the sink defaulted to None for want of a secret
            return None, f"sink=None polls Cobalt instead: {_HOW_TO_SINK}"
        secrets_file = self._secrets_file()
        if secrets_file:
            _warn_if_several_workers(sink)
            receiver = WebhookReceiver(
                sink,
                secrets_file=secrets_file,
                max_body_bytes=self.max_body_bytes,
                on_event=self.on_event,
            )
            return receiver, None
        secrets = self._secrets()
        if not secrets and self.webhook_secrets is None:
            if isinstance(sink, InMemorySink):
                msg = f"{_NO_SECRET} (an InMemorySink is fed by webhooks only), or sink=None"
                raise ConfigurationError(msg)
            return None, _NO_SECRET
        _warn_if_several_workers(sink)
        receiver = WebhookReceiver(
            sink, secrets=secrets, max_body_bytes=self.max_body_bytes, on_event=self.on_event
        )
        return receiver, None


def cobalt_lifespan(
    *,
    webhook_secrets: Sequence[str] | None = None,
    sink: Sink | None | NotGiven = NOT_GIVEN,
    redis_url: str | None = None,
    database_url: str | None = None,
    on_event: EventHook | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    lifespan: AppLifespan | None = None,
    **client_options: Unpack[ClientOptions],
) -> CobaltLifespan:
    """
    A lifespan sharing one client, sink and webhook receiver with every request of the app.

    Args:
        webhook_secrets: Secrets webhooks are verified with (two during a rotation);
            default ``COBALT_WEBHOOK_SECRET``, comma-separated for several, or the file
            ``COBALT_WEBHOOK_SECRETS_FILE`` names, re-read when it changes (how a fleet
            rolls a new secret without a restart: docs/webhooks.md).
        sink: Where outcomes meet waiters. ``InMemorySink()`` for one worker; ``None``
            receives no webhooks and resolves jobs by polling Cobalt. By default a
            ``RedisSink`` if *redis_url* is given, the sink *database_url* names if that is,
            else an ``InMemorySink`` when a webhook secret is configured, else ``None``.
        redis_url: Build a ``RedisSink(redis_url)``, shared by every worker and pod.
        database_url: Build the sink this URL names (``sink_from_url``): a ``PostgresSink``
            for ``postgresql://...``, a ``SQLiteSink`` for ``sqlite:///path`` (the workers
            of one host).
        on_event: Hook run for every new webhook event, after Cobalt was answered.
        max_body_bytes: Bigger webhook bodies are refused with 413.
        lifespan: Your own lifespan, run inside this one (the client is open in it).
        client_options: Passed to :class:`~cobalt_async.CobaltClient`; credentials and
            base URL default to the ``COBALT_*`` environment variables.

    Raises:
        ConfigurationError: More than one of *sink*, *redis_url* and *database_url* given.
            Everything read from the environment is checked when the app starts, and fails
            the startup.
    """
    return CobaltLifespan(
        webhook_secrets=webhook_secrets,
        sink=sink,
        redis_url=redis_url,
        database_url=database_url,
        on_event=on_event,
        max_body_bytes=max_body_bytes,
        lifespan=lifespan,
        client_options=client_options,
    )


@dataclass(frozen=True, slots=True)
class _Overrides:
    webhook_secrets: Sequence[str] | None
    sink: Sink | None | NotGiven
    client_options: ClientOptions


@contextmanager
def lifespan_overrides(
    app: FastAPI,
    *,
    webhook_secrets: Sequence[str] | None = None,
    sink: Sink | None | NotGiven = NOT_GIVEN,
    **client_options: Unpack[ClientOptions],
) -> Iterator[None]:
    """
    Start *app*'s :func:`cobalt_lifespan` with these settings instead, while inside.

    For tests, as ``app.dependency_overrides`` is: the settings win over the lifespan's own
    arguments and the environment; a *sink* replaces the app's sink or ``redis_url``.
    ``cobalt_async.testing.app_with_fake`` is built on it.
    """
    setattr(app.state, _OVERRIDES_KEY, _Overrides(webhook_secrets, sink, client_options))
    try:
        yield
    finally:
        delattr(app.state, _OVERRIDES_KEY)


def _warn_if_several_workers(sink: Sink) -> None:
    # uvicorn and gunicorn read WEB_CONCURRENCY as their worker count.
    workers = os.environ.get("WEB_CONCURRENCY", "1")
    if isinstance(sink, InMemorySink) and workers.isdigit() and int(workers) > 1:
        logger.warning(
            "WEB_CONCURRENCY=%s but the sink is an InMemorySink: a webhook landing on another "
            "worker never reaches this one's waiters; use redis_url= or database_url=",
            workers,
        )


def _runtime(app: FastAPI, user: str) -> _Runtime:
    runtime = getattr(app.state, _STATE_KEY, None)
    if not isinstance(runtime, _Runtime):
        msg = (
            f"{user} needs the Cobalt lifespan: FastAPI(lifespan=cobalt_lifespan(...)), "
            "or cobalt_lifespan(..., lifespan=your_lifespan) to keep your own"
        )
        raise ConfigurationError(msg)
    return runtime


def _receiver(app: FastAPI) -> WebhookReceiver:
    runtime = _runtime(app, "webhook_router()")
    if runtime.receiver is None:
        msg = f"webhook_router() cannot receive webhooks: {runtime.missing}"
        raise ConfigurationError(msg)
    return runtime.receiver


def get_client(request: Request) -> CobaltClient:
    """The app's shared client: the dependency behind :data:`CobaltDep`."""
    return _runtime(request.app, "CobaltDep (get_client)").client


def app_client(app: FastAPI) -> CobaltClient:
    """The app's shared client outside a request: in your own lifespan, or a background job."""
    return _runtime(app, "app_client()").client


CobaltDep = Annotated[CobaltClient, Depends(get_client)]
"""Annotate a route parameter with it to receive the app's shared client."""


@asynccontextmanager
async def _check_receiver(app: FastAPI) -> AsyncIterator[None]:
    # FastAPI nests an included router's lifespan inside the app's: the Cobalt one is running.
    _receiver(app)
    yield


def webhook_router(path: str = "/webhooks/cobalt", *, include_in_schema: bool = False) -> APIRouter:
    """
    A router with the ``POST`` route Cobalt delivers webhooks to.

    The route verifies the raw bytes of the request, answers with the receiver's status
    code, and runs the *on_event* hook after the answer. Including it in an app without a
    working :func:`cobalt_lifespan` fails the startup with what to set.
    """
    router = APIRouter(lifespan=_check_receiver)
    # An ASGI endpoint: Starlette hands it the raw request, and WebhookApp does the rest.
    route = Route(path, _webhook_endpoint, methods=["POST"], include_in_schema=include_in_schema)
    router.routes.append(route)
    return router


class _WebhookEndpoint:
    """The route's ASGI app: the app's receiver behind a :class:`~cobalt_async.asgi.WebhookApp`."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await WebhookApp(_receiver(scope["app"]))(scope, receive, send)


_webhook_endpoint = _WebhookEndpoint()
