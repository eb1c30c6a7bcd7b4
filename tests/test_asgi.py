"""The pure ASGI webhook app: every row of docs/webhooks.md, in-process on asyncio and trio."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import AsyncIterator

import anyio
import httpx
import pytest

from cobalt_async import Event, InMemorySink, WebhookReceiver
from cobalt_async.asgi import WebhookApp
from cobalt_async.sinks import PublishResult
from cobalt_async.testing import make_task_created_event, signed_delivery
from cobalt_async.testing import sign_webhook as sign
from tests.support import (
    CHUNK,
    DELIVERY_CASES,
    LIMIT,
    SECRET,
    TABLE_CREATED,
    Case,
    Driver,
    EndlessBody,
    HangingSink,
    UnavailableSink,
    check_case,
    http_scope,
    request_messages,
)

pytestmark = pytest.mark.anyio


class OwnResultSink(InMemorySink):
    """A third-party sink that answers a result of its own."""

    async def publish(
        self, event: Event, *, delivery_id: str | None = None, via: str = "webhook"
    ) -> PublishResult:
        return "queued"  # type: ignore[return-value]


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def hooked() -> list[Event]:
    return []


@pytest.fixture
def receiver(sink: InMemorySink, hooked: list[Event]) -> WebhookReceiver:
    return WebhookReceiver(sink, secrets=[SECRET], on_event=hooked.append)


@pytest.fixture
async def http(receiver: WebhookReceiver) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=WebhookApp(receiver))
    async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as client:
        yield client


async def _deliver_once(receiver: WebhookReceiver) -> httpx.Response:
    """One signed ``task.created`` delivery through a :class:`WebhookApp`, answered within 2 s."""
    body, headers = signed_delivery(TABLE_CREATED, SECRET)
    transport = httpx.ASGITransport(app=WebhookApp(receiver))
    async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as http:
        with anyio.fail_after(2):
            return await http.post("/", content=body, headers=headers)


# -- tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", DELIVERY_CASES, ids=lambda case: case.id)
async def test_receiver_table(
    case: Case, http: httpx.AsyncClient, sink: InMemorySink, hooked: list[Event]
) -> None:
    """Each row of docs/webhooks.md: its status, a bare result body, and what it stores."""

    async def post(body: bytes, headers: dict[str, str]) -> httpx.Response:
        return await http.post("/", content=body, headers=headers)

    await check_case(case, post, sink, hooked)


async def test_early_arrival_resolves_a_later_wait(
    http: httpx.AsyncClient, sink: InMemorySink
) -> None:
    """A webhook for a job nobody awaits yet is kept for the wait that comes later."""
    body, headers = signed_delivery(
        make_task_created_event(job_id="7", emr_task_id="emr-7"), SECRET
    )
    await http.post("/", content=body, headers=headers)

    outcome = await sink.wait_for("7", timeout=1)

    assert "emr-7" == outcome.event.data.emr_task_id


async def test_a_sink_result_of_its_own_is_answered_as_it_was_before() -> None:
    """Without a hook the app answers from shared receipts; one it has none for is built."""
    response = await _deliver_once(WebhookReceiver(OwnResultSink(), secrets=[SECRET]))

    assert (200, {"status": "queued"}) == (response.status_code, response.json())


@pytest.mark.parametrize("sink_class", [UnavailableSink, HangingSink])
async def test_sink_that_cannot_store_answers_503_in_time(
    sink_class: type[InMemorySink], hooked: list[Event]
) -> None:
    """A sink outage or hang is a fast 503, so that Cobalt's retry can land; no hook runs."""
    receiver = WebhookReceiver(
        sink_class(), secrets=[SECRET], publish_timeout=0.2, on_event=hooked.append
    )

    response = await _deliver_once(receiver)

    assert (503, {"status": "unavailable"}) == (response.status_code, response.json())
    assert [] == hooked


async def test_declared_length_over_limit_is_refused_before_reading(
    receiver: WebhookReceiver,
) -> None:
    """A Content-Length over the limit gets 413 without one receive() call."""
    driver = Driver([])
    scope = http_scope(headers=[(b"content-length", str(LIMIT + 1).encode())])

    await driver.run(WebhookApp(receiver), scope)

    assert (413, 0) == (driver.status, driver.received)
    assert (b"connection", b"close") in driver.sent[0]["headers"]


async def test_endless_chunked_body_gets_413_without_reading_the_rest(
    http: httpx.AsyncClient, sink: InMemorySink
) -> None:
    """A streamed body with no end is refused once past the limit; the rest is never read."""
    body = EndlessBody()

    with anyio.fail_after(5):
        response = await http.send(body.request("http://app.test/"))

    assert (413, {"status": "too_large"}) == (response.status_code, response.json())
    assert LIMIT // CHUNK + 1 == body.chunks
    assert 0 == sink.stats().buffered


