"""The pure ASGI webhook app: every row of design §5, driven in-process on asyncio and trio."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import pytest

from cobalt_async import Event, InMemorySink, SinkUnavailableError, WebhookReceiver
from cobalt_async._types import ASGIApp, Message, Scope
from cobalt_async.asgi import WebhookApp
from cobalt_async.sinks import PublishResult
from cobalt_async.testing import (
    make_task_created_event,
    make_task_failed_event,
    signed_delivery,
)
from cobalt_async.testing import sign_webhook as sign

pytestmark = pytest.mark.anyio

SECRET = "whsec_test"
LIMIT = 1 << 20
CHUNK = 1 << 16
Delivery = tuple[bytes, dict[str, str]]


# -- the receiver table of design §5, shared with tests/test_fastapi.py ----------------------


def _signed(body: bytes, secret: str = SECRET) -> Delivery:
    return body, {"content-type": "application/json", "cobalt-verification": sign(body, secret)}


def _unsigned(event: dict[str, Any]) -> Delivery:
    body, headers = signed_delivery(event, SECRET)
    del headers["cobalt-verification"]
    return body, headers


def _tampered(event: dict[str, Any]) -> Delivery:
    body, headers = signed_delivery(event, SECRET)
    return body.replace(b"MRN-12345", b"MRN-99999"), headers


def _pretty(event: dict[str, Any]) -> Delivery:
    # Signed over the compact form but sent indented: verified by re-serialising (design §5).
    body, headers = signed_delivery(event, SECRET)
    return json.dumps(event, indent=2).encode(), headers


def _without_job_id() -> dict[str, Any]:
    event = make_task_created_event(job_id="300")
    del event["job_id"]
    return event


_UNKNOWN = {"id": "evt_unknown", "object": "event", "type": "patient.updated", "data": {}}
_CREATED = make_task_created_event(job_id="100", event_id="evt_100")
_SAME_DATA = {**_CREATED, "id": "evt_100_bis"}
_FAILED = make_task_failed_event(job_id="100", event_id="evt_100_failed")


@dataclass(frozen=True)
class Case:
    """Deliveries sent in order, and what the last answer and the sink must show."""

    id: str
    deliveries: Sequence[Delivery]
    status: int
    result: str
    stored: str | None = None
    """The type of the outcome stored for job 100, or None when nothing may be stored."""
    hooked: Sequence[str] = field(default_factory=tuple)
    """Event types the on_event hook saw, in order."""


DELIVERY_CASES = [
    Case(
        "new terminal event",
        [signed_delivery(_CREATED, SECRET)],
        200,
        "accepted",
        "task.created",
        ["task.created"],
    ),
    Case(
        "duplicate delivery",
        [signed_delivery(_CREATED, SECRET)] * 2,
        200,
        "duplicate",
        "task.created",
        ["task.created"],
    ),
    Case(
        "duplicate terminal event",
        [signed_delivery(_CREATED, SECRET), signed_delivery(_SAME_DATA, SECRET)],
        200,
        "duplicate",
        "task.created",
        ["task.created"],
    ),
    Case(
        "second different terminal event",
        [signed_delivery(_CREATED, SECRET), signed_delivery(_FAILED, SECRET)],
        200,
        "conflict",
        "task.created",
        ["task.created"],
    ),
    Case(
        "early arrival",
        [signed_delivery(_FAILED, SECRET)],
        200,
        "accepted",
        "task.failed",
        ["task.failed"],
    ),
    Case(
        "re-serialised body",
        [_pretty(_CREATED)],
        200,
        "accepted",
        "task.created",
        ["task.created"],
    ),
    Case(
        "unknown type",
        [signed_delivery(_UNKNOWN, SECRET)],
        200,
        "accepted",
        None,
        ["patient.updated"],
    ),
    Case(
        "no job_id",
        [signed_delivery(_without_job_id(), SECRET)],
        200,
        "accepted",
        None,
        ["task.created"],
    ),
    Case("missing signature", [_unsigned(_CREATED)], 401, "unauthorized"),
    Case("altered body", [_tampered(_CREATED)], 401, "unauthorized"),
    Case("unknown secret", [signed_delivery(_CREATED, "whsec_other")], 401, "unauthorized"),
    Case("not JSON", [_signed(b"not json at all")], 400, "invalid"),
    Case("JSON but not an event", [_signed(b'{"hello":"world"}')], 400, "invalid"),
    Case("JSON array", [_signed(b"[1,2,3]")], 400, "invalid"),
    Case("over the limit", [_signed(b" " * (LIMIT + 1))], 413, "too_large"),
]


async def check_case(
    case: Case,
    post: Callable[[bytes, dict[str, str]], Any],
    sink: InMemorySink,
    hooked: list[Event],
) -> None:
    """Send a case's deliveries through *post* and check answer, store and hook."""
    answers = [await post(body, headers) for body, headers in case.deliveries]

    last = answers[-1]
    assert (case.status, {"status": case.result}) == (last.status_code, last.json())
    stored = await sink.get_outcomes(["100"])
    assert case.stored == (stored["100"].event.type if stored else None)
    assert list(case.hooked) == [event.type for event in hooked]
    if case.status != 200:
        assert 0 == sink.stats().buffered


