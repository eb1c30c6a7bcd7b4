"""Helpers shared by the test modules, so that none imports another; fixtures are in conftest.py."""

from __future__ import annotations

import json
import queue
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import anyio
import httpx
import pytest

from cobalt_async import (
    CobaltClient,
    Event,
    InMemorySink,
    JobHandle,
    PollPolicy,
    Sink,
    SinkUnavailableError,
    TaskCreatedEvent,
    WebhookReceiver,
    sign_webhook,
)
from cobalt_async._types import ASGIApp, Message, Scope
from cobalt_async.sinks import PublishResult, _memory
from cobalt_async.testing import make_task_created_event, make_task_failed_event, signed_delivery

SECRET = "whsec_test"
"""The webhook secret the shared deliveries are signed with."""

# -- waiting and time --------------------------------------------------------------------------


_SPINS = 100
"""Bare checkpoints ``until`` yields before it also lets a millisecond pass between checks."""


async def until(predicate: Callable[[], bool], *, timeout: float = 5.0) -> None:
    """Yield to other tasks until *predicate* holds; fail after *timeout* seconds."""
    with anyio.fail_after(timeout):
        spins = 0
        while not predicate():
            spins += 1
            # Bare checkpoints (a sleep of 0) react at once, but a long run of them holds the
            # GIL against the worker threads it may wait for (a sink's sqlite3 calls).
            await anyio.sleep(0 if spins < _SPINS else 0.001)


class FakeClock:
    """Stands in for the ``time`` module of ``cobalt_async.sinks._memory``."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@contextmanager
def fake_clock() -> Iterator[FakeClock]:
    """InMemorySink's time is a FakeClock while this is open."""
    clock = FakeClock()
    with mock.patch.object(_memory, "time", clock):
        yield clock


# -- a stubbed Cobalt, for JobHandle and polling -----------------------------------------------

JOB_NUMBER = 12345
JOB = "12345"
QUIET = PollPolicy(silence=60.0, max_silence=60.0)
"""A sink-backed policy whose backstop never polls within a test (except before a timeout)."""


def task_created_payload(job_id: str = JOB, *, emr_task_id: str = "emr-9") -> dict[str, Any]:
    return {
        "id": f"evt_created_{job_id}",
        "access_token_reference_id": "atr_test",
        "object": "event",
        "created": "2026-01-01T00:00:00.000Z",
        "type": "task.created",
        "job_id": job_id,
        "data": {"task_id": "t", "emr_task_id": emr_task_id, "subject": "Follow-up"},
    }


def task_failed_payload(job_id: str = JOB) -> dict[str, Any]:
    return {
        "id": f"evt_failed_{job_id}",
        "access_token_reference_id": "atr_test",
        "object": "event",
        "created": "2026-01-01T00:00:00.000Z",
        "type": "task.failed",
        "job_id": job_id,
        "data": {
            "task_id": "t",
            "failure_reason": "Patient not found; Assignee unknown",
            "reasons": [
                {"code": "patient_not_found", "description": "Patient not found"},
                {"code": "assignee_unknown", "description": "Assignee unknown"},
            ],
        },
    }


