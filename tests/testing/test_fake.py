from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import anyio
import httpx
import pytest

from cobalt_async import InMemorySink, WebhookReceiver, verify_webhook
from cobalt_async._errors import ConfigurationError
from cobalt_async.models import (
    TaskCreatedEvent,
    TaskFailedEvent,
    TaskNoteCreatedEvent,
    TaskNoteFailedEvent,
    event_from_record,
    parse_event,
)
from cobalt_async.testing import (
    FakeCobalt,
    make_task_created_event,
    make_task_failed_event,
    make_task_note_created_event,
    make_task_note_failed_event,
    sign_webhook,
    signed_delivery,
)

pytestmark = pytest.mark.anyio

LIMIT = 10.0
TASK = {"patient_mrn": "MRN-1", "description": "Call the patient back"}


class RecordingReceiver:
    """Stands in for a WebhookReceiver: records deliveries, answers the scripted statuses."""

    def __init__(self, *statuses: int, log: list[tuple[str, str]] | None = None) -> None:
        self.statuses = list(statuses)
        self.deliveries: list[tuple[bytes, dict[str, str]]] = []
        self.log = log

    async def receive(self, body: bytes, headers: dict[str, str]) -> SimpleNamespace:
        self.deliveries.append((body, dict(headers)))
        if self.log is not None:
            self.log.append(("webhook", json.loads(body)["job_id"]))
        return SimpleNamespace(status_code=self.statuses.pop(0) if self.statuses else 200)

    def attempts(self) -> list[str]:
        return [headers["webhook-attempt"] for _, headers in self.deliveries]


class StubSink:
    """The least a WebhookReceiver needs from a sink."""

    def __init__(self) -> None:
        self.published: list[tuple[Any, str | None]] = []

    async def publish(self, event: Any, *, delivery_id: str | None = None) -> str:
        self.published.append((event, delivery_id))
        return "accepted"


@asynccontextmanager
async def running(**knobs: Any) -> AsyncIterator[tuple[FakeCobalt, httpx.AsyncClient]]:
    knobs = {"latency": 0.0, "retry_delay": 0.01, **knobs}
    async with FakeCobalt(**knobs) as fake:
        async with httpx.AsyncClient(
            transport=fake.transport, base_url=fake.base_url, headers=fake.credentials
        ) as http:
            yield fake, http


async def create_task(http: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    response = await http.post("/tasks", json={**TASK, **fields})
    assert response.status_code == 200, response.text
    return dict(response.json())


def set_header(http: httpx.AsyncClient, name: str, value: str | None) -> None:
    if value is None:
        del http.headers[name]
    else:
        http.headers[name] = value


# -- auth -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "value"),
    [("client_id", "ci_wrong"), ("client_secret", "cs_wrong"), ("client_id", None)],
)
async def test_bad_client_credentials_answer_401(header: str, value: str | None) -> None:
    with anyio.fail_after(LIMIT):
        async with running() as (_, http):
            set_header(http, header, value)
            response = await http.post("/tasks", json=TASK)
    assert response.status_code == 401
    assert response.json() == {"success": False, "message": "Invalid client credentials."}


@pytest.mark.parametrize("value", ["at_expired", None])
async def test_bad_access_token_answers_403_login_required(value: str | None) -> None:
    with anyio.fail_after(LIMIT):
        async with running() as (_, http):
            set_header(http, "access_token", value)
            response = await http.get("/webhook-events")
    assert response.status_code == 403
    assert response.json() == {
        "success": False,
        "error": "login_required",
        "message": "Account link expired. Please go through the integration setup again.",
    }


# -- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "Missing required field: description"),
        ({"description": "x"}, "Missing required field: patient_mrn"),
        ({"description": "  ", "patient_mrn": "M"}, "Missing required field: description"),
        ({**TASK, "color": 1, "age": 2}, "Unexpected fields in request body: age, color"),
        ({**TASK, "notify_list": "u1"}, "notify_list must be an array of strings"),
        ({**TASK, "notify_list": ["u1", 2]}, "notify_list must be an array of strings"),
        ({**TASK, "subject": 5}, "subject must be a string"),
    ],
)
async def test_task_validation_messages(body: dict[str, Any], message: str) -> None:
    with anyio.fail_after(LIMIT):
        async with running() as (fake, http):
            response = await http.post("/tasks", json=body)
    assert response.status_code == 400
    assert response.json() == {"success": False, "message": message}
    assert fake.stats.tasks_accepted == 0
    assert fake.stats.rejected == 1


