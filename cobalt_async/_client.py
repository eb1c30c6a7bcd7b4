from __future__ import annotations

import copy
import os
from types import TracebackType
from typing import Self

import httpx

from ._config import (
    DEFAULT_BASE_URL,
    DEFAULT_JOB_TIMEOUT,
    DEFAULT_POLL_POLICY,
    NOT_GIVEN,
    NotGiven,
    PollPolicy,
)
from ._errors import ClientClosedError, ConfigurationError
from ._http import Credentials, Requester, RetryPolicy, as_timeout
from ._jobs import Jobs, WebhookEvents
from ._registrations import Webhooks
from ._resources import Patients, Tasks
from .sinks import InMemorySink, Sink

DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=50)

_ENV = {
    "client_id": "COBALT_CLIENT_ID",
    "client_secret": "COBALT_CLIENT_SECRET",
    "access_token": "COBALT_ACCESS_TOKEN",
}


class CobaltClient:
    """
    The entry point: submit tasks and notes to Cobalt, fetch patients and their tasks, and
    await the outcomes.

    Credentials not passed are read from ``COBALT_CLIENT_ID``, ``COBALT_CLIENT_SECRET`` and
    ``COBALT_ACCESS_TOKEN``; the base URL from ``COBALT_BASE_URL``. With a *sink* (the one
    your ``WebhookReceiver`` publishes to) handles resolve from webhooks and poll Cobalt only
    as a backstop; without one they resolve by polling ``GET /v1/webhook-events``.

    Use it as ``async with CobaltClient(...) as client:`` or call :meth:`aclose`.
    """

    def __init__(
        self,
        *,
        client_id: str | None = None,
        client_secret: str | None = None,
        access_token: str | None = None,
        base_url: str | None = None,
        sink: Sink | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        http_client: httpx.AsyncClient | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        max_retries: int = 2,
        poll: PollPolicy = DEFAULT_POLL_POLICY,
        job_timeout: float | None = DEFAULT_JOB_TIMEOUT,
    ) -> None:
        """
        Args:
            sink: Where webhook outcomes arrive; ``None`` resolves handles by polling.
            transport: An httpx transport, e.g. ``FakeCobalt().transport`` in tests.
            http_client: An httpx client to use; it stays yours to close.
            timeout: Per-request timeout of the client this builds.
            max_retries: Retries of requests that provably failed before reaching Cobalt
                (and of GETs). A create is never retried once it may have reached Cobalt.
            poll: When handles poll ``GET /v1/webhook-events``.
            job_timeout: Default seconds ``await handle`` waits; ``None`` waits forever.
        """
        if transport is not None and http_client is not None:
            msg = "pass either transport= or http_client=, not both"
            raise ConfigurationError(msg)
        credentials = _credentials(client_id, client_secret, access_token)
        self.base_url = _base_url(base_url or os.environ.get("COBALT_BASE_URL") or DEFAULT_BASE_URL)
        self._owns_http = http_client is None
        retry = RetryPolicy(max_retries=max_retries)
        http = http_client or httpx.AsyncClient(
            transport=transport, timeout=as_timeout(timeout), limits=DEFAULT_LIMITS
        )
        requester = Requester(http, base_url=self.base_url, credentials=credentials, retry=retry)
        self.sink = sink if sink is not None else InMemorySink()
        webhook_events = WebhookEvents(requester)
        jobs = Jobs(
            requester,
            webhook_events,
            sink=self.sink,
            webhooks_expected=sink is not None,
            poll=poll,
            job_timeout=job_timeout,
        )
        self._bind(requester, jobs, webhook_events)
        if self.sink.authority is None:
            self.sink.authority = self.jobs.first_terminal_event
        self._derived = False
        self._sink_entered = False

    def _bind(self, requester: Requester, jobs: Jobs, webhook_events: WebhookEvents) -> None:
        """Build every resource on *requester*: the one place a new resource is added."""
        self._requester = requester
        self.webhook_events = webhook_events
        self.jobs = jobs
        self.tasks = Tasks(requester, jobs)
        self.patients = Patients(requester, jobs)
        self.webhooks = Webhooks(requester)

    def with_options(
        self,
        *,
        timeout: httpx.Timeout | float | None | NotGiven = NOT_GIVEN,
        max_retries: int | NotGiven = NOT_GIVEN,
    ) -> Self:
        """
        This client with another request timeout or retry budget, for a call or a block.

        ``await client.with_options(timeout=5).tasks.create(...)``. The copy shares the
        connection pool, the sink and every job with this client, and closes when it closes;
        closing the copy closes nothing else. *timeout* applies to each request (``None``:
        none); *max_retries* as in the constructor.
        """
        requester = self._requester.with_options(timeout=timeout, max_retries=max_retries)
        webhook_events = WebhookEvents(requester)
        derived = copy.copy(self)
        derived._bind(requester, self.jobs.using(requester, webhook_events), webhook_events)
        derived._owns_http, derived._derived, derived._sink_entered = False, True, False
        return derived

    def __repr__(self) -> str:
        state = "closed" if self._requester.closed else "open"
        return f"<CobaltClient base_url={self.base_url!r} {state}>"

    async def __aenter__(self) -> Self:
        if self._requester.closed:
            msg = "a closed CobaltClient cannot be reopened; create a new one"
            raise ClientClosedError(msg)
        # A sink with a listener (RedisSink) runs it for as long as the client is open; a
        # client from with_options() leaves that to the client it came from.
        if not self._derived:
            await self.sink.__aenter__()
            self._sink_entered = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.aclose()
        finally:
            if self._sink_entered:
                self._sink_entered = False
                await self.sink.__aexit__(exc_type, exc, tb)

    async def aclose(self) -> None:
        """Close the HTTP client this client built. Handles keep their known outcomes."""
        if self._requester.closed:
            return
        self._requester.close()
        if self._owns_http:
            await self._requester.http.aclose()


def _credentials(
    client_id: str | None, client_secret: str | None, access_token: str | None
) -> Credentials:
    given = {"client_id": client_id, "client_secret": client_secret, "access_token": access_token}
    # Surrounding whitespace is a file's trailing newline, not part of the secret.
    values = {
        name: (value or os.environ.get(_ENV[name], "")).strip() for name, value in given.items()
    }
    missing = [name for name, value in values.items() if not value]
    if missing:
        hints = ", ".join(f"{name}= (or {_ENV[name]})" for name in missing)
        msg = f"missing Cobalt credentials: pass {hints}"
        raise ConfigurationError(msg)
    # Checked here, because httpx and h11 would refuse them later with the value in the message.
    unsendable = [
        name for name, value in values.items() if not (value.isascii() and value.isprintable())
    ]
    if unsendable:
        hints = ", ".join(f"{name}= (or {_ENV[name]})" for name in unsendable)
        msg = (
            f"Cobalt credentials with control or non-ASCII characters cannot be sent as HTTP "
            f"headers: check {hints} for a copy-paste artefact"
        )
        raise ConfigurationError(msg)
    return Credentials(**values)


def _base_url(value: str) -> str:
    """*value* without its trailing slash, once it is a URL a request can be sent to."""
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        msg = (
            f"base_url must be an http(s) URL such as {DEFAULT_BASE_URL}, got {value!r} "
            "(from the base_url argument or COBALT_BASE_URL)"
        )
        raise ConfigurationError(msg)
    return value.rstrip("/")
