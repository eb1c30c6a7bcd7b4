"""FakeCobalt: a pure-ASGI simulator of Cobalt's task API, with fault injection."""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, Self, TypeAlias, get_args
from urllib.parse import parse_qsl

import anyio
import httpx
from anyio.abc import TaskGroup

from .._errors import ConfigurationError
from .._types import Receive, Scope, Send
from ._delivery import Delivery, Receiver
from ._factories import (
    DEFAULT_REFERENCE_ID,
    make_patient_live_fetch_completed_event,
    make_task_created_event,
    make_task_failed_event,
    make_task_note_created_event,
    make_task_note_failed_event,
    utc_timestamp,
)
from ._history import EventHistory, Record, RecordShape
from ._patients import PatientDirectory, fetch_problem
from ._registry import WebhookRegistry
from ._stats import FakeStats
from ._wire import Reply, error, field_problem, matches, notify_problem, read_json, send_reply

__all__ = ["FakeCobalt", "FakeStats"]

logger = logging.getLogger("cobalt_async.testing")

JobIdType: TypeAlias = Literal["int", "str", "mixed"]
EmrProfile: TypeAlias = Literal["basic", "subject_assignee", "phone_call"]
LiveFetchShape: TypeAlias = Literal["new", "old"]
TaskPlacement: TypeAlias = Literal["patient", "top_level"]
_Handler: TypeAlias = Callable[[Scope, Receive], Awaitable[Reply]]

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
_NO_SUCH_TASK = {"code": "task_not_found", "description": "The EMR holds no task with this id."}
_FETCH_FAILURES = (("emr_timeout", "The EMR did not respond in time."),)
_FETCH_ACCEPTED = "Live fetch request accepted. Results will be sent via webhook when ready."
_TASK_ACCEPTED = "Task processing. A webhook event will be sent upon completion."
_NOTE_ACCEPTED = "Task note processing. A webhook event will be sent upon completion."
_LOGIN_REQUIRED = "Account link expired. Please go through the integration setup again."
_NOT_RUNNING = (
    "FakeCobalt is not running: use `async with FakeCobalt(...) as fake:` around the requests, "
    "or serve it with an ASGI server that runs the lifespan protocol (uvicorn does)"
)


