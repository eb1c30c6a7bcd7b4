"""FakeCobalt: a pure-ASGI simulator of Cobalt's task API, with fault injection."""

from __future__ import annotations

import hmac
import json
import logging
import math
import random
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal, Protocol, Self, TypeAlias, get_args
from urllib.parse import parse_qsl

import anyio
import httpx
from anyio.abc import TaskGroup

from .._errors import ConfigurationError
from .._signing import compact_json
from ._factories import (
    DEFAULT_REFERENCE_ID,
    make_task_created_event,
    make_task_failed_event,
    make_task_note_created_event,
    make_task_note_failed_event,
    signed_delivery,
    utc_timestamp,
)

__all__ = ["FakeCobalt", "FakeStats"]

logger = logging.getLogger("cobalt_async.testing")

Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
JobIdType: TypeAlias = Literal["int", "str", "mixed"]
EmrProfile: TypeAlias = Literal["basic", "subject_assignee", "phone_call"]
RecordShape: TypeAlias = Literal["new", "old"]
_Outcome: TypeAlias = int | Literal["network error", "timeout"]
_Handler: TypeAlias = Callable[[Scope, Receive], Awaitable["_Reply"]]

# Cobalt waits 5 s for the first delivery attempt and 2 s for its single retry.
_FIRST_TIMEOUT = 5.0
_RETRY_TIMEOUT = 2.0
_MAX_BODY = 1 << 20
_MAX_PAGE_SIZE = 100
_TASK_STRINGS = ("description", "patient_mrn", "subject", "assignee_user_id", "phone_call_type_id")
_TASK_FIELDS = frozenset({*_TASK_STRINGS, "notify_list"})
_NOTE_FIELDS = ("emr_task_id", "note")
_PROFILE_FIELDS: dict[str, tuple[str, ...]] = {
    "basic": (),
    "subject_assignee": ("subject", "assignee_user_id"),
    "phone_call": ("phone_call_type_id",),
}
_TASK_FAILURES = (
    ("emr_timeout", "The EMR did not respond in time."),
    ("emr_rejected", "The EMR rejected the task."),
    ("chart_locked", "The patient chart is locked by another EMR user."),
)
_NOTE_FAILURES = (
    ("emr_timeout", "The EMR did not respond in time."),
    ("task_closed", "The EMR task is closed and takes no more notes."),
)
_TASK_ACCEPTED = "Task processing. A webhook event will be sent upon completion."
_NOTE_ACCEPTED = "Task note processing. A webhook event will be sent upon completion."
_LOGIN_REQUIRED = "Account link expired. Please go through the integration setup again."
_NOT_RUNNING = (
    "FakeCobalt is not running: use `async with FakeCobalt(...) as fake:` around the requests, "
    "or serve it with an ASGI server that runs the lifespan protocol (uvicorn does)"
)


class _Receipt(Protocol):
    @property
    def status_code(self) -> int: ...


class _Receiver(Protocol):
    async def receive(self, body: bytes, headers: Mapping[str, str]) -> _Receipt: ...


@dataclass(slots=True)
class FakeStats:
    """What a :class:`FakeCobalt` did so far; the counters only grow."""

    requests: int = 0
    tasks_accepted: int = 0
    notes_accepted: int = 0
    rejected: int = 0
    """Requests answered with a 4xx, except the injected 429s."""
    api_errors: int = 0
    """Injected 503 answers."""
    rate_limited: int = 0
    """Injected 429 answers."""
    jobs_finished: int = 0
    failed_jobs: int = 0
    early: int = 0
    """Jobs whose webhook was delivered before the POST was answered."""
    dropped: int = 0
    duplicated: int = 0
    deliveries_attempted: int = 0
    """Every delivery attempt, retries included."""
    deliveries_succeeded: int = 0
    deliveries_failed: int = 0
    """Deliveries that got no 2xx answer, after the retry if there was one."""
    retried: int = 0


