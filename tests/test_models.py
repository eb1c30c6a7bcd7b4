"""Models: tolerant events discriminated by type, strict requests refused before any traffic."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from cobalt_async import (
    CobaltClient,
    CobaltError,
    JobFailedError,
    PatientLiveFetchCompletedEvent,
    RequestValidationError,
    TaskCreatedEvent,
    TaskFailedEvent,
    TaskNoteCreatedEvent,
    TaskNoteFailedEvent,
    UnknownEvent,
)
from cobalt_async.models import (
    FailureReason,
    TaskCreated,
    TaskNoteCreated,
    event_from_record,
    is_terminal,
    parse_event,
)

pytestmark = pytest.mark.anyio


def envelope(kind: str, data: dict[str, Any], *, job_id: Any = "12345") -> dict[str, Any]:
    return {
        "id": "evt_1J9X2q2eZvKYlo2CluR9g9gV",
        "access_token_reference_id": "user_1J9X2q2eZvKYlo2Cxyz",
        "object": "event",
        "created": "2025-10-09T10:30:00Z",
        "type": kind,
        "job_id": job_id,
        "data": data,
    }


TASK_CREATED_DATA = {
    "task_id": "abc123def456789012345678",
    "emr_task_id": "task_emr_internal_id",
    "subject": "Follow-up appointment needed",
    "description": "Schedule patient follow-up appointment.",
}
REASONS = [
    {"code": "patient_not_found", "description": "No patient with MRN MRN-1"},
    {"code": "assignee_not_found", "description": "No EMR user 74196090"},
]
FAILURE_DATA = {
    "failure_reason": "No patient with MRN MRN-1; No EMR user 74196090",
    "reasons": REASONS,
}
EVENTS = [
    pytest.param("task.created", TASK_CREATED_DATA, TaskCreatedEvent, id="task.created"),
    pytest.param(
        "task.failed", {"task_id": "t_1", **FAILURE_DATA}, TaskFailedEvent, id="task.failed"
    ),
    pytest.param(
        "task_note.created",
        {
            "task_note_id": "n_1",
            "emr_note_id": "f862b0a0",
            "emr_task_id": "emr_1",
            "note": "Called",
        },
        TaskNoteCreatedEvent,
        id="task_note.created",
    ),
    pytest.param(
        "task_note.failed",
        {"task_note_id": "n_1", **FAILURE_DATA},
        TaskNoteFailedEvent,
        id="task_note.failed",
    ),
]


class TestEventParsing:
    """parse_event(): one tagged union of the four job events, and UnknownEvent for the rest."""

    @pytest.mark.parametrize(("kind", "data", "model"), EVENTS)
    @pytest.mark.parametrize("as_json", [True, False], ids=["bytes", "dict"])
    def test_each_type_parses_into_its_model(
        self, kind: str, data: dict[str, Any], model: type[Any], as_json: bool
    ) -> None:
        """The type field selects the model, from raw JSON bytes or a decoded dict."""
        payload = envelope(kind, data)

        event = parse_event(json.dumps(payload).encode() if as_json else payload)

        assert model is type(event)
        assert kind == event.type
        assert "12345" == event.job_id
        assert is_terminal(event)

    def test_unknown_type_keeps_the_whole_payload_in_raw(self) -> None:
        """An event of a type this version does not model is an UnknownEvent with raw."""
        payload = envelope("appointment.created", {"appointment_id": "a1", "mrn": 123456})

        event = parse_event(payload)

        assert isinstance(event, UnknownEvent)
        assert payload == event.raw
        assert {"appointment_id": "a1", "mrn": 123456} == event.data
        assert not is_terminal(event)

    def test_live_fetch_envelope_names_its_job(self) -> None:
        """The live-fetch envelope (job_execution_id, timestamp, action) settles its job."""
        payload = {
            "id": "evt_lf",
            "job_execution_id": "job_1J9X",
            "timestamp": "2023-10-28T11:00:00Z",
            "type": "patient.live_fetch_completed",
            "action": "sync",
            "data": {"success": True, "patient_count": 0, "patients": []},
        }

        event = parse_event(payload)

        assert isinstance(event, PatientLiveFetchCompletedEvent)
        assert ("job_1J9X", "2023-10-28T11:00:00Z") == (event.job_id, event.created)
        assert "sync" == event.action
        assert is_terminal(event)

    def test_unknown_fields_in_data_are_kept_in_model_extra(self) -> None:
        """Fields Cobalt adds to data are kept in model_extra, not refused."""
        data = {**TASK_CREATED_DATA, "assignee_user_id": "u-7", "patient_mrn": "MRN-12345"}

        event = parse_event(envelope("task.created", data))

        assert isinstance(event, TaskCreatedEvent)
        assert {"assignee_user_id": "u-7", "patient_mrn": "MRN-12345"} == event.data.model_extra
        assert "task_emr_internal_id" == event.data.emr_task_id

    def test_unknown_envelope_fields_are_ignored(self) -> None:
        """Extra envelope fields neither fail parsing nor become attributes."""
        payload = {**envelope("task.created", TASK_CREATED_DATA), "livemode": True}

        event = parse_event(payload)

        assert isinstance(event, TaskCreatedEvent)
        assert not hasattr(event, "livemode")
        assert "livemode" not in event.model_dump()

    @pytest.mark.parametrize("job_id", [12345, "12345"], ids=["number", "string"])
    def test_job_id_is_always_a_string(self, job_id: Any) -> None:
        """job_id sent as a JSON number or a string is the same str."""
        event = parse_event(json.dumps(envelope("task.created", TASK_CREATED_DATA, job_id=job_id)))

        assert "12345" == event.job_id

    def test_numeric_ids_in_data_become_strings(self) -> None:
        """Ids in data that Cobalt may send as numbers are normalised to str too."""
        data = {"task_id": 987, "emr_task_id": 654}

        event = parse_event(envelope("task.created", data))

        assert isinstance(event, TaskCreatedEvent)
        assert ("987", "654") == (event.data.task_id, event.data.emr_task_id)

    def test_event_without_job_id_is_not_terminal(self) -> None:
        """A known type without job_id (a sync event) settles no job."""
        payload = envelope("task.created", TASK_CREATED_DATA)
        del payload["job_id"]

        event = parse_event(payload)

        assert None is event.job_id
        assert not is_terminal(event)

    @pytest.mark.parametrize(
        ("kind", "model"),
        [("task.failed", TaskFailedEvent), ("task_note.failed", TaskNoteFailedEvent)],
    )
    def test_failure_events_carry_reasons(self, kind: str, model: type[Any]) -> None:
        """failure_reason and the structured reasons are parsed, and JobFailedError keeps them."""
        event = parse_event(envelope(kind, FAILURE_DATA))

        assert model is type(event)
        assert FAILURE_DATA["failure_reason"] == event.data.failure_reason
        assert ["patient_not_found", "assignee_not_found"] == [
            reason.code for reason in event.data.reasons
        ]
        assert all(isinstance(reason, FailureReason) for reason in event.data.reasons)
        error = JobFailedError(event)
        assert FAILURE_DATA["failure_reason"] == error.failure_reason
        assert 2 == len(error.reasons)
        assert "12345" in str(error)

    def test_failure_event_without_reasons_has_an_empty_list(self) -> None:
        """An older failure event with only failure_reason still parses."""
        event = parse_event(envelope("task.failed", {"failure_reason": "Patient not found."}))

        assert isinstance(event, TaskFailedEvent)
        assert [] == event.data.reasons

    def test_failure_reason_extra_fields_are_kept(self) -> None:
        """A reason with fields beyond code and description keeps them."""
        reasons = [{"code": "double_booked", "description": "x", "conflict_type": "slot"}]

        event = parse_event(envelope("task.failed", {"reasons": reasons}))

        assert isinstance(event, TaskFailedEvent)
        assert {"conflict_type": "slot"} == event.data.reasons[0].model_extra

    def test_events_are_immutable(self) -> None:
        """An event cannot be changed after parsing: one outcome is shared by every waiter."""
        event = parse_event(envelope("task.created", TASK_CREATED_DATA))

        with pytest.raises(ValidationError):
            event.job_id = "other"  # type: ignore[misc]

    @pytest.mark.parametrize(
        "payload",
        [
            pytest.param(b"[1, 2]", id="list"),
            pytest.param(b"null", id="null"),
            pytest.param(b'{"job_id": "1", "data": {}}', id="missing-type"),
            pytest.param(b'{"type": "task.created", "data": {}}', id="terminal-without-job-id"),
            pytest.param(b"not json", id="not-json"),
        ],
    )
    def test_non_events_raise_validation_error(self, payload: bytes) -> None:
        """Payloads that are not event objects raise pydantic.ValidationError."""
        with pytest.raises(ValidationError):
            parse_event(payload)


class TestResponses:
    """The create responses: job_id normalised to str, whatever its JSON type."""

    @pytest.mark.parametrize("job_id", [12345, "12345"], ids=["number", "string"])
    def test_task_created_job_id_is_a_string(self, job_id: Any) -> None:
        """POST /v1/tasks may answer job_id as a number (newer schema) or a string."""
        body = {"success": True, "message": "Task processing.", "task_id": "t", "job_id": job_id}

        created = TaskCreated.model_validate_json(json.dumps(body))

        assert "12345" == created.job_id

    def test_task_note_created_job_id_is_a_string(self) -> None:
        """POST /v1/tasks/notes answers job_id as a number in Cobalt's own example."""
        body = b'{"success": true, "task_note_id": "abc", "job_id": 12345}'

        assert "12345" == TaskNoteCreated.model_validate_json(body).job_id

    def test_the_job_id_schema_accepts_both_and_always_answers_a_string(self) -> None:
        """Input: a string or an integer (what Cobalt sends); output: always a string."""
        validation = TaskNoteCreated.model_json_schema()["properties"]["job_id"]
        serialization = TaskNoteCreated.model_json_schema(mode="serialization")["properties"]

        assert [{"type": "string"}, {"type": "integer"}] == validation["anyOf"]
        assert "string" == serialization["job_id"]["type"]

    @pytest.mark.parametrize(
        "job_id",
        [b"1.5", b"true", b"NaN", b"null", b"[1]"],
        ids=["float", "bool", "nan", "null", "list"],
    )
    def test_a_job_id_neither_string_nor_integer_is_refused(self, job_id: bytes) -> None:
        """Only whole numbers are ids: a float would not round-trip to the id Cobalt meant."""
        body = b'{"success": true, "task_note_id": "abc", "job_id": ' + job_id + b"}"

        with pytest.raises(ValidationError, match="should be a string or an integer") as caught:
            TaskNoteCreated.model_validate_json(body)

        assert [("job_id",)] == [error["loc"] for error in caught.value.errors()]