@pytest.mark.parametrize("content", [b"not json", b"[1, 2]", b"\xff"])
async def test_non_object_body_answers_400(content: bytes) -> None:
    with anyio.fail_after(LIMIT):
        async with running() as (_, http):
            response = await http.post("/tasks", content=content)
    assert response.status_code == 400
    assert response.json()["success"] is False


@pytest.mark.parametrize(
    ("profile", "body", "missing"),
    [
        ("subject_assignee", TASK, "subject"),
        ("subject_assignee", {**TASK, "subject": "Labs"}, "assignee_user_id"),
        ("phone_call", TASK, "phone_call_type_id"),
    ],
)
async def test_profile_requires_its_fields(
    profile: str, body: dict[str, Any], missing: str
) -> None:
    with anyio.fail_after(LIMIT):
        async with running(emr_profile=profile) as (_, http):
            response = await http.post("/tasks", json=body)
    assert response.status_code == 400
    assert response.json()["message"] == f"Missing required field: {missing}"


async def test_profile_accepts_a_complete_body() -> None:
    with anyio.fail_after(LIMIT):
        async with running(emr_profile="subject_assignee") as (_, http):
            await create_task(http, subject="Labs", assignee_user_id="user-1")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "Missing required field: emr_task_id"),
        ({"emr_task_id": "t-1"}, "Missing required field: note"),
        (
            {"emr_task_id": "t-1", "note": "n", "subject": "s"},
            "Unexpected fields in request body: subject",
        ),
    ],
)
async def test_note_validation_messages(body: dict[str, Any], message: str) -> None:
    with anyio.fail_after(LIMIT):
        async with running() as (_, http):
            response = await http.post("/tasks/notes", json=body)
    assert response.status_code == 400
    assert response.json() == {"success": False, "message": message}


# -- 404 and 405 ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/tasks", {**TASK, "patient_mrn": "MRN-UNKNOWN"}, "Patient not found."),
        ("/tasks", {**TASK, "assignee_user_id": "USER-UNKNOWN"}, "User not found."),
        ("/tasks", {**TASK, "notify_list": ["u1", "USER-UNKNOWN"]}, "User not found."),
    ],
)
async def test_unknown_records_answer_404(path: str, body: dict[str, Any], message: str) -> None:
    with anyio.fail_after(LIMIT):
        async with running() as (_, http):
            response = await http.post(path, json=body)
    assert response.status_code == 404
    assert response.json() == {"success": False, "message": message}


async def test_unknown_path_404_and_wrong_method_405() -> None:
    with anyio.fail_after(LIMIT):
        async with running() as (_, http):
            missing = await http.get("/patients")
            wrong = await http.get("/tasks")
    assert missing.status_code == 404
    assert missing.json()["success"] is False
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "POST"


# -- accepted jobs and their events -----------------------------------------------------------


@pytest.mark.parametrize(
    ("job_id_type", "types"), [("int", {int}), ("str", {str}), ("mixed", {int, str})]
)
async def test_task_accepted_with_configured_job_id_type(
    job_id_type: str, types: set[type]
) -> None:
    with anyio.fail_after(LIMIT):
        async with running(job_id_type=job_id_type) as (_, http):
            replies = [await create_task(http) for _ in range(4)]
    assert {type(reply["job_id"]) for reply in replies} == types
    assert [str(reply["job_id"]) for reply in replies] == ["10000", "10001", "10002", "10003"]
    first = replies[0]
    assert first["success"] is True
    assert first["message"] == "Task processing. A webhook event will be sent upon completion."
    assert re.fullmatch(r"[0-9a-f]{24}", first["task_id"])