@dataclass(slots=True)
class _Reply:
    status: int
    payload: dict[str, Any]
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


@dataclass(slots=True)
class _Job:
    job_id: str
    build: Callable[..., dict[str, Any]]
    """Builds the job's event; called with ``created=`` when the job finishes."""
    emr_task_id: str | None
    """The EHR task a successful task job creates (notes may then target it)."""
    latency: float
    early: bool
    drop: bool
    duplicate: bool
    delivery_error: bool


@dataclass(slots=True)
class _Record:
    """One finished event, and its delivery history for ``GET /v1/webhook-events``."""

    event: dict[str, Any]
    status: str = "pending"
    attempts: int = 0
    last_attempt: str | None = None
    response_status: int | None = None


def _error(status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> _Reply:
    return _Reply(status, {"success": False, "message": message}, headers or [])


def _matches(given: bytes | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given, expected.encode())


def _retryable(outcome: _Outcome) -> bool:
    # Cobalt retries network errors, 5xx and 429; never another 4xx, nor a timeout (the
    # receiver may have processed the slow delivery already).
    if isinstance(outcome, int):
        return outcome >= 500 or outcome == 429
    return outcome == "network error"


def _field_problem(
    body: dict[str, Any], allowed: Iterable[str], required: Iterable[str], strings: Iterable[str]
) -> str | None:
    unexpected = sorted(set(body).difference(allowed))
    if unexpected:
        return f"Unexpected fields in request body: {', '.join(unexpected)}"
    for name in required:
        value = body.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            return f"Missing required field: {name}"
    for name in strings:
        if body.get(name) is not None and not isinstance(body[name], str):
            return f"{name} must be a string"
    return None


def _notify_problem(value: object) -> str | None:
    if value is None or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        return None
    return "notify_list must be an array of strings"


def _positive_int(raw: str | None, default: int) -> int | None:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if value >= 1 else None


async def _read_json(receive: Receive) -> dict[str, Any] | _Reply:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if size > _MAX_BODY:
            return _error(413, "Request body too large.")
        if message["type"] != "http.request" or not message.get("more_body", False):
            break
    try:
        parsed = json.loads(b"".join(chunks))
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        return _error(400, "Request body must be a JSON object.")
    return parsed


async def _send_reply(send: Send, reply: _Reply) -> None:
    body = compact_json(reply.payload)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *reply.headers,
    ]
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _check_choice(name: str, value: object, choices: tuple[object, ...]) -> None:
    if value not in choices:
        msg = f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}"
        raise ConfigurationError(msg)


def _latency_range(latency: float | tuple[float, float]) -> tuple[float, float]:
    low, high = latency if isinstance(latency, tuple) else (latency, latency)
    if not 0 <= low <= high:
        msg = f"latency must be seconds >= 0, or a (low, high) range of them, got {latency!r}"
        raise ConfigurationError(msg)
    return low, high


