"""``simulate`` and ``listen``: the simulator and a webhook listener as local servers."""

from __future__ import annotations

import argparse
import os
import sys

import anyio

from ._client import CobaltClient
from ._errors import APIError, ConfigurationError
from ._forward import Forwarder
from ._servers import fake_from_args, serve
from ._types import ASGIApp, Receive, Scope, Send
from ._webhooks import WebhookReceiver
from .asgi import WebhookApp
from .models import Event
from .sinks import InMemorySink


async def simulate(args: argparse.Namespace) -> int:
    """Serve FakeCobalt until stopped, delivering webhooks to ``--webhook-url``."""
    fake = fake_from_args(
        args,
        webhook_url=args.webhook_url,
        webhook_secret=args.secret,
        client_id=args.client_id,
        client_secret=args.client_secret,
        access_token=args.access_token,
        job_id_type=args.job_id_type,
        on_log=_print_line,
    )
    async with serve(fake, args.host, args.port) as url:
        target = args.webhook_url or "nowhere (poll GET /v1/webhook-events)"
        _print_line(f"simulating Cobalt at {url}/v1, delivering webhooks to {target}")
        await anyio.sleep_forever()
    return 0


async def listen(args: argparse.Namespace) -> int:
    """Receive, verify and print webhooks until stopped; or forward them with --forward-to."""
    if args.forward_to is not None:
        return await forward(args)

    def show(event: Event) -> None:
        _print_line(f"{event.type} job_id={event.job_id} id={event.id}")

    receiver = WebhookReceiver(InMemorySink(), secrets=args.secret, on_event=show)
    app = _only_path(args.path, WebhookApp(receiver))
    async with serve(app, args.host, args.port) as url:
        _print_line(f"listening for Cobalt webhooks at {url}{args.path}")
        await anyio.sleep_forever()
    return 0


_CREDENTIALS = {
    "client_id": "COBALT_CLIENT_ID",
    "client_secret": "COBALT_CLIENT_SECRET",
    "access_token": "COBALT_ACCESS_TOKEN",
}


async def forward(args: argparse.Namespace) -> int:
    """Poll Cobalt's webhook-events and deliver each new event to ``--forward-to``, signed."""
    missing = [
        f"--{name.replace('_', '-')} (or {variable})"
        for name, variable in _CREDENTIALS.items()
        if not (getattr(args, name) or os.environ.get(variable, "").strip())
    ]
    if missing:
        return _fail(f"missing Cobalt credentials: pass {', '.join(missing)}", status=2)
    credentials = {name: getattr(args, name) for name in _CREDENTIALS}
    try:
        client = CobaltClient(base_url=args.base_url, max_retries=0, **credentials)
    except ConfigurationError as exc:  # a base URL that is not one, say
        return _fail(str(exc), status=2)
    async with client:
        forwarder = Forwarder(
            client.webhook_events, args.forward_to, args.secret[-1], on_line=_print_line
        )
        try:
            await forwarder.prime()
            _print_line(
                f"forwarding Cobalt events from {client.base_url} to {args.forward_to} "
                f"(polling every {args.interval:g} s)"
            )
            fatal = await forwarder.run(args.interval, on_error=_warn)
        except APIError as exc:
            fatal = exc
        finally:
            with anyio.CancelScope(shield=True):  # also when Ctrl-C cancelled the poll
                await forwarder.aclose()
    return _fail(f"cannot poll Cobalt's webhook-events: {fatal}", status=1)


def _warn(exc: APIError) -> None:
    print(f"cobalt-async listen: poll failed, polling again: {exc}", file=sys.stderr, flush=True)


def _fail(message: str, *, status: int) -> int:
    print(f"cobalt-async listen: {message}", file=sys.stderr, flush=True)
    return status


def _only_path(path: str, app: ASGIApp) -> ASGIApp:
    async def route(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == path:
            await app(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    return route


def _print_line(line: str) -> None:
    print(line, flush=True)