async def test_task_created_event_shape() -> None:
    receiver = RecordingReceiver()
    with anyio.fail_after(LIMIT):
        async with running(receiver=receiver, job_id_type="int") as (fake, http):
            reply = await create_task(http, subject="Labs", assignee_user_id="user-1")
            await fake.drain()
    event = fake.events[0]
    assert list(event) == [
        "id", "access_token_reference_id", "object", "created", "type", "job_id", "data"
    ]  # fmt: skip
    assert event["job_id"] == "10000"
    assert event["id"].startswith("evt_")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", event["created"])
    data = event["data"]
    assert data["task_id"] == reply["task_id"]
    assert data["subject"] == "Labs"
    assert data["assignee_user_id"] == "user-1"
    assert (data["description"], data["patient_mrn"]) == (TASK["description"], TASK["patient_mrn"])
    parsed = parse_event(receiver.deliveries[0][0])
    assert isinstance(parsed, TaskCreatedEvent)
    assert parsed.data.emr_task_id == data["emr_task_id"]


async def test_note_on_a_created_task_then_its_event() -> None:
    with anyio.fail_after(LIMIT):
        async with running(receiver=RecordingReceiver()) as (fake, http):
            await create_task(http)
            await fake.drain()
            emr_task_id = fake.events[0]["data"]["emr_task_id"]
            response = await http.post(
                "/tasks/notes", json={"emr_task_id": emr_task_id, "note": "Called"}
            )
            await fake.drain()
    reply = response.json()
    assert response.status_code == 200
    assert reply["message"] == "Task note processing. A webhook event will be sent upon completion."
    assert re.fullmatch(r"[0-9a-f]{24}", reply["task_note_id"])
    event = parse_event(fake.events[1])
    assert isinstance(event, TaskNoteCreatedEvent)
    assert event.job_id == str(reply["job_id"]) == "10001"
    assert (event.data.emr_task_id, event.data.note) == (emr_task_id, "Called")
    assert event.data.task_note_id == reply["task_note_id"]
    assert event.data.emr_note_id


async def test_add_emr_task_lets_notes_target_it() -> None:
    with anyio.fail_after(LIMIT):
        async with running() as (fake, http):
            fake.add_emr_task("ehr-42")
            response = await http.post("/tasks/notes", json={"emr_task_id": "ehr-42", "note": "n"})
    assert response.status_code == 200


async def test_failed_jobs_carry_reasons_and_are_expected() -> None:
    with anyio.fail_after(LIMIT):
        async with running(failure_rate=1.0, receiver=RecordingReceiver()) as (fake, http):
            reply = await create_task(http)
            await fake.drain()  # concurrent jobs may finish in any order
            fake.add_emr_task("ehr-1")
            note = await http.post("/tasks/notes", json={"emr_task_id": "ehr-1", "note": "n"})
            await fake.drain()
            orphan = await http.post(
                "/tasks/notes",
                json={"emr_task_id": "failed-tasks-create-nothing", "note": "n"},
            )
            await fake.drain()
    task_event, note_event, orphan_event = (parse_event(event) for event in fake.events)
    assert isinstance(orphan_event, TaskNoteFailedEvent)
    assert [reason.code for reason in orphan_event.data.reasons] == ["task_not_found"]
    assert isinstance(task_event, TaskFailedEvent)
    assert task_event.data.task_id == reply["task_id"]
    assert task_event.data.reasons
    assert task_event.data.reasons[0].code
    assert task_event.data.failure_reason == task_event.data.reasons[0].description
    assert isinstance(note_event, TaskNoteFailedEvent)
    assert note_event.data.task_note_id == note.json()["task_note_id"]
    assert orphan.status_code == 200  # accepted: the EHR is asked only when the job runs
    assert fake.expected_failures == {"10000", "10001", "10002"}
    assert fake.stats.failed_jobs == 3


# -- delivery faults --------------------------------------------------------------------------


