"""Real loopback servers for the command line (needs the ``cli`` extra: uvicorn, rich)."""

from __future__ import annotations

import argparse
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import uvicorn

from ._types import ASGIApp
from .testing import FakeCobalt

_STARTUP_TIMEOUT = 10.0


class ListenError(Exception):
    """A server could not listen where it was told to: the message says where and why."""


@asynccontextmanager
async def serve(app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve *app* with uvicorn on a socket bound now (port 0: a free one); yield its URL."""
    # IPPROTO_TCP given explicitly: asyncio sets TCP_NODELAY on accepted connections only
    # when the listening socket says so, and without it every keep-alive request waits
    # ~40 ms on Nagle and a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:  # in use, not ours to bind, or a host that does not resolve
        sock.close()
        msg = f"cannot listen on {host}:{port}: {exc.strerror or exc}"
        raise ListenError(msg) from None
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
        lost_answer_rate=args.lost_answer_rate,
        seed=args.seed,
        **options,  # type: ignore[arg-type]
    )
