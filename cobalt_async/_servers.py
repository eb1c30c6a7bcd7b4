"""Real loopback servers for the command line (needs the ``cli`` extra: uvicorn, rich)."""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import uvicorn

from ._types import ASGIApp, Receive, Scope, Send
from ._webhooks import WebhookReceiver
from .asgi import WebhookApp
from .models import Event
from .sinks import InMemorySink
from .testing import FakeCobalt

_STARTUP_TIMEOUT = 10.0


def run_command(args: argparse.Namespace) -> int:
    """Run ``demo``, ``simulate`` or ``listen``; Ctrl-C stops the servers cleanly."""
    from ._demo import run_demo

    commands = {"demo": run_demo, "simulate": _simulate, "listen": _listen}
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return anyio.run(commands[args.command], args)
    except KeyboardInterrupt:
        print(f"cobalt-async {args.command}: stopped", file=sys.stderr)
        return 130


@asynccontextmanager
async def serve(app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve *app* with uvicorn on a socket bound now (port 0: a free one); yield its URL."""
    # IPPROTO_TCP given explicitly: asyncio sets TCP_NODELAY on accepted connections only
    # when the listening socket says so, and without it every keep-alive request waits
    # ~40 ms on Nagle and a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    url = f"http://{host}:{sock.getsockname()[1]}"
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)

    async def run() -> None:
        await server.serve([sock])
        # uvicorn stops on its own when it catches SIGINT or SIGTERM; the block ends with it.
        # (It re-raises the signal afterwards, but a shell that started us in the background
        # set SIGINT to "ignore", and then nothing else would end the block.)
        task_group.cancel_scope.cancel()

    async with anyio.create_task_group() as task_group:
        task_group.start_soon(run)
        try:
            with anyio.fail_after(_STARTUP_TIMEOUT):
                # uvicorn offers a flag, not an event, to tell it is listening.
                while not server.started:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            yield url
        finally:
            server.should_exit = True


def fake_from_args(args: argparse.Namespace, **options: object) -> FakeCobalt:
    """A FakeCobalt configured by the shared fault flags."""
    return FakeCobalt(
        latency=(args.latency / 2, args.latency * 1.5),
        failure_rate=args.failure_rate,
        duplicate_rate=args.duplicate_rate,
        early_rate=args.early_rate,
        drop_rate=args.drop_rate,
        delivery_error_rate=args.http_error_rate,
        seed=args.seed,
        **options,  # type: ignore[arg-type]
    )


async def _simulate(args: argparse.Namespace) -> int:
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


async def _listen(args: argparse.Namespace) -> int:
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