async def test_early_delivery_is_answered_before_the_post_response() -> None:
    log: list[tuple[str, str]] = []
    with anyio.fail_after(LIMIT):
        async with running(receiver=RecordingReceiver(log=log), early_rate=1.0) as (fake, http):
            reply = await create_task(http)
            log.append(("response", str(reply["job_id"])))
    assert log == [("webhook", "10000"), ("response", "10000")]
    assert fake.stats.early == 1


async def test_duplicate_delivered_twice_with_the_same_webhook_id() -> None:
    receiver = RecordingReceiver()
    with anyio.fail_after(LIMIT):
        async with running(receiver=receiver, duplicate_rate=1.0) as (fake, http):
            await create_task(http)
            await fake.drain()
    (body_1, headers_1), (body_2, headers_2) = receiver.deliveries
    assert body_1 == body_2
    assert headers_1["webhook-id"] == headers_2["webhook-id"] == fake.events[0]["id"]
    assert fake.stats.duplicated == 1
    assert fake.stats.deliveries_succeeded == 2


async def test_dropped_event_is_never_delivered_but_is_listed() -> None:
    receiver = RecordingReceiver()
    with anyio.fail_after(LIMIT):
        async with running(receiver=receiver, drop_rate=1.0) as (fake, http):
            reply = await create_task(http)
            await fake.drain()
            listed = await http.get("/webhook-events", params={"job_id": reply["job_id"]})
    assert receiver.deliveries == []
    assert fake.stats.dropped == 1
    (item,) = listed.json()["webhook_events"]
    assert item["event_type"] == "task.created"
    assert item["delivery_status"] == "failed"


async def test_network_error_is_retried_once_as_attempt_2() -> None:
    receiver = RecordingReceiver()
    with anyio.fail_after(LIMIT):
        async with running(receiver=receiver, delivery_error_rate=1.0) as (fake, http):
            await create_task(http)
            await fake.drain()
    assert receiver.attempts() == ["2"]
    assert (fake.stats.deliveries_attempted, fake.stats.retried) == (2, 1)
    assert fake.stats.deliveries_succeeded == 1


@pytest.mark.parametrize(
    ("statuses", "attempts", "delivered"),
    [
        ((503, 200), ["1", "2"], "success"),
        ((429, 200), ["1", "2"], "success"),
        ((500, 500), ["1", "2"], "failed"),
        ((400,), ["1"], "failed"),
        ((401,), ["1"], "failed"),
    ],
)
async def test_receiver_status_drives_the_single_retry(
    statuses: tuple[int, ...], attempts: list[str], delivered: str
) -> None:
    receiver = RecordingReceiver(*statuses)
    with anyio.fail_after(LIMIT):
        async with running(receiver=receiver, record_shape="old") as (fake, http):
            await create_task(http)
            await fake.drain()
            listed = await http.get("/webhook-events")
    assert receiver.attempts() == attempts
    ids = {headers["webhook-id"] for _, headers in receiver.deliveries}
    assert ids == {fake.events[0]["id"]}
    (item,) = listed.json()["webhook_events"]
    assert item["status"] == delivered
    assert item["delivery_attempts"] == len(attempts)
    assert item["response_status_code"] == statuses[len(attempts) - 1]


async def test_receiver_slower_than_the_timeout_is_not_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("cobalt_async.testing._delivery.FIRST_TIMEOUT", 0.05)
    calls: list[int] = []

    class SlowReceiver:
        async def receive(self, body: bytes, headers: dict[str, str]) -> SimpleNamespace:
            calls.append(1)
            await anyio.sleep_forever()
            raise AssertionError  # pragma: no cover

    with anyio.fail_after(LIMIT):
        async with running(receiver=SlowReceiver()) as (fake, http):
            await create_task(http)
            await fake.drain()
    assert calls == [1]
    assert (fake.stats.retried, fake.stats.deliveries_failed) == (0, 1)


async def test_receiver_exception_counts_as_500_and_is_retried() -> None:
    class CrashingReceiver(RecordingReceiver):
        async def receive(self, body: bytes, headers: dict[str, str]) -> SimpleNamespace:
            await super().receive(body, headers)
            raise RuntimeError("bug in the app")

    receiver = CrashingReceiver()
    with anyio.fail_after(LIMIT):
        async with running(receiver=receiver) as (fake, http):
            await create_task(http)
            await fake.drain()
    assert receiver.attempts() == ["1", "2"]
    assert fake.stats.deliveries_failed == 1