class StubCobalt:
    """Cobalt's task API as an ``httpx.MockTransport``; the test controls every answer."""

    def __init__(self, job_id: int | str = JOB_NUMBER) -> None:
        self.job_id = job_id
        self.records: list[dict[str, Any]] = []
        """Items of ``GET /v1/webhook-events``, filtered by its job_id unless told not to."""
        self.records_from_poll = 1
        """The first poll (1-based) that sees ``records``; earlier polls see none."""
        self.ignore_job_filter = False
        self.fail_polls = 0
        """The next N polls answer 500."""
        self.garbage_polls = 0
        """The next N polls answer 200 with a body that is not Cobalt's JSON."""
        self.first_poll_gate: anyio.Event | None = None
        """When set, the first poll hangs until this event is set."""
        self.polls: list[httpx.Request] = []
        self.poll_times: list[float] = []
        self.on_create: Callable[[], Awaitable[None]] | None = None
        """Runs before the POST answers, e.g. to deliver the webhook early."""
        self.transport = httpx.MockTransport(self.handle)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path == "/v1/tasks":
            if self.on_create is not None:
                await self.on_create()
            return httpx.Response(
                200, json={"success": True, "task_id": "t", "job_id": self.job_id}
            )
        if request.method == "GET" and request.url.path == "/v1/webhook-events":
            self.polls.append(request)
            self.poll_times.append(anyio.current_time())
            if self.first_poll_gate is not None and len(self.polls) == 1:
                await self.first_poll_gate.wait()
            if self.fail_polls:
                self.fail_polls -= 1
                return httpx.Response(500, json={"success": False, "message": "boom"})
            if self.garbage_polls:
                self.garbage_polls -= 1
                return httpx.Response(200, text="<html>upstream maintenance</html>")
            wanted = request.url.params.get("job_id")
            visible = self.records if len(self.polls) >= self.records_from_poll else []
            records = [
                record
                for record in visible
                if self.ignore_job_filter or wanted is None or str(record["job_id"]) == wanted
            ]
            return httpx.Response(
                200,
                json={
                    "success": True,
                    "webhook_events": records,
                    "pagination": {"current_page": 1, "total_pages": 1, "page_size": 100},
                },
            )
        return httpx.Response(404, json={"success": False, "message": "no such route"})


def make_client(
    stub: StubCobalt,
    *,
    sink: Sink | None,
    poll: PollPolicy = QUIET,
    job_timeout: float | None = 5.0,
) -> CobaltClient:
    return CobaltClient(
        client_id="cid",
        client_secret="csecret",
        access_token="tok",
        base_url="https://api.cobalt.test/v1",
        sink=sink,
        transport=stub.transport,
        max_retries=0,
        poll=poll,
        job_timeout=job_timeout,
    )


