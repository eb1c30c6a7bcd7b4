"""
A webhook receiver on a SQLiteSink, for ``uvicorn tests.sinks._sqlite_app:app --workers N``.

Every worker process imports it and opens the database file ``COBALT_TEST_SQLITE_PATH``; the
deliveries are signed with ``tests.sinks._fleet.SECRET``. Each answer names the worker process
that gave it, in an ``x-worker-pid`` header.
"""

from __future__ import annotations

import os

from cobalt_async import SQLiteSink, WebhookReceiver
from cobalt_async._types import Message, Receive, Scope, Send
from cobalt_async.asgi import WebhookApp
from tests.sinks._fleet import SECRET

_webhooks = WebhookApp(
    WebhookReceiver(SQLiteSink(os.environ["COBALT_TEST_SQLITE_PATH"]), secrets=[SECRET])
)
_PID = str(os.getpid()).encode()


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    async def send_naming_the_worker(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message["headers"], (b"x-worker-pid", _PID)]}
        await send(message)

    await _webhooks(scope, receive, send_naming_the_worker)