async def test_delivery_is_signed_as_cobalt_signs() -> None:
    receiver = RecordingReceiver()
    with anyio.fail_after(LIMIT):
        async with running(receiver=receiver, webhook_secret="whsec_abc") as (fake, http):
            await create_task(http, description="Résumé: ünïcode stays literal")
            await fake.drain()
    ((body, headers),) = receiver.deliveries
    event = fake.events[0]
    assert body == json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()
    assert headers["cobalt-verification"] == sign_webhook(event, "whsec_abc")
    assert headers["content-type"] == "application/json"
    assert headers["webhook-timestamp"] == event["created"]
    assert isinstance(verify_webhook(body, headers, ["whsec_abc"]), TaskCreatedEvent)


async def test_delivers_into_a_real_webhook_receiver() -> None:
    sink = StubSink()
    receiver = WebhookReceiver(sink, secrets=["whsec_test"])  # type: ignore[arg-type]
    with anyio.fail_after(LIMIT):
        async with running(receiver=receiver) as (fake, http):
            await create_task(http)
            await fake.drain()
    ((event, delivery_id),) = sink.published
    assert delivery_id == fake.events[0]["id"]
    assert event.job_id == "10000"
    assert fake.stats.deliveries_succeeded == 1


async def test_http_delivery_to_webhook_url_with_retry_policy() -> None:
    requests: list[httpx.Request] = []
    script: list[Exception | int] = [httpx.ConnectError("refused"), 200, httpx.ReadTimeout("slow")]

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        outcome = script.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return httpx.Response(outcome)

    knobs = {
        "webhook_url": "http://app.test/hooks",
        "webhook_transport": httpx.MockTransport(handler),
    }
    with anyio.fail_after(LIMIT):
        async with running(**knobs) as (fake, http):
            await create_task(http)
            await fake.drain()
            await create_task(http)
            await fake.drain()
    assert [str(request.url) for request in requests] == ["http://app.test/hooks"] * 3
    assert [request.headers["webhook-attempt"] for request in requests] == ["1", "2", "1"]
    assert (
        requests[1].content
        == json.dumps(fake.events[0], separators=(",", ":"), ensure_ascii=False).encode()
    )
    stats = fake.stats
    assert (stats.retried, stats.deliveries_succeeded, stats.deliveries_failed) == (1, 1, 1)


# -- injected API faults ----------------------------------------------------------------------


@pytest.mark.parametrize(("retry_after", "header"), [(1.0, "1"), (0.25, "0.25"), (None, None)])
async def test_rate_limited_post_answers_429_and_creates_nothing(
    retry_after: float | None, header: str | None
) -> None:
    with anyio.fail_after(LIMIT):
        async with running(rate_limit_rate=1.0, retry_after=retry_after) as (fake, http):
            response = await http.post("/tasks", json=TASK)
            await fake.drain()
    assert response.status_code == 429
    assert response.headers.get("retry-after") == header
    assert response.json()["success"] is False
    assert (fake.stats.rate_limited, fake.stats.tasks_accepted, fake.events) == (1, 0, [])


async def test_api_error_answers_503_and_creates_nothing() -> None:
    with anyio.fail_after(LIMIT):
        async with running(api_error_rate=1.0) as (fake, http):
            response = await http.post("/tasks", json=TASK)
            await fake.drain()
    assert response.status_code == 503
    assert response.json()["success"] is False
    assert response.json()["message"]
    assert (fake.stats.api_errors, fake.stats.tasks_accepted, fake.events) == (1, 0, [])


async def test_response_delay_slows_the_answer() -> None:
    with anyio.fail_after(LIMIT):
        async with running(response_delay=0.05) as (_, http):
            start = anyio.current_time()
            await create_task(http)
            assert anyio.current_time() - start >= 0.05


# -- GET /v1/webhook-events -------------------------------------------------------------------