async def test_endless_asgi_stream_gets_413_without_reading_the_rest(
    receiver: WebhookReceiver,
) -> None:
    """At the ASGI level: receive() is called only until the limit is passed."""
    chunk = {"type": "http.request", "body": b" " * CHUNK, "more_body": True}
    driver = Driver([chunk] * (LIMIT // CHUNK + 1))  # then receive() blocks forever

    await driver.run(WebhookApp(receiver), http_scope())

    assert (413, LIMIT // CHUNK + 1) == (driver.status, driver.received)


async def test_body_exactly_at_the_limit_is_read() -> None:
    """The limit is inclusive: a signed body of exactly max_body_bytes is processed."""
    body = signed_delivery(TABLE_CREATED, SECRET)[0]
    body += b" " * (2048 - len(body))
    receiver = WebhookReceiver(InMemorySink(), secrets=[SECRET], max_body_bytes=2048)
    driver = Driver(request_messages(body))
    scope = http_scope(headers=[(b"cobalt-verification", sign(body, SECRET).encode())])

    await driver.run(WebhookApp(receiver), scope)

    assert 200 == driver.status


@pytest.mark.parametrize("chunks", [1, 3], ids=["one message", "three messages"])
async def test_a_body_sent_as_bytearray_is_verified_and_stored(chunks: int) -> None:
    """A server that sends the body as a bytearray (ASGI says bytes) still gets a 200."""
    body = signed_delivery(TABLE_CREATED, SECRET)[0]
    sink = InMemorySink()
    receiver = WebhookReceiver(sink, secrets=[SECRET])
    size = -(-len(body) // chunks)
    parts = [body[start : start + size] for start in range(0, len(body), size)]
    driver = Driver(
        [
            {"type": "http.request", "body": bytearray(part), "more_body": index < len(parts) - 1}
            for index, part in enumerate(parts)
        ]
    )
    scope = http_scope(headers=[(b"cobalt-verification", sign(body, SECRET).encode())])

    await driver.run(WebhookApp(receiver), scope)

    assert 200 == driver.status
    assert 1 == sink.stats().buffered


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "HEAD", "OPTIONS"])
async def test_other_methods_get_405_allow_post(
    http: httpx.AsyncClient, method: str, sink: InMemorySink
) -> None:
    """Only POST is a delivery."""
    response = await http.request(method, "/")

    assert 405 == response.status_code
    assert "POST" == response.headers["allow"]
    assert 0 == sink.stats().buffered


async def test_lifespan_is_acknowledged(receiver: WebhookReceiver) -> None:
    """Served alone, the app answers the lifespan protocol and returns on shutdown."""
    driver = Driver([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

    await driver.run(WebhookApp(receiver), {"type": "lifespan", "asgi": {"version": "3.0"}})

    expected = [{"type": "lifespan.startup.complete"}, {"type": "lifespan.shutdown.complete"}]
    assert expected == driver.sent


async def test_websocket_is_refused(receiver: WebhookReceiver) -> None:
    """A websocket handshake is closed before it is accepted (the server answers 403)."""
    driver = Driver([{"type": "websocket.connect"}])

    await driver.run(WebhookApp(receiver), {"type": "websocket", "path": "/", "headers": []})

    assert [{"type": "websocket.close", "code": 1008}] == driver.sent


async def test_hook_runs_after_the_response_is_sent(sink: InMemorySink) -> None:
    """No user code runs before Cobalt has its answer."""
    driver = Driver([])
    seen: list[bool] = []
    receiver = WebhookReceiver(
        sink, secrets=[SECRET], on_event=lambda event: seen.append(driver.answered)
    )
    body, headers = signed_delivery(TABLE_CREATED, SECRET)
    driver.incoming = request_messages(body)
    raw = [(name.encode(), value.encode()) for name, value in headers.items()]

    await driver.run(WebhookApp(receiver), http_scope(headers=raw))

    assert [True] == seen
    assert 200 == driver.status


async def test_hook_failure_is_logged_not_answered(
    sink: InMemorySink, caplog: pytest.LogCaptureFixture
) -> None:
    """A hook that raises is logged; Cobalt still gets its 200."""

    async def hook(event: Event) -> None:
        raise RuntimeError("boom")

    receiver = WebhookReceiver(sink, secrets=[SECRET], on_event=hook)
    transport = httpx.ASGITransport(app=WebhookApp(receiver))
    body, headers = signed_delivery(TABLE_CREATED, SECRET)

    with caplog.at_level(logging.ERROR, logger="cobalt_async"):
        async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as http:
            response = await http.post("/", content=body, headers=headers)

    assert (200, {"status": "accepted"}) == (response.status_code, response.json())
    assert ["on_event hook failed for a task.created event"] == [
        record.getMessage() for record in caplog.records
    ]
    assert SECRET not in caplog.text


async def test_disconnect_mid_body_answers_nothing(
    receiver: WebhookReceiver, sink: InMemorySink
) -> None:
    """A client gone before the body ended gets no answer, and nothing is stored."""
    driver = Driver(
        [
            {"type": "http.request", "body": b'{"type":', "more_body": True},
            {"type": "http.disconnect"},
        ]
    )

    await driver.run(WebhookApp(receiver), http_scope())

    assert [] == driver.sent
    assert 0 == sink.stats().buffered


async def test_other_scope_types_are_ignored(receiver: WebhookReceiver) -> None:
    """A scope type the app does not serve returns without receiving or sending."""
    driver = Driver([])

    await driver.run(WebhookApp(receiver), {"type": "something.else"})

    assert (0, []) == (driver.received, driver.sent)


async def test_mounts_as_an_exact_route_in_another_framework(receiver: WebhookReceiver) -> None:
    """The app is a plain ASGI endpoint, e.g. a Starlette Route at Cobalt's exact URL."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    outer = Starlette(routes=[Route("/hooks/cobalt", WebhookApp(receiver), methods=["POST"])])
    body, headers = signed_delivery(TABLE_CREATED, SECRET)
    transport = httpx.ASGITransport(app=outer)

    async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as http:
        response = await http.post("/hooks/cobalt", content=body, headers=headers)

    assert (200, {"status": "accepted"}) == (response.status_code, response.json())


def test_imports_no_web_framework() -> None:
    """``cobalt_async.asgi`` stands on the ASGI protocol alone."""
    code = (
        "import sys, cobalt_async.asgi; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('starlette', 'fastapi')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )

    assert "[]" == result.stdout.strip()


def test_all_is_sorted() -> None:
    """The module's public surface is one sorted name."""
    import cobalt_async.asgi

    assert ["WebhookApp"] == cobalt_async.asgi.__all__
