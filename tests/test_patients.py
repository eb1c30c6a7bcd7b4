"""
``client.patients.fetch``: local validation, the live-fetch envelopes through every way an
outcome arrives, and the whole workflow (create, fetch, note) against FakeCobalt.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date, datetime
from typing import Any

import anyio
import httpx
import pytest
import respx
from fastapi import FastAPI

from cobalt_async import (
    APIError,
    CobaltClient,
    InMemorySink,
    JobFailedError,
    JobStatus,
    PatientLiveFetchCompletedEvent,
    RequestValidationError,
    WebhookReceiver,
)
from cobalt_async._servers import serve
from cobalt_async.asgi import WebhookApp
from cobalt_async.fastapi import CobaltDep, cobalt_lifespan, webhook_router
from cobalt_async.models import PatientLiveFetchData, parse_event
from cobalt_async.sinks import RedisSink, Sink
from cobalt_async.testing import (
    FakeCobalt,
    app_with_fake,
    make_patient_live_fetch_completed_event,
    signed_delivery,
)

pytestmark = pytest.mark.anyio

LIMIT = 10
WIRE = "https://api.test/v1"
SECRET = "whsec_test"
SHAPES = [
    pytest.param({"live_fetch_shape": "new"}, id="job_id"),
    pytest.param({"live_fetch_shape": "old"}, id="job_execution_id"),
    pytest.param({"task_placement": "top_level"}, id="tasks-at-top-level"),
]


@asynccontextmanager
async def ehr(
    sink: Sink | None = None, *, receiver_sink: Sink | None = None, **knobs: Any
) -> AsyncIterator[tuple[FakeCobalt, CobaltClient]]:
    """A FakeCobalt delivering to a receiver on *receiver_sink* (or *sink*), and a client."""
    into = receiver_sink or sink
    receiver = None if into is None else WebhookReceiver(into, secrets=[SECRET])
    fake = FakeCobalt(receiver=receiver, webhook_secret=SECRET, latency=0.01, seed=7, **knobs)
    fake.add_patient("MRN-1", first_name="Jane", last_name="Doe", date_of_birth="1990-01-31")
    async with (
        fake,
        CobaltClient(
            transport=fake.transport, base_url=fake.base_url, sink=sink, **fake.credentials
        ) as client,
    ):
        yield fake, client


# -- local validation: nothing is sent --------------------------------------------------------

BAD_FETCHES = [
    ({}, "search_by", "Missing required field: search_by"),
    ({"search_by": "nickname", "mrn": "M"}, "search_by", "'dob', 'name', 'phone' or 'mrn'"),
    ({"search_by": "mrn"}, "mrn", "search_by='mrn' needs mrn"),
    ({"search_by": "dob"}, "dob", "search_by='dob' needs dob"),
    ({"search_by": "phone"}, "phone", "search_by='phone' needs phone"),
    ({"search_by": "name"}, "first_name", "needs first_name or last_name"),
    ({"search_by": "name", "first_name": " "}, "first_name", "non-empty string"),
    ({"search_by": "dob", "dob": "31/01/1990"}, "dob", "YYYY-MM-DD"),
    ({"search_by": "dob", "dob": "1990-02-30"}, "dob", "YYYY-MM-DD"),
    ({"search_by": "dob", "dob": "2999-01-01"}, "dob", "must not be in the future"),
    ({"search_by": "dob", "dob": datetime(1990, 1, 31, 12)}, "dob", "not a datetime"),
    ({"search_by": "phone", "phone": "5551234567"}, "phone", "XXX-XXX-XXXX"),
    ({"search_by": "phone", "phone": "(555) 123-4567"}, "phone", "XXX-XXX-XXXX"),
    ({"search_by": "mrn", "mrn": 12345}, "mrn", "valid string"),
    ({"search_by": "mrn", "mrn": "M", "include": ["task"]}, "include", "'tasks' or 'insurances'"),
    ({"search_by": "mrn", "mrn": "M", "include": "tasks,,"}, "include", "'tasks' or"),
    ({"search_by": "mrn", "mrn": "M", "include": 3}, "include", "valid list"),
    ({"search_by": "mrn", "mrn": "M", "patient_mrn": "M"}, "patient_mrn", "Unexpected fields"),
]


@pytest.mark.parametrize(("fields", "field", "message"), BAD_FETCHES)
async def test_bad_fetches_are_refused_locally_naming_the_field(
    fields: dict[str, Any], field: str, message: str
) -> None:
    with anyio.fail_after(LIMIT):
        async with ehr() as (fake, client):
            with pytest.raises(RequestValidationError, match=message.replace("(", r"\(")) as raised:
                await client.patients.fetch(**fields)
    assert field == raised.value.field
    assert 0 == fake.stats.requests


@pytest.mark.respx(base_url=WIRE)
@pytest.mark.parametrize(
    ("fields", "body"),
    [
        (
            {"search_by": "mrn", "mrn": "MRN-1", "include": ["tasks"]},
            {"search_by": "mrn", "mrn": "MRN-1", "include": ["tasks"]},
        ),
        (
            {"search_by": "dob", "dob": date(1990, 1, 31), "include": "tasks, insurances"},
            {"search_by": "dob", "dob": "1990-01-31", "include": ["tasks", "insurances"]},
        ),
        (
            {"search_by": "name", "last_name": "Doe", "include": ("tasks", "tasks")},
            {"search_by": "name", "last_name": "Doe", "include": ["tasks"]},
        ),
        (
            {"search_by": "phone", "phone": "555-123-4567", "first_name": None},
            {"search_by": "phone", "phone": "555-123-4567"},
        ),
    ],
)
async def test_the_body_sent_is_cobalts_documented_one(
    respx_mock: respx.MockRouter, fields: dict[str, Any], body: dict[str, Any]
) -> None:
    """A date becomes YYYY-MM-DD; include always goes as a list, each value once."""
    route = respx_mock.post("/patients/fetch").respond(json={"success": True, "job_id": "job_1"})
    async with CobaltClient(base_url=WIRE, client_id="c", client_secret="s", access_token="a") as c:
        handle = await c.patients.fetch(**fields)
    assert body == json.loads(route.calls.last.request.content)
    assert ("job_1", "patient_fetch") == (handle.job_id, handle.kind)


# -- the acceptance answer -------------------------------------------------------------------


@pytest.mark.respx(base_url=WIRE)
@pytest.mark.parametrize(
    "answer", [{"job_id": "job_7"}, {"job_execution_id": "job_7"}, {"job_id": 7}]
)
async def test_either_name_of_the_job_id_is_read(
    respx_mock: respx.MockRouter, answer: dict[str, Any]
) -> None:
    respx_mock.post("/patients/fetch").respond(json={"success": True, **answer})
    async with CobaltClient(base_url=WIRE, client_id="c", client_secret="s", access_token="a") as c:
        handle = await c.patients.fetch(search_by="mrn", mrn="MRN-1")
    assert handle.job_id in ("job_7", "7")


@pytest.mark.respx(base_url=WIRE)
async def test_a_fetch_only_reads_so_a_503_is_retried(respx_mock: respx.MockRouter) -> None:
    """Unlike a create, a live fetch writes nothing into the EHR: it is retried like a GET."""
    route = respx_mock.post("/patients/fetch").mock(
        side_effect=[httpx.Response(503), httpx.Response(200, json={"job_id": "job_2"})]
    )
    async with CobaltClient(
        base_url=WIRE, client_id="c", client_secret="s", access_token="a", max_retries=1
    ) as c:
        handle = await c.patients.fetch(search_by="mrn", mrn="MRN-1")
    assert ("job_2", 2) == (handle.job_id, route.call_count)


@pytest.mark.respx(base_url=WIRE)
async def test_an_answer_without_a_job_id_is_an_error_whose_fetch_may_be_repeated(
    respx_mock: respx.MockRouter,
) -> None:
    respx_mock.post("/patients/fetch").respond(json={"success": True, "message": "ok"})
    async with CobaltClient(base_url=WIRE, client_id="c", client_secret="s", access_token="a") as c:
        with pytest.raises(APIError, match="job_id") as raised:
            await c.patients.fetch(search_by="mrn", mrn="MRN-1")
    assert not raised.value.outcome_unknown


# -- the completion event, however it arrives ------------------------------------------------


@pytest.mark.parametrize("knobs", SHAPES)
async def test_a_webhook_resolves_the_fetch_in_every_envelope(knobs: dict[str, str]) -> None:
    sink = InMemorySink()
    with anyio.fail_after(LIMIT):
        async with ehr(sink, **knobs) as (fake, client):
            staff_task = fake.add_task("MRN-1", subject="Refill request", priority="high")
            handle = await client.patients.fetch(search_by="mrn", mrn="MRN-1", include="tasks")
            found = await handle
    assert isinstance(found, PatientLiveFetchCompletedEvent)
    assert (handle.job_id, "webhook") == (found.job_id, handle.resolved_via)
    (patient,) = found.data.patients
    assert ("MRN-1", "Doe") == (patient.mrn, patient.last_name)
    assert [staff_task] == [task.emr_task_id for task in patient.tasks]
    assert [staff_task] == [task.emr_task_id for task in found.data.tasks]
    assert "high" == patient.tasks[0].model_extra["priority"]  # type: ignore[index]


@pytest.mark.parametrize("knobs", SHAPES)
async def test_without_a_sink_the_fetch_resolves_by_polling(knobs: dict[str, str]) -> None:
    """The poll backstop reads live-fetch records of GET /v1/webhook-events like any other."""
    with anyio.fail_after(LIMIT):
        async with ehr(**knobs) as (fake, client):
            fake.add_task("MRN-1", emr_task_id="emr-staff")
            handle = await client.patients.fetch(search_by="mrn", mrn="MRN-1", include=["tasks"])
            found = await handle
    assert "poll" == handle.resolved_via
    assert ["emr-staff"] == [task.emr_task_id for task in found.data.patients[0].tasks]


async def test_the_asgi_app_resolves_a_fetch_in_the_older_envelope() -> None:
    """An older live-fetch event (user_id, job_execution_id) through WebhookApp over ASGI."""
    sink = InMemorySink()
    app = WebhookApp(WebhookReceiver(sink, secrets=[SECRET]))
    fake = FakeCobalt(webhook_secret=SECRET, latency=0.01, live_fetch_shape="old")
    fake.webhook_url, fake.webhook_transport = "http://hooks.test/", httpx.ASGITransport(app=app)
    fake.add_task("MRN-1", emr_task_id="emr-1")
    with anyio.fail_after(LIMIT):
        async with (
            fake,
            CobaltClient(
                transport=fake.transport, base_url=fake.base_url, sink=sink, **fake.credentials
            ) as client,
        ):
            found = await (
                await client.patients.fetch(search_by="mrn", mrn="MRN-1", include="tasks")
            )
    assert "job_execution_id" in fake.events[0]
    assert ["emr-1"] == [task.emr_task_id for task in found.data.tasks]


async def test_a_failed_fetch_raises_job_failed_error_with_its_reasons() -> None:
    with anyio.fail_after(LIMIT):
        async with ehr(InMemorySink(), failure_rate=1.0) as (fake, client):
            handle = await client.patients.fetch(search_by="mrn", mrn="MRN-1")
            with pytest.raises(JobFailedError, match="emr_timeout") as raised:
                await handle
    assert JobStatus.FAILED == handle.status
    assert {handle.job_id} == fake.expected_failures
    assert isinstance(raised.value.event, PatientLiveFetchCompletedEvent)


async def test_a_handle_attached_by_job_id_reads_a_stored_fetch() -> None:
    """An early webhook is kept; attach(job_id, "patient_fetch") in any process reads it."""
    sink = InMemorySink()
    receiver = WebhookReceiver(sink, secrets=[SECRET])
    event = make_patient_live_fetch_completed_event(job_id="job_9", shape="old")
    await receiver.receive(*signed_delivery(event, SECRET))
    async with CobaltClient(
        base_url=WIRE, client_id="c", client_secret="s", access_token="a", sink=sink
    ) as client:
        found = await client.jobs.attach("job_9", "patient_fetch").wait(timeout=1)
        with pytest.raises(ValueError, match="'task', 'task_note' or 'patient_fetch'"):
            client.jobs.attach("job_9", "patients")  # type: ignore[call-overload]
    assert "9bef4113-e9ce-4895-9a17-2c18cd625116" == found.data.patients[0].tasks[0].emr_task_id


# -- the whole workflow ----------------------------------------------------------------------


@pytest.mark.parametrize("knobs", SHAPES)
async def test_create_fetch_then_note_every_task_of_the_patient(knobs: dict[str, str]) -> None:
    """A task created through POST /v1/tasks joins its patient's chart beside staff's own."""
    with anyio.fail_after(LIMIT):
        async with ehr(InMemorySink(), **knobs) as (fake, client):
            staff = fake.add_task("MRN-1", subject="Call the pharmacy")
            created = await (await client.tasks.create(patient_mrn="MRN-1", description="Labs"))
            found = await (
                await client.patients.fetch(search_by="mrn", mrn="MRN-1", include="tasks")
            )
            notes = [
                await client.tasks.notes.create(emr_task_id=task.emr_task_id, note="Called")
                for task in found.data.patients[0].tasks
            ]
            written = [(await note).data.emr_task_id for note in notes]
    assert {staff, created.data.emr_task_id} == set(written)
    assert 2 == len(written)


async def test_a_note_for_a_task_the_ehr_does_not_hold_ends_in_task_note_failed() -> None:
    with anyio.fail_after(LIMIT):
        async with ehr(InMemorySink()) as (_, client):
            note = await client.tasks.notes.create(emr_task_id="emr-never-made", note="Called")
            with pytest.raises(
                JobFailedError, match=r"\(task_note.failed\); reasons: task_not_found"
            ):
                await note


@pytest.mark.parametrize(
    ("search", "mrns"),
    [
        ({"search_by": "dob", "dob": "1990-01-31"}, ["MRN-1", "MRN-2"]),
        ({"search_by": "dob", "dob": "1990-01-31", "first_name": "jane"}, ["MRN-1"]),
        ({"search_by": "name", "last_name": "DOE"}, ["MRN-1", "MRN-2"]),
        ({"search_by": "phone", "phone": "555-123-4567"}, ["MRN-2"]),
        ({"search_by": "mrn", "mrn": "MRN-404"}, []),
    ],
)
async def test_the_fake_finds_the_patients_every_search_mode_names(
    search: dict[str, str], mrns: list[str]
) -> None:
    with anyio.fail_after(LIMIT):
        async with ehr(InMemorySink()) as (fake, client):
            fake.add_patient(
                "MRN-2", first_name="John", last_name="Doe", date_of_birth="1990-01-31",
                phone="555-123-4567",
            )  # fmt: skip
            found = await (await client.patients.fetch(**search))  # type: ignore[arg-type]
    assert mrns == [patient.mrn for patient in found.data.patients]
    assert len(mrns) == found.data.patient_count
    assert all(patient.tasks == [] for patient in found.data.patients)  # tasks not included


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"mrn": "MRN-1"}, "Missing required parameters: search_by."),
        ({"search_by": "name"}, "At least one of the following parameters must be provided"),
        ({"search_by": "dob", "dob": "01/31/1990"}, "Invalid dob format. Use YYYY-MM-DD."),
        ({"search_by": "phone", "phone": "5551234567"}, "Invalid phone format"),
        ({"search_by": "mrn", "mrn": "M", "include": ["labs"]}, "Invalid include"),
        ({"search_by": "mrn", "mrn": "M", "limit": 1}, "Unexpected fields in request body: limit"),
    ],
)
async def test_the_fake_refuses_what_cobalt_refuses(body: dict[str, Any], message: str) -> None:
    with anyio.fail_after(LIMIT):
        async with (
            ehr() as (fake, _),
            httpx.AsyncClient(
                transport=fake.transport, base_url=fake.base_url, headers=fake.credentials
            ) as http,
        ):
            answer = await http.post("/patients/fetch", json=body)
    assert 400 == answer.status_code
    assert answer.json()["message"].startswith(message)
    assert 0 == fake.stats.fetches_accepted


# -- the models --------------------------------------------------------------------------------


def test_top_level_tasks_join_the_patient_they_name_and_are_listed_once() -> None:
    data = PatientLiveFetchData.model_validate(
        {
            "patients": [
                {"id": "p1", "mrn": "M1", "tasks": [{"emr_task_id": "t1"}]},
                {"id": "p2", "mrn": 22},
            ],
            "tasks": [
                {"emr_task_id": "t1"},  # also on its patient: one task
                {"emr_task_id": "t2", "patient_mrn": "22"},
                {"emr_task_id": "t3", "patient_id": "p1"},
                {"emr_task_id": "t4"},  # names nobody: listed in data.tasks only
            ],
        }
    )
    assert ["t1", "t3"] == [task.emr_task_id for task in data.patients[0].tasks]
    assert ["t2"] == [task.emr_task_id for task in data.patients[1].tasks]
    assert ["t1", "t3", "t2", "t4"] == [task.emr_task_id for task in data.tasks]


def test_a_fetch_event_keeps_every_field_and_shows_no_ehr_text_in_its_repr() -> None:
    payload = make_patient_live_fetch_completed_event(
        patients=[
            {
                "id": "pat_1",
                "mrn": "MRN-SECRET",
                "first_name": "Janet",
                "medications": [{"name": "Aspirin"}],
                "tasks": [{"emr_task_id": "t-1", "description": "Discuss biopsy"}],
            }
        ]
    )
    event = parse_event(payload)
    assert isinstance(event, PatientLiveFetchCompletedEvent)
    patient = event.data.patients[0]
    assert [{"name": "Aspirin"}] == patient.model_extra["medications"]  # type: ignore[index]
    assert "Discuss biopsy" == patient.tasks[0].model_extra["description"]  # type: ignore[index]
    shown = repr(event)
    for text in ("MRN-SECRET", "Janet", "Aspirin", "biopsy"):
        assert text not in shown
    assert "t-1" in shown
    assert "pat_1" in shown


def test_a_fetch_event_without_a_readable_payload_settles_its_job_as_malformed() -> None:
    """Signed and naming its job, but with patients of the wrong type: malformed, not lost."""
    payload = make_patient_live_fetch_completed_event(job_id="job_3", shape="old")
    payload["data"]["patients"] = "many"
    event = parse_event(payload)
    assert ("MalformedJobEvent", "job_3") == (type(event).__name__, event.job_id)


# -- real servers: Redis between two "processes", FastAPI, uvicorn over real sockets ---------


class TestRealServers:
    """asyncio only: redis-py and uvicorn run on asyncio."""

    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"

    @pytest.mark.parametrize("knobs", SHAPES)
    async def test_redis_carries_a_fetch_outcome_to_another_process(
        self, redis_server: Any, redis_namespace: str, knobs: dict[str, str]
    ) -> None:
        """The receiver's RedisSink stores it; the client's own RedisSink instance wakes."""
        receiving = RedisSink(redis_server.url, namespace=redis_namespace)
        waiting = RedisSink(redis_server.url, namespace=redis_namespace)
        with anyio.fail_after(LIMIT):
            async with receiving, ehr(waiting, receiver_sink=receiving, **knobs) as (fake, c):
                fake.add_task("MRN-1", emr_task_id="emr-redis", subject="Refill")
                handle = await c.patients.fetch(search_by="mrn", mrn="MRN-1", include="tasks")
                found = await handle
        assert "webhook" == handle.resolved_via
        assert ["emr-redis"] == [task.emr_task_id for task in found.data.patients[0].tasks]
        assert "Refill" == found.data.tasks[0].model_extra["subject"]  # type: ignore[index]

    async def test_a_fastapi_route_fetches_then_notes_through_its_own_webhook_route(self) -> None:
        app = FastAPI(lifespan=cobalt_lifespan())
        app.include_router(webhook_router())

        @app.post("/patients/{mrn}/notes")
        async def note_every_task(mrn: str, client: CobaltDep) -> list[str]:
            fetch = await client.patients.fetch(search_by="mrn", mrn=mrn, include=["tasks"])
            tasks = (await fetch).data.tasks
            notes = [
                await client.tasks.notes.create(emr_task_id=task.emr_task_id, note="Reviewed")
                for task in tasks
            ]
            return [(await note).data.emr_note_id for note in notes]

        fake = FakeCobalt(latency=0.01)
        fake.add_task("MRN-1", emr_task_id="emr-a")
        fake.add_task("MRN-1", emr_task_id="emr-b")
        with anyio.fail_after(LIMIT):
            async with fake, app_with_fake(app, fake) as http:
                answer = await http.post("/patients/MRN-1/notes")
        assert 200 == answer.status_code, answer.text
        assert 2 == len(answer.json())
        assert 0 == fake.stats.rejected

    async def test_over_real_http_a_fetch_finds_the_task_the_sdk_just_created(self) -> None:
        """FakeCobalt and a WebhookApp, each served by uvicorn on a loopback port."""
        sink = InMemorySink()
        hooks = WebhookApp(WebhookReceiver(sink, secrets=[SECRET]))
        fake = FakeCobalt(webhook_secret=SECRET, latency=0.01)
        with anyio.fail_after(LIMIT):
            async with fake, serve(fake) as cobalt_url, serve(hooks) as hook_url:
                fake.webhook_url = hook_url + "/webhooks/cobalt"
                async with CobaltClient(
                    base_url=cobalt_url + "/v1", sink=sink, **fake.credentials
                ) as client:
                    created = await (
                        await client.tasks.create(patient_mrn="MRN-77", description="Labs")
                    )
                    fetch = await client.patients.fetch(search_by="mrn", mrn="MRN-77")
                    without = await fetch
                    fetch = await client.patients.fetch(
                        search_by="mrn", mrn="MRN-77", include=["tasks"]
                    )
                    found = await fetch
                    task = found.data.patients[0].tasks[0]
                    note = await (
                        await client.tasks.notes.create(emr_task_id=task.emr_task_id, note="x")
                    )
        assert [] == without.data.patients[0].tasks
        assert created.data.emr_task_id == task.emr_task_id == note.data.emr_task_id
        assert 4 == fake.stats.deliveries_succeeded


async def test_a_fetch_whose_webhook_never_came_is_resolved_by_a_replay() -> None:
    """Cobalt's record of a live fetch, replayed into the receiver, wakes the waiting handle."""
    sink = InMemorySink()
    with anyio.fail_after(LIMIT):
        async with ehr(sink, drop_rate=1.0, live_fetch_shape="old") as (fake, client):
            fake.add_task("MRN-1", emr_task_id="emr-replayed")
            handle = await client.patients.fetch(search_by="mrn", mrn="MRN-1", include="tasks")
            await fake.drain()
            assert not handle.done()
            receiver = WebhookReceiver(sink, secrets=[SECRET])
            summary = await client.webhook_events.replay(since=date.today(), into=receiver)
            found = await handle.wait(timeout=1)
            again = await client.webhook_events.replay(since=date.today(), into=receiver)
    assert (1, 0) == (summary.replayed, summary.duplicates)
    assert (0, 1) == (again.replayed, again.duplicates)
    assert ["emr-replayed"] == [task.emr_task_id for task in found.data.tasks]