async def test_webhook_events_filters_by_job_id_and_type() -> None:
    with anyio.fail_after(LIMIT):
        async with running(receiver=RecordingReceiver()) as (fake, http):
            replies = [await create_task(http) for _ in range(3)]
            fake.add_emr_task("ehr-1")
            await http.post("/tasks/notes", json={"emr_task_id": "ehr-1", "note": "n"})
            await fake.drain()
            one = await http.get("/webhook-events", params={"job_id": replies[1]["job_id"]})
            notes = await http.get("/webhook-events", params={"event_type": "task_note.created"})
            none = await http.get("/webhook-events", params={"job_id": "999"})
    (item,) = one.json()["webhook_events"]
    assert item["job_id"] == str(replies[1]["job_id"])
    assert item["data"]["task_id"] == replies[1]["task_id"]
    assert item["delivery_status"] == "success"
    assert isinstance(event_from_record(item), TaskCreatedEvent)
    assert [i["event_type"] for i in notes.json()["webhook_events"]] == ["task_note.created"]
    assert none.json()["webhook_events"] == []
    assert none.json()["pagination"]["total_count"] == 0


async def test_webhook_events_paginate_and_sort() -> None:
    with anyio.fail_after(LIMIT):
        async with running() as (fake, http):
            for _ in range(5):
                await create_task(http)
            await fake.drain()
            pages = [
                (await http.get("/webhook-events", params={"page_size": 2, "page": page})).json()
                for page in (1, 2, 3)
            ]
            ascending = await http.get("/webhook-events", params={"sort": "created_at"})
    finished = [event["id"] for event in fake.events]
    newest_first = [item["event_id"] for page in pages for item in page["webhook_events"]]
    assert newest_first == finished[::-1]
    assert pages[2]["pagination"] == {
        "current_page": 3, "total_pages": 3, "total_count": 5, "page_size": 2
    }  # fmt: skip
    assert [item["event_id"] for item in ascending.json()["webhook_events"]] == finished


@pytest.mark.parametrize(
    "params",
    [
        {"page": "0"},
        {"page_size": "x"},
        {"page_size": "101"},  # Cobalt documents 100 as the most, so does the fake
        {"sort": "created"},
        {"delivery_status": "pending"},  # the older `status` filter takes pending; this not
        {"start_date": "2026-1-2"},
        {"end_date": "yesterday"},
    ],
)
async def test_webhook_events_bad_query_answers_400(params: dict[str, str]) -> None:
    with anyio.fail_after(LIMIT):
        async with running() as (_, http):
            response = await http.get("/webhook-events", params=params)
    assert response.status_code == 400


async def test_webhook_events_lists_only_finished_jobs() -> None:
    with anyio.fail_after(LIMIT):
        async with running(latency=60.0) as (fake, http):
            await create_task(http)
            listed = await http.get("/webhook-events")
            assert fake.pending == 1
    # Leaving the fake abandoned the job still waiting out its latency.
    assert listed.json()["webhook_events"] == []
    assert fake.pending == 0


async def test_old_record_shape() -> None:
    with anyio.fail_after(LIMIT):
        async with running(record_shape="old", receiver=RecordingReceiver()) as (fake, http):
            reply = await create_task(http)
            await fake.drain()
            listed = await http.get("/webhook-events")
    (item,) = listed.json()["webhook_events"]
    event = fake.events[0]
    assert item["id"] == event["id"]
    assert item["type"] == "task.created"
    assert item["object"] == "event"
    assert item["created"] == event["created"]
    assert item["job_id"] == str(reply["job_id"])
    assert (item["status"], item["delivered"], item["delivery_attempts"]) == ("success", True, 1)
    assert item["data"] == event["data"]
    assert isinstance(event_from_record(item), TaskCreatedEvent)