class TestEventFromRecord:
    """event_from_record(): both record shapes of GET /v1/webhook-events."""

    def test_newer_record_shape(self) -> None:
        """event_id, event_type and created_at map onto the event envelope."""
        record = {
            "event_id": "evt_new",
            "event_type": "task.created",
            "webhook_url": "https://example.test/hook",
            "delivery_status": "success",
            "data": TASK_CREATED_DATA,
            "created_at": "2023-11-07T05:31:56Z",
            "job_id": "12345",
            "access_token_reference_id": "atr_1",
        }

        event = event_from_record(record)

        assert isinstance(event, TaskCreatedEvent)
        assert ("evt_new", "12345") == (event.id, event.job_id)
        assert "2023-11-07T05:31:56Z" == event.created
        assert "atr_1" == event.access_token_reference_id
        assert "task_emr_internal_id" == event.data.emr_task_id

    def test_older_record_shape(self) -> None:
        """id, type, created and the delivery bookkeeping fields of the older schema."""
        record = {
            "id": "evt_old",
            "access_token_reference_id": "atr_1",
            "object": "event",
            "created": "2023-11-07T05:31:56Z",
            "type": "task_note.failed",
            "job_id": 12345,
            "status": "failed",
            "delivered": False,
            "delivery_attempts": 2,
            "last_delivery_attempt": "2023-11-07T05:32:00Z",
            "response_status_code": 503,
            "data": {"task_note_id": "n_1", **FAILURE_DATA},
        }

        event = event_from_record(record)

        assert isinstance(event, TaskNoteFailedEvent)
        assert ("evt_old", "12345") == (event.id, event.job_id)
        assert 2 == len(event.data.reasons)

    def test_record_whose_data_holds_the_whole_webhook_body(self) -> None:
        """When data is the full webhook body, the body's own envelope is used."""
        body = envelope("task.created", TASK_CREATED_DATA, job_id=777)
        record = {"event_id": "evt_x", "event_type": "task.created", "job_id": "777", "data": body}

        event = event_from_record(record)

        assert isinstance(event, TaskCreatedEvent)
        assert "777" == event.job_id
        assert body["id"] == event.id
        assert "task_emr_internal_id" == event.data.emr_task_id

    def test_whole_body_without_job_id_takes_the_records(self) -> None:
        """A stored body without job_id still gets the record's job_id."""
        body = envelope("task.created", TASK_CREATED_DATA)
        del body["job_id"]

        event = event_from_record({"event_type": "task.created", "job_id": "55", "data": body})

        assert "55" == event.job_id
        assert is_terminal(event)

    def test_record_of_an_unknown_type(self) -> None:
        """A record of another product's event is an UnknownEvent, not an error."""
        record = {"event_id": "e", "event_type": "appointment.created", "job_id": "1", "data": {}}

        event = event_from_record(record)

        assert isinstance(event, UnknownEvent)
        assert "appointment.created" == event.type