class FailingSink(InMemorySink):
    """A sink whose store is down, as Redis can be."""

    async def publish(
        self, event: Event, *, delivery_id: str | None = None, via: str = "webhook"
    ) -> PublishResult:
        msg = "redis unreachable"
        raise SinkUnavailableError(msg)


class SlowSink(InMemorySink):
    """A sink whose store hangs."""

    stores_in_process = False  # it waits on a (hanging) store, as RedisSink does

    async def publish(
        self, event: Event, *, delivery_id: str | None = None, via: str = "webhook"
    ) -> PublishResult:
        await anyio.sleep_forever()
        raise AssertionError


class OwnResultSink(InMemorySink):
    """A third-party sink that answers a result of its own."""

    async def publish(
        self, event: Event, *, delivery_id: str | None = None, via: str = "webhook"
    ) -> PublishResult:
        return "queued"  # type: ignore[return-value]


class EndlessBody(httpx.AsyncByteStream):
    """A chunked request body that never ends; ``chunks`` counts the chunks read from it."""

    def __init__(self) -> None:
        self.chunks = 0

    def __aiter__(self) -> EndlessBody:
        # An iterator, not an async generator: nothing is left unfinished when it is dropped.
        return self

    async def __anext__(self) -> bytes:
        self.chunks += 1
        return b" " * CHUNK

    def request(self, url: str) -> httpx.Request:
        return httpx.Request("POST", url, stream=self)


# -- a raw ASGI driver, to see the order of messages and what was read ----------------------


class Driver:
    """Feeds *incoming* to an ASGI app, then blocks; records what the app sent."""

    def __init__(self, incoming: Sequence[Message]) -> None:
        self.incoming = list(incoming)
        self.received = 0
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        self.received += 1
        if self.incoming:
            return self.incoming.pop(0)
        await anyio.sleep_forever()
        raise AssertionError

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    async def run(self, app: ASGIApp, scope: Scope) -> None:
        with anyio.fail_after(5):
            await app(scope, self.receive, self.send)

    @property
    def answered(self) -> bool:
        return any(message["type"] == "http.response.body" for message in self.sent)

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])


def http_scope(method: str = "POST", headers: Sequence[tuple[bytes, bytes]] = ()) -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "root_path": "",
        "query_string": b"",
        "headers": list(headers),
        "client": ("127.0.0.1", 4000),
        "server": ("127.0.0.1", 8000),
    }


def request_messages(body: bytes) -> list[Message]:
    return [{"type": "http.request", "body": body, "more_body": False}]


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def sink() -> InMemorySink:
    return InMemorySink()


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
    body, headers = signed_delivery(_CREATED, SECRET)
    transport = httpx.ASGITransport(app=WebhookApp(receiver))
    async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as http:
        with anyio.fail_after(2):
            return await http.post("/", content=body, headers=headers)


# -- tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", DELIVERY_CASES, ids=lambda case: case.id)
async def test_receiver_table(
    case: Case, http: httpx.AsyncClient, sink: InMemorySink, hooked: list[Event]
) -> None:
    """Each row of design §5 gets its status, a bare outcome body, and stores what it should."""

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


@pytest.mark.parametrize("sink_class", [FailingSink, SlowSink])
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
    body = signed_delivery(_CREATED, SECRET)[0]
    body += b" " * (2048 - len(body))
    receiver = WebhookReceiver(InMemorySink(), secrets=[SECRET], max_body_bytes=2048)
    driver = Driver(request_messages(body))
    scope = http_scope(headers=[(b"cobalt-verification", sign(body, SECRET).encode())])

    await driver.run(WebhookApp(receiver), scope)

    assert 200 == driver.status


@pytest.mark.parametrize("chunks", [1, 3], ids=["one message", "three messages"])
async def test_a_body_sent_as_bytearray_is_verified_and_stored(chunks: int) -> None:
    """A server that sends the body as a bytearray (ASGI says bytes) still gets a 200."""
    body = signed_delivery(_CREATED, SECRET)[0]
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
    body, headers = signed_delivery(_CREATED, SECRET)
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
    body, headers = signed_delivery(_CREATED, SECRET)

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
    body, headers = signed_delivery(_CREATED, SECRET)
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