async def test_history_is_bounded_by_max_events() -> None:
    with anyio.fail_after(LIMIT):
        async with running(max_events=2) as (fake, http):
            replies = []
            for _ in range(3):
                replies.append(await create_task(http))
                await fake.drain()  # finish in submission order, so the first is the oldest
            forgotten = await http.get("/webhook-events", params={"job_id": replies[0]["job_id"]})
            listed = await http.get("/webhook-events")
    assert [event["job_id"] for event in fake.events] == ["10001", "10002"]
    assert forgotten.json()["webhook_events"] == []
    assert listed.json()["pagination"]["total_count"] == 2


# -- lifecycle --------------------------------------------------------------------------------


async def test_lifespan_startup_and_shutdown() -> None:
    fake = FakeCobalt(latency=0.0)
    to_app, app_inbox = anyio.create_memory_object_stream[MutableMapping[str, Any]](4)
    app_outbox, from_app = anyio.create_memory_object_stream[MutableMapping[str, Any]](4)
    scope: dict[str, Any] = {"type": "lifespan", "asgi": {"version": "3.0"}}
    with anyio.fail_after(LIMIT), to_app, app_inbox, app_outbox, from_app:
        async with (
            anyio.create_task_group() as tg,
            httpx.AsyncClient(
                transport=fake.transport, base_url=fake.base_url, headers=fake.credentials
            ) as http,
        ):
            tg.start_soon(fake, scope, app_inbox.receive, app_outbox.send)
            await to_app.send({"type": "lifespan.startup"})
            assert await from_app.receive() == {"type": "lifespan.startup.complete"}
            await create_task(http)
            await to_app.send({"type": "lifespan.shutdown"})
            assert await from_app.receive() == {"type": "lifespan.shutdown.complete"}
            with pytest.raises(RuntimeError, match="not running"):
                await http.post("/tasks", json=TASK)


async def test_request_outside_the_lifecycle_fails_clearly() -> None:
    fake = FakeCobalt()
    with anyio.fail_after(LIMIT):
        async with httpx.AsyncClient(transport=fake.transport, base_url=fake.base_url) as http:
            with pytest.raises(RuntimeError, match="async with FakeCobalt"):
                await http.post("/tasks", json=TASK)


async def test_cannot_enter_twice() -> None:
    with anyio.fail_after(LIMIT):
        async with FakeCobalt() as fake:
            with pytest.raises(RuntimeError, match="already running"):
                await fake.__aenter__()


@pytest.mark.parametrize(
    "knobs",
    [
        {"failure_rate": 1.5},
        {"latency": -1.0},
        {"latency": (2.0, 1.0)},
        {"job_id_type": "float"},
        {"emr_profile": "epic"},
        {"record_shape": "newest"},
        {"max_events": 0},
        {"receiver": RecordingReceiver(), "webhook_url": "http://app.test/hooks"},
    ],
)
def test_bad_configuration_is_refused(knobs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        FakeCobalt(**knobs)


# -- reproducibility and logs -----------------------------------------------------------------


async def run_seeded(seed: int) -> tuple[list[dict[str, Any]], set[str], dict[str, str]]:
    knobs = {"seed": seed, "failure_rate": 0.5, "duplicate_rate": 0.5, "latency": (0.0, 0.01)}
    async with running(receiver=RecordingReceiver(), **knobs) as (fake, http):
        replies = [await create_task(http) for _ in range(20)]
        await fake.drain()
    return replies, fake.expected_failures, {e["job_id"]: e["id"] for e in fake.events}


async def test_same_seed_same_run() -> None:
    with anyio.fail_after(LIMIT):
        first, second, other = await run_seeded(7), await run_seeded(7), await run_seeded(8)
    assert first == second
    assert 0 < len(first[1]) < 20
    assert other[1] != first[1]


async def test_log_lines_carry_no_secrets_or_text() -> None:
    lines: list[str] = []
    with anyio.fail_after(LIMIT):
        async with running(receiver=RecordingReceiver(503), on_log=lines.append) as (fake, http):
            await create_task(http)
            await fake.drain()  # the receiver's 503 must meet the task's first attempt
            fake.add_emr_task("ehr-1")
            await http.post("/tasks/notes", json={"emr_task_id": "ehr-1", "note": "Secret note"})
            await fake.drain()
    assert "POST /v1/tasks -> 200 job_id=10000" in lines
    assert "webhook task.created job_id=10000 attempt=2 -> 200" in lines
    text = "\n".join(lines)
    secrets = ("ci_test", "cs_test", "at_test", "whsec_test", TASK["description"], "Secret note")
    assert not [secret for secret in secrets if secret in text]


# -- factories --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("factory", "model"),
    [
        (make_task_created_event, TaskCreatedEvent),
        (make_task_failed_event, TaskFailedEvent),
        (make_task_note_created_event, TaskNoteCreatedEvent),
        (make_task_note_failed_event, TaskNoteFailedEvent),
    ],
)
def test_factories_build_parseable_events(factory: Any, model: type) -> None:
    event = factory(job_id=123, extra_member="kept")
    assert event["job_id"] == "123"
    assert event["data"]["extra_member"] == "kept"
    assert isinstance(parse_event(event), model)