class FakeCobalt:
    """
    An ASGI app that behaves like Cobalt's task API, for tests, demos and local servers.

    ```python
    async with FakeCobalt(receiver=receiver, failure_rate=0.1, seed=1) as fake:
        async with httpx.AsyncClient(transport=fake.transport, base_url=fake.base_url) as http:
            ...
        await fake.drain()      # every accepted job finished and delivered
    ```

    Accepted jobs finish after *latency* seconds and their signed webhook is delivered with
    Cobalt's retry policy, in-process to *receiver* or over HTTP to *webhook_url*. Rates are
    probabilities drawn from one ``random.Random(seed)``, so a seeded run repeats itself.
    Knobs are plain attributes and may be changed while the fake runs.

    **Knobs** (all keyword-only):

    * ``client_id``, ``client_secret``, ``access_token``: the credentials requests must carry.
    * ``webhook_secret``: signs deliveries; ``access_token_reference_id`` goes in every event.
    * ``receiver``: a ``WebhookReceiver`` (or anything with ``async receive(body, headers)``
      returning an object with ``status_code``) to deliver to in-process; or ``webhook_url``
      to deliver over HTTP, through ``webhook_transport`` if given.
    * ``job_id_type``: ``"int"``, ``"str"`` or ``"mixed"`` (alternating) JSON type of the
      ``job_id`` in POST answers; ``first_job_id`` starts the counter.
    * ``latency``: seconds from an accepted POST to the job's end; ``(low, high)`` is uniform.
    * ``failure_rate``: the job ends in ``task.failed`` / ``task_note.failed``.
    * ``duplicate_rate``: the event is delivered twice, with the same ``webhook-id``.
    * ``early_rate``: the webhook is delivered and answered before the POST response is sent.
    * ``drop_rate``: the webhook is never sent; ``GET /v1/webhook-events`` still lists it.
    * ``delivery_error_rate``: the first delivery attempt fails as a network error.
    * ``api_error_rate`` / ``rate_limit_rate``: a POST answers 503 / 429 (with ``Retry-After:
      retry_after`` unless it is None) and creates nothing.
    * ``response_delay``: seconds added before every answer (the job exists already).
    * ``retry_delay``: Cobalt's pause before its single delivery retry.
    * ``emr_profile``: ``"basic"``, ``"subject_assignee"`` or ``"phone_call"``, the EHR's
      conditionally required task fields.
    * ``unknown_mrns``, ``unknown_users``: answered 404 "Patient/User not found.".
    * ``record_shape``: ``"new"`` or ``"old"`` items of ``GET /v1/webhook-events``.
    * ``max_events``: finished events kept; the oldest are forgotten beyond it.
    * ``on_log``: called with one line per request and per delivery attempt; no secrets, no
      note or description text.
    """

    base_url = "http://cobalt.test/v1"
    """A base URL to use with :attr:`transport` (any host works in-process)."""

    def __init__(
        self,
        *,
        client_id: str = "ci_test",
        client_secret: str = "cs_test",
        access_token: str = "at_test",
        webhook_secret: str = "whsec_test",
        access_token_reference_id: str = DEFAULT_REFERENCE_ID,
        receiver: _Receiver | None = None,
        webhook_url: str | None = None,
        webhook_transport: httpx.AsyncBaseTransport | None = None,
        job_id_type: JobIdType = "mixed",
        first_job_id: int = 10000,
        latency: float | tuple[float, float] = 0.05,
        failure_rate: float = 0.0,
        duplicate_rate: float = 0.0,
        early_rate: float = 0.0,
        drop_rate: float = 0.0,
        delivery_error_rate: float = 0.0,
        api_error_rate: float = 0.0,
        rate_limit_rate: float = 0.0,
        retry_after: float | None = 1.0,
        response_delay: float = 0.0,
        retry_delay: float = 1.0,
        emr_profile: EmrProfile = "basic",
        unknown_mrns: Iterable[str] = ("MRN-UNKNOWN",),
        unknown_users: Iterable[str] = ("USER-UNKNOWN",),
        record_shape: RecordShape = "new",
        seed: int | None = None,
        max_events: int = 100_000,
        on_log: Callable[[str], None] | None = None,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.access_token = access_token
        self.webhook_secret = webhook_secret
        self.access_token_reference_id = access_token_reference_id
        self.receiver = receiver
        self.webhook_url = webhook_url
        self.webhook_transport = webhook_transport
        self.job_id_type = job_id_type
        self.latency = latency
        self.failure_rate = failure_rate
        self.duplicate_rate = duplicate_rate
        self.early_rate = early_rate
        self.drop_rate = drop_rate
        self.delivery_error_rate = delivery_error_rate
        self.api_error_rate = api_error_rate
        self.rate_limit_rate = rate_limit_rate
        self.retry_after = retry_after
        self.response_delay = response_delay
        self.retry_delay = retry_delay
        self.emr_profile = emr_profile
        self.unknown_mrns = frozenset(unknown_mrns)
        self.unknown_users = frozenset(unknown_users)
        self.record_shape = record_shape
        self.max_events = max_events
        self.on_log = on_log
        self._check_config()
        self.stats = FakeStats()
        self.expected_failures: set[str] = set()
        """Job ids made to fail, known as soon as the POST is accepted."""
        self._rng = random.Random(seed)
        self._next_job = first_job_id
        self._records: deque[_Record] = deque()
        self._by_job: dict[str, _Record] = {}
        self._emr_tasks: set[str] = set()
        self._busy = 0
        self._idle: anyio.Event | None = None
        self._stack: AsyncExitStack | None = None
        self._tg: TaskGroup | None = None
        self._http: httpx.AsyncClient | None = None
        self._transport: httpx.ASGITransport | None = None
        self._routes: dict[str, dict[str, _Handler]] = {
            "/v1/tasks": {"POST": self._post_task},
            "/v1/tasks/notes": {"POST": self._post_note},
            "/v1/webhook-events": {"GET": self._get_events},
        }

    def _check_config(self) -> None:
        rates = {
            "failure_rate": self.failure_rate,
            "duplicate_rate": self.duplicate_rate,
            "early_rate": self.early_rate,
            "drop_rate": self.drop_rate,
            "delivery_error_rate": self.delivery_error_rate,
            "api_error_rate": self.api_error_rate,
            "rate_limit_rate": self.rate_limit_rate,
        }
        for name, rate in rates.items():
            if not 0.0 <= rate <= 1.0:
                msg = f"{name} is a probability between 0 and 1, got {rate!r}"
                raise ConfigurationError(msg)
        _latency_range(self.latency)
        if self.max_events < 1:
            msg = f"max_events must be at least 1, got {self.max_events!r}"
            raise ConfigurationError(msg)
        _check_choice("job_id_type", self.job_id_type, get_args(JobIdType))
        _check_choice("emr_profile", self.emr_profile, get_args(EmrProfile))
        _check_choice("record_shape", self.record_shape, get_args(RecordShape))
        if self.receiver is not None and self.webhook_url is not None:
            msg = "pass receiver= (in-process delivery) or webhook_url= (HTTP), not both"
            raise ConfigurationError(msg)

    def __repr__(self) -> str:
        state = "running" if self._tg is not None else "stopped"
        return f"<FakeCobalt {state} pending={self._busy} events={len(self._records)}>"

    # -- public surface -------------------------------------------------------------------

    @property
    def transport(self) -> httpx.ASGITransport:
        """An httpx transport that sends requests to this fake, in-process."""
        if self._transport is None:
            self._transport = httpx.ASGITransport(app=self)
        return self._transport

    @property
    def credentials(self) -> dict[str, str]:
        """``client_id``, ``client_secret`` and ``access_token``: as headers or client kwargs."""
        return {
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "access_token": self.access_token,
        }

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every finished job's event, in the order the jobs finished (dropped ones included)."""
        return [record.event for record in self._records]

    @property
    def pending(self) -> int:
        """Jobs accepted but not yet finished and delivered."""
        return self._busy

    def add_emr_task(self, emr_task_id: str) -> None:
        """Make *emr_task_id* a task notes may target, as if staff had created it in the EHR."""
        self._emr_tasks.add(emr_task_id)

    async def drain(self) -> None:
        """Wait until every accepted job has finished and its deliveries are over."""
        while self._busy:
            if self._idle is None:
                self._idle = anyio.Event()
            await self._idle.wait()

    async def __aenter__(self) -> Self:
        if self._stack is not None:
            msg = "FakeCobalt is already running"
            raise RuntimeError(msg)
        stack = AsyncExitStack()
        self._tg = await stack.enter_async_context(anyio.create_task_group())
        self._stack = stack
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        stack, self._stack = self._stack, None
        tg, self._tg = self._tg, None
        if tg is not None:
            # Jobs still waiting out their latency are abandoned, as a test expects on exit.
            tg.cancel_scope.cancel()
        if stack is not None:
            await stack.aclose()
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()

    # -- ASGI -----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point: HTTP requests, and the lifespan protocol of ASGI servers."""
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http_request(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        # A server started inside `async with fake:` must not take over the fake's lifecycle.
        owned = self._stack is None
        if owned:
            await self.__aenter__()
        try:
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
        finally:
            if owned:
                await self.__aexit__(None, None, None)
        await send({"type": "lifespan.shutdown.complete"})

    async def _http_request(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._tg is None:
            raise RuntimeError(_NOT_RUNNING)
        self.stats.requests += 1
        reply = await self._route(scope, receive)
        if 400 <= reply.status < 500 and reply.status != 429:
            self.stats.rejected += 1
        if self.response_delay > 0:
            await anyio.sleep(self.response_delay)
        await _send_reply(send, reply)
        job_id = reply.payload.get("job_id")
        suffix = f" job_id={job_id}" if job_id is not None else ""
        self._log(f"{scope['method']} {scope['path']} -> {reply.status}{suffix}")

    async def _route(self, scope: Scope, receive: Receive) -> _Reply:
        methods = self._routes.get(scope["path"].rstrip("/"))
        if methods is None:
            return _error(404, "Not found.")
        handler = methods.get(scope["method"])
        if handler is None:
            allow = ", ".join(methods).encode()
            return _error(405, "Method not allowed.", [(b"allow", allow)])
        refusal = self._authenticate(scope["headers"])
        if refusal is not None:
            return refusal
        return await handler(scope, receive)

    def _authenticate(self, raw_headers: Iterable[tuple[bytes, bytes]]) -> _Reply | None:
        headers = dict(raw_headers)
        if not (
            _matches(headers.get(b"client_id"), self.client_id)
            and _matches(headers.get(b"client_secret"), self.client_secret)
        ):
            return _error(401, "Invalid client credentials.")
        if not _matches(headers.get(b"access_token"), self.access_token):
            payload = {"success": False, "error": "login_required", "message": _LOGIN_REQUIRED}
            return _Reply(403, payload)
        return None

    # -- POST /v1/tasks and /v1/tasks/notes ----------------------------------------------

    async def _post_task(self, scope: Scope, receive: Receive) -> _Reply:
        return await self._post(receive, self._check_task, self._accept_task)

    async def _post_note(self, scope: Scope, receive: Receive) -> _Reply:
        return await self._post(receive, self._check_note, self._accept_note)

    async def _post(
        self,
        receive: Receive,
        check: Callable[[dict[str, Any]], _Reply | None],
        accept: Callable[[dict[str, Any]], tuple[_Job, _Reply]],
    ) -> _Reply:
        body = await _read_json(receive)
        # Overload and rate limiting happen in front of validation, as at a real gateway.
        refusal = self._injected_fault()
        if refusal is not None:
            return refusal
        if isinstance(body, _Reply):
            return body
        refusal = check(body)
        if refusal is not None:
            return refusal
        job, reply = accept(body)
        await self._schedule(job)
        return reply

    def _injected_fault(self) -> _Reply | None:
        if self._roll(self.rate_limit_rate):
            self.stats.rate_limited += 1
            headers = []
            if self.retry_after is not None:
                headers.append((b"retry-after", f"{self.retry_after:g}".encode()))
            return _error(429, "Too many requests. Please retry later.", headers)
        if self._roll(self.api_error_rate):
            self.stats.api_errors += 1
            return _error(503, "Service temporarily unavailable. Please try again later.")
        return None

    def _check_task(self, body: dict[str, Any]) -> _Reply | None:
        required = ("description", "patient_mrn", *_PROFILE_FIELDS[self.emr_profile])
        problem = _field_problem(body, _TASK_FIELDS, required, _TASK_STRINGS)
        problem = problem or _notify_problem(body.get("notify_list"))
        if problem is not None:
            return _error(400, problem)
        if body["patient_mrn"] in self.unknown_mrns:
            return _error(404, "Patient not found.")
        users = [body.get("assignee_user_id"), *(body.get("notify_list") or ())]
        if any(user in self.unknown_users for user in users):
            return _error(404, "User not found.")
        return None

    def _check_note(self, body: dict[str, Any]) -> _Reply | None:
        problem = _field_problem(body, _NOTE_FIELDS, _NOTE_FIELDS, _NOTE_FIELDS)
        if problem is not None:
            return _error(400, problem)
        if body["emr_task_id"] not in self._emr_tasks:
            return _error(404, "Task not found.")
        return None

    def _accept_task(self, body: dict[str, Any]) -> tuple[_Job, _Reply]:
        number, envelope = self._start_job()
        task_id = self._hex_id()
        emr_task_id: str | None = None
        if self._fail(envelope["job_id"]):
            build = partial(
                make_task_failed_event,
                task_id=task_id,
                reasons=[self._reason(_TASK_FAILURES)],
                **envelope,
            )
        else:
            emr_task_id = self._uuid()
            build = partial(
                make_task_created_event,
                task_id=task_id,
                emr_task_id=emr_task_id,
                subject=body.get("subject"),
                description=body["description"],
                patient_mrn=body["patient_mrn"],
                assignee_user_id=body.get("assignee_user_id"),
                **envelope,
            )
        self.stats.tasks_accepted += 1
        job = self._new_job(envelope["job_id"], build, emr_task_id)
        payload = {"success": True, "message": _TASK_ACCEPTED, "task_id": task_id}
        return job, _Reply(200, {**payload, "job_id": self._wire_job_id(number)})

    def _accept_note(self, body: dict[str, Any]) -> tuple[_Job, _Reply]:
        number, envelope = self._start_job()
        task_note_id = self._hex_id()
        if self._fail(envelope["job_id"]):
            build = partial(
                make_task_note_failed_event,
                task_note_id=task_note_id,
                reasons=[self._reason(_NOTE_FAILURES)],
                **envelope,
            )
        else:
            build = partial(
                make_task_note_created_event,
                task_note_id=task_note_id,
                emr_note_id=self._uuid(),
                emr_task_id=body["emr_task_id"],
                note=body["note"],
                **envelope,
            )
        self.stats.notes_accepted += 1
        job = self._new_job(envelope["job_id"], build, None)
        payload = {"success": True, "message": _NOTE_ACCEPTED, "task_note_id": task_note_id}
        return job, _Reply(200, {**payload, "job_id": self._wire_job_id(number)})

    # -- fault decisions: every draw comes from self._rng, in request order ----------------

    def _roll(self, rate: float) -> bool:
        # A zero rate draws nothing, so turning one knob on does not reshuffle the others.
        return rate > 0 and self._rng.random() < rate

    def _hex_id(self) -> str:
        return f"{self._rng.getrandbits(96):024x}"

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _reason(self, choices: tuple[tuple[str, str], ...]) -> dict[str, str]:
        code, description = self._rng.choice(choices)
        return {"code": code, "description": description}

    def _start_job(self) -> tuple[int, dict[str, Any]]:
        number = self._next_job
        self._next_job += 1
        envelope = {
            "job_id": str(number),
            "event_id": f"evt_{self._hex_id()}",
            "access_token_reference_id": self.access_token_reference_id,
        }
        return number, envelope

    def _wire_job_id(self, number: int) -> int | str:
        # Cobalt answers job_id as a JSON number on some endpoints and a string on others.
        if self.job_id_type == "int" or (self.job_id_type == "mixed" and number % 2 == 0):
            return number
        return str(number)

    def _fail(self, job_id: str) -> bool:
        failed = self._roll(self.failure_rate)
        if failed:
            self.expected_failures.add(job_id)
        return failed

    def _new_job(
        self, job_id: str, build: Callable[..., dict[str, Any]], emr_task_id: str | None
    ) -> _Job:
        low, high = _latency_range(self.latency)
        return _Job(
            job_id=job_id,
            build=build,
            emr_task_id=emr_task_id,
            latency=low if low == high else self._rng.uniform(low, high),
            early=self._roll(self.early_rate),
            drop=self._roll(self.drop_rate),
            duplicate=self._roll(self.duplicate_rate),
            delivery_error=self._roll(self.delivery_error_rate),
        )

    # -- job completion and delivery ------------------------------------------------------

    async def _schedule(self, job: _Job) -> None:
        tg = self._tg
        if tg is None:
            raise RuntimeError(_NOT_RUNNING)
        self._busy += 1
        if job.early:
            # The webhook lands, and is answered, before the client sees the POST response.
            self.stats.early += 1
            await self._run_job(job)
        else:
            tg.start_soon(self._run_job, job)

    async def _run_job(self, job: _Job) -> None:
        try:
            if not job.early:
                await anyio.sleep(job.latency)
            record = self._finish(job)
            await self._deliver(job, record)
        finally:
            self._busy -= 1
            if self._busy == 0 and self._idle is not None:
                self._idle.set()
                self._idle = None

    def _finish(self, job: _Job) -> _Record:
        record = _Record(job.build(created=utc_timestamp()))
        self._records.append(record)
        self._by_job[job.job_id] = record
        if len(self._records) > self.max_events:
            self._forget(self._records.popleft())
        self.stats.jobs_finished += 1
        if job.job_id in self.expected_failures:
            self.stats.failed_jobs += 1
        elif job.emr_task_id is not None:
            self._emr_tasks.add(job.emr_task_id)
        return record

    def _forget(self, record: _Record) -> None:
        # Bounded history, so a simulator serving for hours does not grow without limit.
        event = record.event
        del self._by_job[event["job_id"]]
        if event["type"] == "task.created":
            self._emr_tasks.discard(event["data"]["emr_task_id"])

    async def _deliver(self, job: _Job, record: _Record) -> None:
        if self.receiver is None and self.webhook_url is None:
            record.status = "failed"  # no webhook registered: the outcome is only pollable
            return
        if job.drop:
            record.status = "failed"
            self.stats.dropped += 1
            self._log(f"webhook {record.event['type']} job_id={job.job_id} -> dropped")
            return
        if job.duplicate:
            self.stats.duplicated += 1
        for copy in range(2 if job.duplicate else 1):
            await self._deliver_once(record, fail_first=job.delivery_error and copy == 0)

    async def _deliver_once(self, record: _Record, *, fail_first: bool) -> None:
        outcome = await self._attempt(record, 1, _FIRST_TIMEOUT, fail=fail_first)
        if _retryable(outcome):
            self.stats.retried += 1
            await anyio.sleep(self.retry_delay)
            outcome = await self._attempt(record, 2, _RETRY_TIMEOUT, fail=False)
        if isinstance(outcome, int) and 200 <= outcome < 300:
            self.stats.deliveries_succeeded += 1
            record.status = "success"
        else:
            self.stats.deliveries_failed += 1
            if record.status != "success":  # an earlier duplicate may have landed
                record.status = "failed"

    async def _attempt(
        self, record: _Record, attempt: int, timeout: float, *, fail: bool
    ) -> _Outcome:
        self.stats.deliveries_attempted += 1
        record.attempts += 1
        record.last_attempt = utc_timestamp()
        outcome: _Outcome = "network error"
        if not fail:
            body, headers = signed_delivery(record.event, self.webhook_secret, attempt=attempt)
            outcome = await self._send_webhook(body, headers, timeout)
        if isinstance(outcome, int):
            record.response_status = outcome
        event = record.event
        self._log(
            f"webhook {event['type']} job_id={event['job_id']} attempt={attempt} -> {outcome}"
        )
        return outcome

    async def _send_webhook(self, body: bytes, headers: dict[str, str], timeout: float) -> _Outcome:
        if self.receiver is not None:
            return await self._call_receiver(self.receiver, body, headers, timeout)
        return await self._post_webhook(body, headers, timeout)

    async def _call_receiver(
        self, receiver: _Receiver, body: bytes, headers: dict[str, str], timeout: float
    ) -> _Outcome:
        # In-process there is no connection to drop: a receiver slower than Cobalt's timeout
        # is cancelled, which is what a server sees when Cobalt hangs up.
        with anyio.move_on_after(timeout):
            try:
                return (await receiver.receive(body, headers)).status_code
            except Exception:
                logger.exception("the webhook receiver raised; counted as a 500 answer")
                return 500
        return "timeout"

    async def _post_webhook(self, body: bytes, headers: dict[str, str], timeout: float) -> _Outcome:
        if self._http is None:
            self._http = httpx.AsyncClient(transport=self.webhook_transport)
        try:
            response = await self._http.post(
                self.webhook_url or "", content=body, headers=headers, timeout=timeout
            )
        except httpx.ConnectTimeout:
            return "network error"  # never reached the receiver: Cobalt retries
        except httpx.TimeoutException:
            return "timeout"
        except httpx.TransportError:
            return "network error"
        return response.status_code

    def _log(self, line: str) -> None:
        logger.debug("%s", line)
        if self.on_log is not None:
            try:
                self.on_log(line)
            except Exception:
                logger.exception("on_log callback failed")

    # -- GET /v1/webhook-events -----------------------------------------------------------

    async def _get_events(self, scope: Scope, receive: Receive) -> _Reply:
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        page = _positive_int(query.get("page"), 1)
        size = _positive_int(query.get("page_size"), 50)
        sort = query.get("sort", "-created_at")
        if page is None or size is None:
            return _error(400, "page and page_size must be positive integers")
        if sort not in ("created_at", "-created_at"):
            return _error(400, "sort must be created_at or -created_at")
        size = min(size, _MAX_PAGE_SIZE)
        records = self._select(query)
        if sort == "-created_at":
            records.reverse()
        items = [self._record_item(record) for record in records[(page - 1) * size : page * size]]
        pagination = {
            "current_page": page,
            "total_pages": math.ceil(len(records) / size),
            "total_count": len(records),
            "page_size": size,
        }
        return _Reply(200, {"success": True, "webhook_events": items, "pagination": pagination})

    def _select(self, query: dict[str, str]) -> list[_Record]:
        job_id = query.get("job_id")
        if job_id is None:
            records: Iterable[_Record] = self._records
        else:
            found = self._by_job.get(job_id)
            records = () if found is None else (found,)
        kind = query.get("event_type")
        status = query.get("delivery_status", query.get("status"))
        return [
            record
            for record in records
            if (kind is None or record.event["type"] == kind)
            and (status is None or record.status == status)
        ]

    def _record_item(self, record: _Record) -> dict[str, Any]:
        event = record.event
        if self.record_shape == "new":
            return {
                "event_id": event["id"],
                "event_type": event["type"],
                "webhook_url": self.webhook_url or "",
                "delivery_status": record.status,
                "data": event["data"],
                "created_at": event["created"],
                "job_id": event["job_id"],
                "access_token_reference_id": event["access_token_reference_id"],
            }
        return {
            **{key: event[key] for key in ("id", "access_token_reference_id", "object", "created")},
            "type": event["type"],
            "job_id": event["job_id"],
            "status": record.status,
            "delivered": record.status == "success",
            "delivery_attempts": record.attempts,
            "last_delivery_attempt": record.last_attempt,
            "response_status_code": record.response_status,
            "data": event["data"],
        }