VALID_TASK: dict[str, Any] = {
    "patient_mrn": "MRN-12345",
    "description": "Call back about labs",
    "subject": "Labs",
}
VALID_NOTE: dict[str, Any] = {"emr_task_id": "9bef4113", "note": "Called, left a message"}


def _without(fields: dict[str, Any], name: str) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if key != name}


def refusal(fields: dict[str, Any], field: str, message: str, id: str) -> Any:
    return pytest.param(fields, field, message, id=id)


TASK_REFUSALS = [
    refusal(
        _without(VALID_TASK, "patient_mrn"),
        "patient_mrn",
        "Missing required field: patient_mrn",
        "missing-mrn",
    ),
    refusal(
        _without(VALID_TASK, "description"),
        "description",
        "Missing required field: description",
        "missing-description",
    ),
    refusal({**VALID_TASK, "patient_mrn": ""}, "patient_mrn", "non-empty", "empty-mrn"),
    refusal({**VALID_TASK, "description": " \t\n"}, "description", "non-empty", "blank-text"),
    refusal({**VALID_TASK, "subject": " "}, "subject", "non-empty", "blank-optional"),
    refusal(
        {**VALID_TASK, "priority": "high"},
        "priority",
        "Unexpected fields in request body: priority",
        "unknown-field",
    ),
    refusal(
        {**VALID_TASK, "zeta": 1, "alpha": 2},
        "alpha",
        "Unexpected fields in request body: alpha, zeta",
        "unknown-fields",
    ),
    refusal({**VALID_TASK, "notify_list": "u-1"}, "notify_list", "a valid list", "notify-str"),
    refusal(
        {**VALID_TASK, "notify_list": ["u-1", 2]}, "notify_list", "notify_list.1", "notify-int"
    ),
    refusal({**VALID_TASK, "notify_list": [""]}, "notify_list", "non-empty", "notify-blank"),
    refusal({**VALID_TASK, "patient_mrn": 12345}, "patient_mrn", "valid string", "mrn-int"),
    refusal({**VALID_TASK, "subject": ["Labs"]}, "subject", "valid string", "subject-list"),
    refusal({**VALID_TASK, "description": None}, "description", "valid string", "text-none"),
]
NOTE_REFUSALS = [
    refusal(
        _without(VALID_NOTE, "emr_task_id"),
        "emr_task_id",
        "Missing required field: emr_task_id",
        "missing-emr-task-id",
    ),
    refusal(_without(VALID_NOTE, "note"), "note", "Missing required field: note", "missing-note"),
    refusal({**VALID_NOTE, "note": ""}, "note", "non-empty", "empty-note"),
    refusal({**VALID_NOTE, "note": "   "}, "note", "non-empty", "blank-note"),
    refusal({**VALID_NOTE, "emr_task_id": " "}, "emr_task_id", "non-empty", "blank-task-id"),
    refusal(
        {**VALID_NOTE, "subject": "x"},
        "subject",
        "Unexpected fields in request body: subject",
        "unknown-field",
    ),
    refusal({**VALID_NOTE, "emr_task_id": 42}, "emr_task_id", "valid string", "task-id-int"),
    refusal({**VALID_NOTE, "note": b"bytes"}, "note", "valid string", "note-bytes"),
]