@dataclass(slots=True)
class _Job:
    job_id: str
    build: Callable[..., dict[str, Any]]
    """Builds the job's event; called with ``created=`` when the job finishes."""
    on_success: Callable[[], None] | None
    """What a successful job changes in the EHR once it finishes (a task job adds its task)."""
    latency: float
    early: bool
    drop: bool
    duplicate: bool
    delivery_error: bool


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
    * ``lost_answer_rate``: a POST creates its job, then answers 504: the outcome-unknown
      create that ``client.jobs.reconcile()`` settles.
    * ``response_delay``: seconds added before every answer (the job exists already).
    * ``retry_delay``: Cobalt's pause before its single delivery retry.
    * ``emr_profile``: ``"basic"``, ``"subject_assignee"`` or ``"phone_call"``, the EHR's
      conditionally required task fields.
    * ``unknown_mrns``, ``unknown_users``: answered 404 "Patient/User not found.".
    * ``record_shape``: ``"new"`` or ``"old"`` items of ``GET /v1/webhook-events``.
    * ``live_fetch_shape``: ``"new"`` (``job_id``) or ``"old"`` (``job_execution_id``) live
      fetch answers and events; ``task_placement``: ``"patient"`` lists each patient's tasks
      on it, ``"top_level"`` in ``data.tasks``.

    **The EHR**: patients (:meth:`add_patient`) and their tasks (:meth:`add_task`, and every
    task a ``POST /v1/tasks`` job creates) are what ``POST /v1/patients/fetch`` finds. A note
    for an ``emr_task_id`` the EHR does not hold ends in ``task_note.failed``.
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
        receiver: Receiver | None = None,
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
        lost_answer_rate: float = 0.0,
        retry_after: float | None = 1.0,
        response_delay: float = 0.0,
        retry_delay: float = 1.0,
        emr_profile: EmrProfile = "basic",
        unknown_mrns: Iterable[str] = ("MRN-UNKNOWN",),
        unknown_users: Iterable[str] = ("USER-UNKNOWN",),
        record_shape: RecordShape = "new",
        live_fetch_shape: LiveFetchShape = "new",
        task_placement: TaskPlacement = "patient",
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
        self.lost_answer_rate = lost_answer_rate
        self.retry_after = retry_after
        self.response_delay = response_delay
        self.retry_delay = retry_delay
        self.emr_profile = emr_profile
        self.unknown_mrns = frozenset(unknown_mrns)
        self.unknown_users = frozenset(unknown_users)
        self.record_shape = record_shape
        self.live_fetch_shape = live_fetch_shape
        self.task_placement = task_placement
        self.max_events = max_events
        self.on_log = on_log
        self._check_config()
        self.stats = FakeStats()
        self.expected_failures: set[str] = set()
        """Job ids made to fail, known as soon as the POST is accepted."""
        self._rng = random.Random(seed)
        self._next_job = first_job_id
        self._patients = PatientDirectory()
        self._history = EventHistory(self, self._patients)
        self._delivery = Delivery(self, self._log)
        self._busy = 0
        self._idle: anyio.Event | None = None
        self._stack: AsyncExitStack | None = None
        self._tg: TaskGroup | None = None
        self._transport: httpx.ASGITransport | None = None
        self._routes: dict[str, dict[str, _Handler]] = {
            "/v1/tasks": {"POST": self._post_task},
            "/v1/tasks/notes": {"POST": self._post_note},
            "/v1/patients/fetch": {"POST": self._post_fetch},
            "/v1/webhook-events": {"GET": self._get_events},
        }
        self.webhooks = WebhookRegistry(self, self._rng)
        """The ``/v1/webhook`` registrations; a rotation changes :attr:`webhook_secret`."""

    def _check_config(self) -> None:
        rates = {
            "failure_rate": self.failure_rate,
            "duplicate_rate": self.duplicate_rate,
            "early_rate": self.early_rate,
            "drop_rate": self.drop_rate,
            "delivery_error_rate": self.delivery_error_rate,
            "api_error_rate": self.api_error_rate,
            "rate_limit_rate": self.rate_limit_rate,
            "lost_answer_rate": self.lost_answer_rate,
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
        _check_choice("live_fetch_shape", self.live_fetch_shape, get_args(LiveFetchShape))
        _check_choice("task_placement", self.task_placement, get_args(TaskPlacement))
        if self.receiver is not None and self.webhook_url is not None:
            msg = "pass receiver= (in-process delivery) or webhook_url= (HTTP), not both"
            raise ConfigurationError(msg)

    def __repr__(self) -> str:
        state = "running" if self._tg is not None else "stopped"
        return f"<FakeCobalt {state} pending={self._busy} events={len(self._history)}>"

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
        return [record.event for record in self._history.records]

    @property
    def pending(self) -> int:
        """Jobs accepted but not yet finished and delivered."""
        return self._busy

    def add_patient(
        self,
        mrn: str,
        *,
        first_name: str | None = None,
        last_name: str | None = None,
        date_of_birth: str | None = None,
        phone: str | None = None,
        **fields: Any,
    ) -> None:
        """Put a patient in the EHR (or update one), for live fetches to find."""
        self._patients.add_patient(
            mrn,
            first_name=first_name,
            last_name=last_name,
            date_of_birth=date_of_birth,
            phone=phone,
            **fields,
        )

    def add_task(
        self,
        mrn: str,
        *,
        emr_task_id: str | None = None,
        subject: str | None = None,
        description: str | None = None,
        **fields: Any,
    ) -> str:
        """
        Put a task on a patient's chart as if clinic staff had made it in the EHR; returns
        its ``emr_task_id``. The patient is added if new; *fields* go in the task as sent.
        """
        emr_task_id = emr_task_id or self._uuid()
        extra = {"subject": subject, "description": description, **fields}
        task = {key: value for key, value in extra.items() if value is not None}
        self._patients.add_task(emr_task_id, mrn, **task)
        return emr_task_id

    def add_emr_task(self, emr_task_id: str) -> None:
        """Make *emr_task_id* a task notes may target, on no patient's chart."""
        self._patients.add_task(emr_task_id, None)

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
        await self._delivery.aclose()

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
        await send_reply(send, reply)
        job_id = reply.payload.get("job_id")
        suffix = f" job_id={job_id}" if job_id is not None else ""
        self._log(f"{scope['method']} {scope['path']} -> {reply.status}{suffix}")

    async def _route(self, scope: Scope, receive: Receive) -> Reply:
        path = scope["path"].rstrip("/")
        methods = self._routes.get(path)
        if methods is None and self.webhooks.handles(path):
            refusal = self._authenticate(scope["headers"])
            return refusal or await self.webhooks.route(scope["method"], path, receive)
        if methods is None:
            return error(404, "Not found.")
        handler = methods.get(scope["method"])
        if handler is None:
            allow = ", ".join(methods).encode()
            return error(405, "Method not allowed.", [(b"allow", allow)])
        refusal = self._authenticate(scope["headers"])
        if refusal is not None:
            return refusal
        return await handler(scope, receive)

    def _authenticate(self, raw_headers: Iterable[tuple[bytes, bytes]]) -> Reply | None:
        headers = dict(raw_headers)
        if not (
            matches(headers.get(b"client_id"), self.client_id)
            and matches(headers.get(b"client_secret"), self.client_secret)
        ):
            return error(401, "Invalid client credentials.")
        if not matches(headers.get(b"access_token"), self.access_token):
            payload = {"success": False, "error": "login_required", "message": _LOGIN_REQUIRED}
            return Reply(403, payload)
        return None

    # -- POST /v1/tasks and /v1/tasks/notes ----------------------------------------------

    async def _post_task(self, scope: Scope, receive: Receive) -> Reply:
        return await self._post(receive, self._check_task, self._accept_task)

    async def _post_note(self, scope: Scope, receive: Receive) -> Reply:
        return await self._post(receive, self._check_note, self._accept_note)

    async def _post_fetch(self, scope: Scope, receive: Receive) -> Reply:
        return await self._post(receive, self._check_fetch, self._accept_fetch)

    async def _post(
        self,
        receive: Receive,
        check: Callable[[dict[str, Any]], Reply | None],
        accept: Callable[[dict[str, Any]], tuple[_Job, Reply]],
    ) -> Reply:
        body = await read_json(receive)
        # Overload and rate limiting happen in front of validation, as at a real gateway.
        refusal = self._injected_fault()
        if refusal is not None:
            return refusal
        if isinstance(body, Reply):
            return body
        refusal = check(body)
        if refusal is not None:
            return refusal
        job, reply = accept(body)
        await self._schedule(job)
        if self._roll(self.lost_answer_rate):
            # The job exists and will finish; only its answer is lost, as when a gateway
            # times out after forwarding: the client cannot know whether it was created.
            self.stats.answers_lost += 1
            return error(504, "Gateway timeout.")
        return reply

    def _injected_fault(self) -> Reply | None:
        if self._roll(self.rate_limit_rate):
            self.stats.rate_limited += 1
            headers = []
            if self.retry_after is not None:
                headers.append((b"retry-after", f"{self.retry_after:g}".encode()))
            return error(429, "Too many requests. Please retry later.", headers)
        if self._roll(self.api_error_rate):
            self.stats.api_errors += 1
            return error(503, "Service temporarily unavailable. Please try again later.")
        return None

    def _check_task(self, body: dict[str, Any]) -> Reply | None:
        required = ("description", "patient_mrn", *_PROFILE_FIELDS[self.emr_profile])
        problem = field_problem(body, _TASK_FIELDS, required, _TASK_STRINGS)
        if problem is None and "notify_list" in body:
            problem = notify_problem(body["notify_list"])
        if problem is not None:
            return error(400, problem)
        if body["patient_mrn"] in self.unknown_mrns:
            return error(404, "Patient not found.")
        users = [body.get("assignee_user_id"), *(body.get("notify_list") or ())]
        if any(user in self.unknown_users for user in users):
            return error(404, "User not found.")
        return None

    def _check_note(self, body: dict[str, Any]) -> Reply | None:
        problem = field_problem(body, _NOTE_FIELDS, _NOTE_FIELDS, _NOTE_FIELDS)
        return None if problem is None else error(400, problem)

    def _check_fetch(self, body: dict[str, Any]) -> Reply | None:
        problem = fetch_problem(body)
        return None if problem is None else error(400, problem)

    def _accept_task(self, body: dict[str, Any]) -> tuple[_Job, Reply]:
        number, envelope = self._start_job()
        task_id = self._hex_id()
        on_success = None
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
            shown = {name: body[name] for name in ("subject", "description") if name in body}
            on_success = partial(self._patients.add_task, emr_task_id, body["patient_mrn"], **shown)
        self.stats.tasks_accepted += 1
        job = self._new_job(envelope["job_id"], build, on_success)
        payload = {"success": True, "message": _TASK_ACCEPTED, "task_id": task_id}
        return job, Reply(200, {**payload, "job_id": self._wire_job_id(number)})

    def _accept_note(self, body: dict[str, Any]) -> tuple[_Job, Reply]:
        number, envelope = self._start_job()
        task_note_id = self._hex_id()
        # Cobalt accepts the note before it looks for the task; a missing one fails the job.
        known = body["emr_task_id"] in self._patients
        if not known or self._fail(envelope["job_id"]):
            self.expected_failures.add(envelope["job_id"])
            build = partial(
                make_task_note_failed_event,
                task_note_id=task_note_id,
                reasons=[self._reason(_NOTE_FAILURES) if known else _NO_SUCH_TASK],
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
        return job, Reply(200, {**payload, "job_id": self._wire_job_id(number)})

    def _accept_fetch(self, body: dict[str, Any]) -> tuple[_Job, Reply]:
        _, envelope = self._start_job()
        # Live-fetch job ids are prefixed strings, in the answer as in the event.
        job_id = f"job_{envelope['job_id']}"
        failed = self._fail(job_id)
        build = partial(self._fetch_result, body, job_id, envelope["event_id"], failed)
        self.stats.fetches_accepted += 1
        name = "job_id" if self.live_fetch_shape == "new" else "job_execution_id"
        payload = {"success": True, "message": _FETCH_ACCEPTED, name: job_id}
        return self._new_job(job_id, build, None), Reply(200, payload)

    def _fetch_result(
        self, body: dict[str, Any], job_id: str, event_id: str, failed: bool, *, created: str
    ) -> dict[str, Any]:
        """The fetch's event, from the EHR as it is when the job runs."""
        if failed:
            found: list[dict[str, Any]] = []
            failure = self._reason(_FETCH_FAILURES)
            extra = {"failure_reason": failure["description"], "reasons": [failure]}
        else:
            found, extra = self._patients.search(body), {}
        return make_patient_live_fetch_completed_event(
            job_id=job_id,
            patients=found,
            success=not failed,
            shape=self.live_fetch_shape,
            tasks_at_top_level=self.task_placement == "top_level",
            event_id=event_id,
            timestamp=created,
            access_token_reference_id=self.access_token_reference_id,
            **extra,
        )

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
        self,
        job_id: str,
        build: Callable[..., dict[str, Any]],
        on_success: Callable[[], None] | None,
    ) -> _Job:
        low, high = _latency_range(self.latency)
        return _Job(
            job_id=job_id,
            build=build,
            on_success=on_success,
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
            await self._delivery.deliver(
                record, drop=job.drop, duplicate=job.duplicate, fail_first=job.delivery_error
            )
        finally:
            self._busy -= 1
            if self._busy == 0 and self._idle is not None:
                self._idle.set()
                self._idle = None

    def _finish(self, job: _Job) -> Record:
        record = self._history.add(job.build(created=utc_timestamp()))
        self.stats.jobs_finished += 1
        if job.job_id in self.expected_failures:
            self.stats.failed_jobs += 1
        elif job.on_success is not None:
            job.on_success()
        return record

    def _log(self, line: str) -> None:
        logger.debug("%s", line)
        if self.on_log is not None:
            try:
                self.on_log(line)
            except Exception:
                logger.exception("on_log callback failed")

    # -- GET /v1/webhook-events -----------------------------------------------------------

    async def _get_events(self, scope: Scope, receive: Receive) -> Reply:
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        return self._history.listing(query)