async def deliver(receiver: WebhookReceiver, payload: dict[str, Any]) -> None:
    """POST a signed webhook into the receiver, as Cobalt would."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = {"cobalt-verification": sign_webhook(body, SECRET), "webhook-id": payload["id"]}
    receipt = await receiver.receive(body, headers)
    assert receipt.status_code == 200, receipt


async def create_task(client: CobaltClient) -> JobHandle[TaskCreatedEvent]:
    return await client.tasks.create(patient_mrn="MRN-1", description="Call the patient back")


# -- sinks that cannot store -------------------------------------------------------------------


class UnavailableSink(InMemorySink):
    """A sink whose store is down, as RedisSink is when Redis is unreachable."""

    async def publish(
        self, event: Event, *, delivery_id: str | None = None, via: str = "webhook"
    ) -> PublishResult:
        msg = "connection refused by the store"
        raise SinkUnavailableError(msg)


class HangingSink(InMemorySink):
    """A sink whose store never answers; ``entered`` is set once a publish waits on it."""

    stores_in_process = False  # it waits on a (never-answering) store, as RedisSink does

    def __init__(self) -> None:
        super().__init__()
        self.entered = anyio.Event()

    async def publish(
        self, event: Event, *, delivery_id: str | None = None, via: str = "webhook"
    ) -> PublishResult:
        self.entered.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")


# -- the receiver table of docs/webhooks.md, for the ASGI app and the FastAPI router --------

LIMIT = 1 << 20
CHUNK = 1 << 16
Delivery = tuple[bytes, dict[str, str]]


def _signed(body: bytes, secret: str = SECRET) -> Delivery:
    return body, {
        "content-type": "application/json",
        "cobalt-verification": sign_webhook(body, secret),
    }


def _unsigned(event: dict[str, Any]) -> Delivery:
    body, headers = signed_delivery(event, SECRET)
    del headers["cobalt-verification"]
    return body, headers


def _tampered(event: dict[str, Any]) -> Delivery:
    body, headers = signed_delivery(event, SECRET)
    return body.replace(b"MRN-12345", b"MRN-99999"), headers


def _pretty(event: dict[str, Any]) -> Delivery:
    # Signed over the compact form but sent indented: verified by re-serialising (docs/webhooks.md).
    body, headers = signed_delivery(event, SECRET)
    return json.dumps(event, indent=2).encode(), headers


def _without_job_id() -> dict[str, Any]:
    event = make_task_created_event(job_id="300")
    del event["job_id"]
    return event


_UNKNOWN = {"id": "evt_unknown", "object": "event", "type": "patient.updated", "data": {}}
TABLE_CREATED = make_task_created_event(job_id="100", event_id="evt_100")
"""The table's ``task.created`` event of job 100, also a plain valid delivery for other tests."""
_SAME_DATA = {**TABLE_CREATED, "id": "evt_100_bis"}
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
        [signed_delivery(TABLE_CREATED, SECRET)],
        200,
        "accepted",
        "task.created",
        ["task.created"],
    ),
    Case(
        "duplicate delivery",
        [signed_delivery(TABLE_CREATED, SECRET)] * 2,
        200,
        "duplicate",
        "task.created",
        ["task.created"],
    ),
    Case(
        "duplicate terminal event",
        [signed_delivery(TABLE_CREATED, SECRET), signed_delivery(_SAME_DATA, SECRET)],
        200,
        "duplicate",
        "task.created",
        ["task.created"],
    ),
    Case(
        "second different terminal event",
        [signed_delivery(TABLE_CREATED, SECRET), signed_delivery(_FAILED, SECRET)],
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
        [_pretty(TABLE_CREATED)],
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
    Case("missing signature", [_unsigned(TABLE_CREATED)], 401, "unauthorized"),
    Case("altered body", [_tampered(TABLE_CREATED)], 401, "unauthorized"),
    Case("unknown secret", [signed_delivery(TABLE_CREATED, "whsec_other")], 401, "unauthorized"),
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


# -- ASGI in the raw: an endless body, and a driver that sees every message --------------------


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


# -- processes on loopback ---------------------------------------------------------------------

START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


def free_port(*, highest: int = 65535) -> int:
    """A loopback port nothing listens on (free when asked; a server binds it next)."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port <= highest:
            return port


class Server:
    """A ``python -m cobalt_async`` process whose stdout is read line by line, with deadlines."""

    def __init__(self, *args: str, sigint_ignored: bool = False) -> None:
        command = [sys.executable, "-m", "cobalt_async", *args]
        if sigint_ignored:
            # What a shell does to `cobalt-async simulate ... &`: SIGINT is ignored on entry.
            command = ["sh", "-c", f"trap '' INT; exec {shlex.join(command)}"]
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.errors: list[str] = []
        self._pumps = [
            threading.Thread(target=self._pump_stdout, daemon=True),
            threading.Thread(target=self._pump_stderr, daemon=True),
        ]
        for pump in self._pumps:
            pump.start()

    def _pump_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _pump_stderr(self) -> None:
        assert self.process.stderr is not None
        self.errors.extend(self.process.stderr)

    def expect(self, text: str, timeout: float = START_TIMEOUT) -> str:
        """The next stdout line containing *text*; fails after *timeout* seconds."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                status = self.process.wait(timeout=STOP_TIMEOUT)
                pytest.fail(f"exited with {status} before printing {text!r}: {self.errors}")
            if text in line:
                return line
        pytest.fail(f"no line with {text!r} after {timeout} s")

    def next_line(self, timeout: float = START_TIMEOUT) -> str | None:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no line after {timeout} s")

    def interrupt(self) -> int:
        """Send SIGINT (Ctrl-C) and return the exit status; fails if it does not stop."""
        self.process.send_signal(signal.SIGINT)
        try:
            status = self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {STOP_TIMEOUT} s after SIGINT")
        for pump in self._pumps:
            pump.join(timeout=STOP_TIMEOUT)  # the pipes are closed: all output is read
        return status

    def kill(self) -> None:
        """Kill the process if it still runs, and close its pipes."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT)
        for pump in self._pumps:
            pump.join(timeout=STOP_TIMEOUT)
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()


@contextmanager
def server(*args: str, ready: str, sigint_ignored: bool = False) -> Iterator[Server]:
    """Start a server process, wait for its *ready* line, and always kill it at the end."""
    process = Server(*args, sigint_ignored=sigint_ignored)
    try:
        process.expect(ready)
        yield process
    finally:
        process.kill()