def test_factory_override_none_leaves_the_member_out() -> None:
    event = make_task_created_event(emr_task_id="ehr-1", subject=None)
    assert "subject" not in event["data"]
    assert event["data"]["emr_task_id"] == "ehr-1"


def test_signed_delivery_matches_cobalt() -> None:
    event = make_task_failed_event(job_id="5", event_id="evt_1", created="2025-01-01T00:00:00Z")
    body, headers = signed_delivery(event, "whsec_x", attempt=2)
    assert body == json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()
    assert headers == {
        "content-type": "application/json",
        "cobalt-verification": sign_webhook(body, "whsec_x"),
        "webhook-id": "evt_1",
        "webhook-timestamp": "2025-01-01T00:00:00Z",
        "webhook-attempt": "2",
    }


@pytest.mark.parametrize(
    "name", ["subject", "assignee_user_id", "phone_call_type_id", "notify_list"]
)
async def test_null_for_an_optional_task_field_is_a_400_like_any_wrong_type(name: str) -> None:
    """Cobalt's documents: an optional field is left out, not sent as null."""
    with anyio.fail_after(LIMIT):
        async with running() as (fake, http):
            response = await http.post("/tasks", json={**TASK, name: None})
    assert (400, 0) == (response.status_code, fake.stats.tasks_accepted)


async def test_webhook_events_filter_by_day_and_delivery_status() -> None:
    """start_date and end_date are inclusive days; delivery_status takes success or failed."""
    with anyio.fail_after(LIMIT):
        async with running() as (fake, http):
            await create_task(http)  # no webhook registered: its delivery "failed"
            await fake.drain()
            today = fake.events[0]["created"][:10]

            async def count(**params: str) -> int:
                answer = (await http.get("/webhook-events", params=params)).json()
                return int(answer["pagination"]["total_count"])

            counts = [
                await count(start_date=today, end_date=today),
                await count(start_date="2999-01-01"),
                await count(end_date="2000-01-01"),
                await count(delivery_status="failed"),
                await count(delivery_status="success"),
            ]
    assert [1, 0, 0, 1, 0] == counts


async def test_knobs_changed_while_running_take_effect() -> None:
    """The receiver, the retry pause, the record shape and the history bound, mid-run."""
    first, second = InMemorySink(), InMemorySink()
    with anyio.fail_after(LIMIT):
        async with running() as (fake, http):
            fake.receiver = WebhookReceiver(first, secrets=[fake.webhook_secret])
            one = await create_task(http)
            await fake.drain()
            fake.receiver = WebhookReceiver(second, secrets=[fake.webhook_secret])
            fake.record_shape = "old"
            two = await create_task(http)
            await fake.drain()
            listed = (await http.get("/webhook-events")).json()["webhook_events"]
            fake.max_events = 1
            three = await create_task(http)
            await fake.drain()
    ids = [str(answer["job_id"]) for answer in (one, two, three)]
    assert list(await first.get_outcomes(ids)) == ids[:1]
    assert list(await second.get_outcomes(ids)) == ids[1:]
    assert all("status" in item and "delivery_status" not in item for item in listed)
    assert [ids[2]] == [event["job_id"] for event in fake.events]