class TestRequestValidation:
    """Request models are strict: a bad request is refused locally, and nothing is sent."""

    @pytest.fixture
    def sent(self) -> list[httpx.Request]:
        return []

    @pytest.fixture
    async def client(self, sent: list[httpx.Request]) -> AsyncIterator[CobaltClient]:
        def handler(request: httpx.Request) -> httpx.Response:
            sent.append(request)
            body = {"success": True, "task_id": "t_1", "task_note_id": "n_1", "job_id": 12345}
            return httpx.Response(200, json=body)

        async with CobaltClient(
            client_id="ci_test",
            client_secret="cs_test",
            access_token="at_test",
            base_url="https://cobalt.test/v1",
            transport=httpx.MockTransport(handler),
        ) as client:
            yield client

    @pytest.mark.parametrize(("fields", "field", "message"), TASK_REFUSALS)
    async def test_bad_task_request_is_refused_before_sending(
        self,
        client: CobaltClient,
        sent: list[httpx.Request],
        fields: dict[str, Any],
        field: str,
        message: str,
    ) -> None:
        """tasks.create() raises RequestValidationError naming the field; zero requests."""
        with pytest.raises(RequestValidationError) as info:
            await client.tasks.create(**fields)

        assert field == info.value.field
        assert message in str(info.value)
        assert field in str(info.value)
        assert isinstance(info.value, ValueError)
        assert isinstance(info.value, CobaltError)
        assert [] == sent

    @pytest.mark.parametrize(("fields", "field", "message"), NOTE_REFUSALS)
    async def test_bad_note_request_is_refused_before_sending(
        self,
        client: CobaltClient,
        sent: list[httpx.Request],
        fields: dict[str, Any],
        field: str,
        message: str,
    ) -> None:
        """tasks.notes.create() raises RequestValidationError naming the field; zero requests."""
        with pytest.raises(RequestValidationError) as info:
            await client.tasks.notes.create(**fields)

        assert field == info.value.field
        assert message in str(info.value)
        assert isinstance(info.value, ValueError)
        assert isinstance(info.value, CobaltError)
        assert [] == sent

    async def test_unexpected_field_message_lists_what_is_allowed(
        self, client: CobaltClient
    ) -> None:
        """The refusal of an unknown field says which fields are accepted."""
        with pytest.raises(RequestValidationError) as info:
            await client.tasks.notes.create(**VALID_NOTE, emr_id="x")  # type: ignore[typeddict-unknown-key]

        assert str(info.value).startswith("Unexpected fields in request body: emr_id")
        assert "emr_task_id" in str(info.value)
        assert "note" in str(info.value)

    async def test_valid_task_request_is_sent_once_without_unset_fields(
        self, client: CobaltClient, sent: list[httpx.Request]
    ) -> None:
        """The control case: a valid request is sent, and its handle has a str job_id."""
        handle = await client.tasks.create(**VALID_TASK, notify_list=["u-1", "u-2"])

        assert 1 == len(sent)
        assert {**VALID_TASK, "notify_list": ["u-1", "u-2"]} == json.loads(sent[0].content)
        assert "12345" == handle.job_id
        assert "t_1" == handle.task_id

    async def test_valid_note_request_is_sent_once(
        self, client: CobaltClient, sent: list[httpx.Request]
    ) -> None:
        """The control case for notes: exactly the two accepted fields are sent."""
        handle = await client.tasks.notes.create(**VALID_NOTE)

        assert 1 == len(sent)
        assert VALID_NOTE == json.loads(sent[0].content)
        assert "n_1" == handle.task_note_id
