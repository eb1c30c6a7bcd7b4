"""``simulate`` and ``listen``: the simulator and a webhook listener as local servers."""

from __future__ import annotations

import argparse

import anyio

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
    """Receive, verify and print webhooks until stopped."""

    def show(event: Event) -> None:
        _print_line(f"{event.type} job_id={event.job_id} id={event.id}")

    receiver = WebhookReceiver(InMemorySink(), secrets=args.secret, on_event=show)
    app = _only_path(args.path, WebhookApp(receiver))
    async with serve(app, args.host, args.port) as url:
        _print_line(f"listening for Cobalt webhooks at {url}{args.path}")
        await anyio.sleep_forever()
    return 0


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
