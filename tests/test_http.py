"""The send path on the wire: auth headers, error mapping, and the no-blind-retry policy."""

from __future__ import annotations

import email.utils
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import respx

from cobalt_async import (
    APIError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    CobaltClient,
    CobaltConnectionError,
    CobaltTimeoutError,
    LoginRequiredError,
    NotFoundError,
    RateLimitError,
    ServerError,
)
from cobalt_async._http import MAX_RETRY_AFTER, RetryPolicy

pytestmark = pytest.mark.anyio

BASE_URL = "https://cobalt.test/v1"
CLIENT_ID = "ci_live_1d3nt1ty_V4LUE"
CLIENT_SECRET = "cs_live_s3cr3t_V4LUE"
ACCESS_TOKEN = "at_t0k3n_V4LUE"
CREDENTIALS = (CLIENT_ID, CLIENT_SECRET, ACCESS_TOKEN)

TASK = {"patient_mrn": "MRN-1", "description": "Call back about labs"}
ACCEPTED_TASK = {"success": True, "message": "Task processing.", "task_id": "t_1", "job_id": 12345}
EVENT_RECORD = {
    "event_id": "evt_1",
    "event_type": "task.created",
    "job_id": "12345",
    "created_at": "2023-11-07T05:31:56Z",
    "data": {"task_id": "t_1", "emr_task_id": "emr_1"},
}
EVENTS_PAGE = {
    "success": True,
    "webhook_events": [EVENT_RECORD],
    "pagination": {"current_page": 1, "total_pages": 1, "total_count": 1, "page_size": 100},
}


def envelope(message: str, **extra: Any) -> dict[str, Any]:
    return {"success": False, "message": message, **extra}


@pytest.fixture
def api() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=BASE_URL, assert_all_called=False) as router:
        yield router


@pytest.fixture
async def client() -> AsyncIterator[CobaltClient]:
    async with CobaltClient(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        access_token=ACCESS_TOKEN,
        base_url=BASE_URL,
    ) as client:
        yield client


@pytest.fixture
def delays(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record each backoff the policy chose, and do not actually wait for it."""
    recorded: list[float] = []
    original = RetryPolicy.delay

    def delay(self: RetryPolicy, attempt: int, retry_after: float | None) -> float:
        recorded.append(original(self, attempt, retry_after))
        return 0.0

    monkeypatch.setattr(RetryPolicy, "delay", delay)
    return recorded


def assert_no_credentials(*texts: str) -> None:
    for text in texts:
        for value in CREDENTIALS:
            assert value not in text


class TestRequestShape:
    """What a create POST looks like on the wire."""

    async def test_post_sends_the_three_auth_headers_verbatim(
        self, api: respx.MockRouter, client: CobaltClient
    ) -> None:
        """client_id, client_secret and access_token are sent with underscores intact."""
        route = api.post("/tasks").respond(200, json=ACCEPTED_TASK)

        await client.tasks.create(**TASK)

        request = route.calls.last.request
        raw_names = [name for name, _ in request.headers.raw]
        for name in (b"client_id", b"client_secret", b"access_token"):
            assert 1 == raw_names.count(name)
        assert CLIENT_ID == request.headers["client_id"]
        assert CLIENT_SECRET == request.headers["client_secret"]
        assert ACCESS_TOKEN == request.headers["access_token"]
        lowered = {name.lower() for name in raw_names}
        assert not lowered & {b"client-id", b"client-secret", b"access-token", b"authorization"}

    async def test_post_body_is_compact_json_without_unset_fields(
        self, api: respx.MockRouter, client: CobaltClient
    ) -> None:
        """The body is compact UTF-8 JSON holding only the fields given."""
        route = api.post("/tasks").respond(200, json=ACCEPTED_TASK)

        await client.tasks.create(patient_mrn="MRN-1", description="Café – 東京", subject=None)

        request = route.calls.last.request
        assert '{"patient_mrn":"MRN-1","description":"Café – 東京"}'.encode() == request.content
        assert "application/json" == request.headers["content-type"]
        assert "POST" == request.method
        assert "https://cobalt.test/v1/tasks" == str(request.url)

    async def test_note_post_goes_to_tasks_notes(
        self, api: respx.MockRouter, client: CobaltClient
    ) -> None:
        """tasks.notes.create() posts the two note fields to /v1/tasks/notes."""
        route = api.post("/tasks/notes").respond(
            200, json={"success": True, "task_note_id": "n_1", "job_id": 777}
        )

        handle = await client.tasks.notes.create(emr_task_id="emr_1", note="Called")

        assert {"emr_task_id": "emr_1", "note": "Called"} == json.loads(
            route.calls.last.request.content
        )
        assert "777" == handle.job_id

    async def test_get_sends_auth_headers_and_job_id_filter(
        self, api: respx.MockRouter, client: CobaltClient
    ) -> None:
        """GET /v1/webhook-events carries the same headers and the job_id as a string."""
        route = api.get("/webhook-events").respond(200, json=EVENTS_PAGE)

        page = await client.webhook_events.list(job_id=12345)

        request = route.calls.last.request
        assert "12345" == request.url.params["job_id"]
        assert ACCESS_TOKEN == request.headers["access_token"]
        assert ["12345"] == [event.job_id for event in page.events]


class TestErrorMapping:
    """Cobalt's {success: false, message} envelope becomes a typed error."""

    async def test_missing_field_400_is_bad_request_naming_the_field(
        self, api: respx.MockRouter, client: CobaltClient
    ) -> None:
        """400 "Missing required field: subject" names subject, with full request context."""
        api.post("/tasks").respond(400, json=envelope("Missing required field: subject"))

        with pytest.raises(BadRequestError) as info:
            await client.tasks.create(**TASK)

        error = info.value
        assert "subject" == error.field
        assert ("subject",) == error.fields
        assert 400 == error.status_code
        assert "Missing required field: subject" == error.message
        assert ("POST", "/v1/tasks") == (error.method, error.path)
        assert not error.outcome_unknown

    async def test_unexpected_fields_400_lists_every_field(
        self, api: respx.MockRouter, client: CobaltClient
    ) -> None:
        """400 "Unexpected fields in request body: a, b" gives fields ('a', 'b')."""
        api.post("/tasks/notes").respond(
            400, json=envelope("Unexpected fields in request body: a, b")
        )

        with pytest.raises(BadRequestError) as info:
            await client.tasks.notes.create(emr_task_id="emr_1", note="Called")

        assert ("a", "b") == info.value.fields
        assert "a" == info.value.field
        assert "/v1/tasks/notes" == info.value.path

    @pytest.mark.parametrize(
        "message",
        ["User not found.", "Invalid dob format: use YYYY-MM-DD", "Patient not found: MRN-1"],
    )
    async def test_400_that_names_no_field_has_no_fields(
        self, api: respx.MockRouter, client: CobaltClient, message: str
    ) -> None:
        """Only missing/unexpected field messages are read as field names."""
        api.post("/tasks").respond(400, json=envelope(message))

        with pytest.raises(BadRequestError) as info:
            await client.tasks.create(**TASK)

        assert () == info.value.fields
        assert None is info.value.field
        assert message == info.value.message

    async def test_login_required_403(self, api: respx.MockRouter, client: CobaltClient) -> None:
        """403 login_required is LoginRequiredError with Cobalt's error code and message."""
        api.post("/tasks").respond(
            403,
            json=envelope(
                "Account link expired. Please go through the integration setup again.",
                error="login_required",
            ),
        )

        with pytest.raises(LoginRequiredError) as info:
            await client.tasks.create(**TASK)

        assert "login_required" == info.value.error
        assert 403 == info.value.status_code
        assert info.value.message.startswith("Account link expired.")
        assert "Cobalt Link" in info.value.message

    async def test_not_found_404(self, api: respx.MockRouter, client: CobaltClient) -> None:
        """404 is NotFoundError."""
        api.post("/tasks").respond(404, json=envelope("Patient not found."))

        with pytest.raises(NotFoundError) as info:
            await client.tasks.create(**TASK)

        assert (404, "Patient not found.") == (info.value.status_code, info.value.message)

    async def test_rate_limit_429_reads_retry_after_seconds(
        self, api: respx.MockRouter, client: CobaltClient
    ) -> None:
        """429 is RateLimitError with Retry-After in seconds; a create is not resent."""
        route = api.post("/tasks").respond(
            429, json=envelope("Too many requests"), headers={"Retry-After": "7"}
        )

        with pytest.raises(RateLimitError) as info:
            await client.tasks.create(**TASK)

        assert 7.0 == info.value.retry_after
        assert not info.value.outcome_unknown
        assert 1 == route.call_count

    async def test_rate_limit_429_reads_retry_after_http_date(
        self, api: respx.MockRouter, client: CobaltClient
    ) -> None:
        """An HTTP-date Retry-After becomes the seconds until that date."""
        when = datetime.now(UTC) + timedelta(seconds=30)
        api.post("/tasks").respond(
            429, headers={"Retry-After": email.utils.format_datetime(when, usegmt=True)}
        )

        with pytest.raises(RateLimitError) as info:
            await client.tasks.create(**TASK)

        assert info.value.retry_after is not None
        assert 25 <= info.value.retry_after <= 31

    @pytest.mark.parametrize(
        ("header", "expected"),
        [("Wed, 21 Oct 2015 07:28:00 GMT", 0.0), ("-3", 0.0), ("soon", None)],
        ids=["past-date", "negative", "garbage"],
    )
    async def test_odd_retry_after_values(
        self, api: respx.MockRouter, client: CobaltClient, header: str, expected: float | None
    ) -> None:
        """A past date or negative value means now; an unreadable one is ignored."""
        api.post("/tasks").respond(429, headers={"Retry-After": header})

        with pytest.raises(RateLimitError) as info:
            await client.tasks.create(**TASK)

        assert expected == info.value.retry_after

    @pytest.mark.parametrize("status", [500, 502, 503, 504])
    async def test_server_error_on_create_has_unknown_outcome(
        self, api: respx.MockRouter, client: CobaltClient, status: int
    ) -> None:
        """5xx on a create is ServerError with outcome_unknown=True."""
        api.post("/tasks").respond(status, json=envelope("Internal error"))

        with pytest.raises(ServerError) as info:
            await client.tasks.create(**TASK)

        assert status == info.value.status_code
        assert info.value.outcome_unknown
        assert "Internal error" == info.value.message

    @pytest.mark.parametrize(
        ("status", "body"),
        [
            (502, b"<html><body>Bad Gateway from proxy-7</body></html>"),
            (400, b"plain text from proxy-7"),
            (500, b""),
            (500, b'["proxy-7"]'),
        ],
        ids=["html", "text", "empty", "json-list"],
    )
    async def test_non_json_error_body_is_mapped_without_its_text(
        self, api: respx.MockRouter, client: CobaltClient, status: int, body: bytes
    ) -> None:
        """A body that is not Cobalt's envelope still maps by status; its text is not echoed."""
        api.post("/tasks").respond(status, content=body)

        with pytest.raises(APIStatusError) as info:
            await client.tasks.create(**TASK)

        error = info.value
        assert status == error.status_code
        assert f"HTTP {status} without Cobalt's error envelope" == error.message
        assert "proxy-7" not in str(error)
        assert ("POST", "/v1/tasks") == (error.method, error.path)
        assert isinstance(error, ServerError if status >= 500 else BadRequestError)

    async def test_401_is_an_authentication_error_that_says_what_to_check(
        self, api: respx.MockRouter, client: CobaltClient
    ) -> None:
        """A 401 gets its own class, and a hint naming the settings, never their values."""
        api.post("/tasks").respond(401, json=envelope("Unauthorized"))

        with pytest.raises(AuthenticationError) as info:
            await client.tasks.create(**TASK)

        assert 401 == info.value.status_code
        assert not info.value.outcome_unknown
        message = str(info.value)
        assert "COBALT_CLIENT_ID" in message
        assert "COBALT_CLIENT_SECRET" in message
        assert CLIENT_SECRET not in message

    async def test_an_error_carries_the_answer_headers_and_request_id(
        self, api: respx.MockRouter, client: CobaltClient
    ) -> None:
        """The request id is on the error and in its message, to quote to Cobalt's support."""
        headers = {"X-Request-Id": "req_abc123", "X-Trace": "t-1"}
        api.post("/tasks").respond(404, json=envelope("Patient not found."), headers=headers)

        with pytest.raises(NotFoundError) as info:
            await client.tasks.create(**TASK)

        assert "req_abc123" == info.value.request_id
        assert "t-1" == info.value.headers["x-trace"]
        assert str(info.value).endswith("(request id req_abc123)")

    async def test_an_error_without_a_request_id_says_nothing_of_one(
        self, api: respx.MockRouter, client: CobaltClient
    ) -> None:
        api.post("/tasks").respond(404, json=envelope("Patient not found."))

        with pytest.raises(NotFoundError) as info:
            await client.tasks.create(**TASK)

        assert None is info.value.request_id
        assert "request id" not in str(info.value)

    @pytest.mark.parametrize("status", [409, 418, 422])
    async def test_other_statuses_are_api_status_errors(
        self, api: respx.MockRouter, client: CobaltClient, status: int
    ) -> None:
        """An undocumented 4xx is a plain APIStatusError, not a misleading subclass."""
        api.post("/tasks").respond(status, json=envelope("Nope"))

        with pytest.raises(APIStatusError) as info:
            await client.tasks.create(**TASK)

        assert APIStatusError is type(info.value)
        assert status == info.value.status_code
        assert not info.value.outcome_unknown

    async def test_success_without_job_id_is_an_unknown_outcome(
        self, api: respx.MockRouter, client: CobaltClient
    ) -> None:
        """A 2xx without a job_id cannot be tracked; the task may exist."""
        api.post("/tasks").respond(200, json={"success": True, "task_id": "t_1"})

        with pytest.raises(APIError) as info:
            await client.tasks.create(**TASK)

        assert info.value.outcome_unknown
        assert "job_id" in str(info.value)


UNSENT_OR_UNKNOWN = [
    pytest.param(httpx.ReadTimeout("read timed out"), CobaltTimeoutError, id="read-timeout"),
    pytest.param(httpx.WriteTimeout("write timed out"), CobaltTimeoutError, id="write-timeout"),
    pytest.param(
        httpx.RemoteProtocolError("peer closed connection"),
        CobaltConnectionError,
        id="remote-protocol",
    ),
    pytest.param(httpx.ReadError("connection reset"), CobaltConnectionError, id="read-error"),
    pytest.param(httpx.WriteError("broken pipe"), CobaltConnectionError, id="write-error"),
]


class TestCreateIsNeverResentBlindly:
    """A create POST that may have reached Cobalt is sent once and reported as unknown."""

    async def test_500_on_create_is_sent_exactly_once(
        self, api: respx.MockRouter, client: CobaltClient, delays: list[float]
    ) -> None:
        """A 5xx answer to a create is not retried, whatever the retry budget."""
        route = api.post("/tasks").respond(500, json=envelope("Internal error"))

        with pytest.raises(ServerError) as info:
            await client.tasks.create(**TASK)

        assert 1 == route.call_count
        assert [] == delays
        assert info.value.outcome_unknown
        assert "do not resubmit blindly" in str(info.value)

    async def test_accepted_answer_without_a_job_id_is_an_unknown_outcome(
        self, api: respx.MockRouter, client: CobaltClient
    ) -> None:
        """A 200 without a usable job_id: Cobalt took the task, so resubmitting would duplicate."""
        route = api.post("/tasks").respond(200, json={"success": True, "task_id": "t_1"})

        with pytest.raises(APIError) as info:
            await client.tasks.create(**TASK)

        assert 1 == route.call_count
        assert info.value.outcome_unknown
        assert ("POST", "/v1/tasks", 200) == (
            info.value.method,
            info.value.path,
            info.value.status_code,
        )

    @pytest.mark.parametrize(("exc", "error_type"), UNSENT_OR_UNKNOWN)
    async def test_transport_failure_after_sending_is_not_retried(
        self,
        api: respx.MockRouter,
        client: CobaltClient,
        delays: list[float],
        exc: httpx.TransportError,
        error_type: type[CobaltConnectionError],
    ) -> None:
        """A timeout or dropped connection may have created the task: sent once, unknown."""
        route = api.post("/tasks").mock(side_effect=[exc, httpx.Response(200, json=ACCEPTED_TASK)])

        with pytest.raises(error_type) as info:
            await client.tasks.create(**TASK)

        error = info.value
        assert 1 == route.call_count
        assert [] == delays
        assert error.outcome_unknown
        assert None is error.status_code
        assert ("POST", "/v1/tasks") == (error.method, error.path)
        assert "do not resubmit blindly" in str(error)
        assert exc is error.__cause__

    @pytest.mark.parametrize(
        "exc",
        [httpx.ConnectError("connection refused"), httpx.ConnectTimeout("connect timed out")],
        ids=["connect-error", "connect-timeout"],
    )
    async def test_connect_failure_is_retried_and_succeeds(
        self,
        api: respx.MockRouter,
        client: CobaltClient,
        delays: list[float],
        exc: httpx.TransportError,
    ) -> None:
        """A connection that never opened provably sent nothing: the POST is retried."""
        route = api.post("/tasks").mock(side_effect=[exc, httpx.Response(200, json=ACCEPTED_TASK)])

        handle = await client.tasks.create(**TASK)

        assert 2 == route.call_count
        assert 1 == len(delays)
        assert "12345" == handle.job_id

    async def test_connect_failures_exhaust_retries_with_a_known_outcome(
        self, api: respx.MockRouter, client: CobaltClient, delays: list[float]
    ) -> None:
        """When no attempt connects, the error says nothing was sent (outcome known)."""
        route = api.post("/tasks").mock(side_effect=httpx.ConnectError("connection refused"))

        with pytest.raises(CobaltConnectionError) as info:
            await client.tasks.create(**TASK)

        assert 3 == route.call_count
        assert 2 == len(delays)
        assert not info.value.outcome_unknown
        assert "resubmit" not in str(info.value)

    async def test_4xx_on_create_is_not_retried(
        self, api: respx.MockRouter, client: CobaltClient, delays: list[float]
    ) -> None:
        """A refusal is final: no retry, and the outcome is known (nothing was created)."""
        route = api.post("/tasks").respond(400, json=envelope("Missing required field: subject"))

        with pytest.raises(BadRequestError):
            await client.tasks.create(**TASK)

        assert 1 == route.call_count
        assert [] == delays


class TestGetIsRetried:
    """GET /v1/webhook-events is idempotent: transient failures are retried."""

    @pytest.mark.parametrize(
        "first",
        [
            httpx.Response(503, json=envelope("Service unavailable")),
            httpx.Response(500),
            httpx.Response(429, headers={"Retry-After": "2"}),
            httpx.ReadTimeout("read timed out"),
            httpx.RemoteProtocolError("peer closed connection"),
        ],
        ids=["503", "500", "429", "read-timeout", "dropped"],
    )
    async def test_transient_failure_then_success(
        self, api: respx.MockRouter, client: CobaltClient, delays: list[float], first: Any
    ) -> None:
        """One transient failure, then the page: the caller sees only the page."""
        route = api.get("/webhook-events").mock(
            side_effect=[first, httpx.Response(200, json=EVENTS_PAGE)]
        )

        page = await client.webhook_events.list(job_id="12345")

        assert 2 == route.call_count
        assert ["task.created"] == [event.type for event in page.events]
        assert 1 == len(delays)

    async def test_retry_after_is_honoured_and_capped(
        self, api: respx.MockRouter, client: CobaltClient, delays: list[float]
    ) -> None:
        """The backoff follows Retry-After, but never waits more than MAX_RETRY_AFTER."""
        api.get("/webhook-events").mock(
            side_effect=[
                httpx.Response(429, headers={"Retry-After": "2"}),
                httpx.Response(429, headers={"Retry-After": "100000"}),
                httpx.Response(200, json=EVENTS_PAGE),
            ]
        )

        await client.webhook_events.list()

        assert [2.0, MAX_RETRY_AFTER] == delays

    async def test_get_gives_up_after_max_retries(
        self, api: respx.MockRouter, client: CobaltClient, delays: list[float]
    ) -> None:
        """After max_retries the last error is raised; a read has no unknown outcome."""
        route = api.get("/webhook-events").respond(503)

        with pytest.raises(ServerError) as info:
            await client.webhook_events.list()

        assert 3 == route.call_count
        assert not info.value.outcome_unknown
        assert "/v1/webhook-events" == info.value.path

    async def test_unreadable_listing_names_the_full_path(
        self, api: respx.MockRouter, client: CobaltClient
    ) -> None:
        """A 200 that is no listing (a proxy's page) names the path as every other error does."""
        api.get("/webhook-events").respond(200, text="<html>maintenance</html>")

        with pytest.raises(APIError) as info:
            await client.webhook_events.list()

        assert ("GET", "/v1/webhook-events", 200) == (
            info.value.method,
            info.value.path,
            info.value.status_code,
        )
        assert not info.value.outcome_unknown

    async def test_get_4xx_is_not_retried(
        self, api: respx.MockRouter, client: CobaltClient, delays: list[float]
    ) -> None:
        """A 4xx other than 429 will not change on retry."""
        route = api.get("/webhook-events").respond(404, json=envelope("Not found"))

        with pytest.raises(NotFoundError):
            await client.webhook_events.list()

        assert 1 == route.call_count
        assert [] == delays

    def test_jittered_backoff_stays_within_its_bounds(self) -> None:
        """Without Retry-After the delay is full jitter below base * 2**attempt, capped."""
        policy = RetryPolicy(base_delay=0.5, max_delay=8.0)

        assert all(0 <= policy.delay(0, None) <= 0.5 for _ in range(50))
        assert all(0 <= policy.delay(10, None) <= 8.0 for _ in range(50))


ERROR_SCENARIOS = [
    pytest.param(httpx.Response(400, json=envelope("Missing required field: subject")), id="400"),
    pytest.param(
        httpx.Response(403, json=envelope("Account link expired.", error="login_required")),
        id="403",
    ),
    pytest.param(httpx.Response(404, json=envelope("User not found.")), id="404"),
    pytest.param(httpx.Response(429, headers={"Retry-After": "1"}), id="429"),
    pytest.param(httpx.Response(500, text="oops"), id="500"),
    pytest.param(httpx.ReadTimeout("read timed out"), id="read-timeout"),
    pytest.param(httpx.RemoteProtocolError("dropped"), id="dropped"),
]


class TestNoCredentialLeaks:
    """Error messages and reprs never contain the credential values."""

    @pytest.mark.parametrize("answer", ERROR_SCENARIOS)
    async def test_errors_hold_no_credentials(
        self, api: respx.MockRouter, client: CobaltClient, answer: Any
    ) -> None:
        """str() and repr() of every mapped error are free of the three secrets."""
        api.post("/tasks").mock(side_effect=[answer])

        with pytest.raises(APIError) as info:
            await client.tasks.create(**TASK)

        assert_no_credentials(str(info.value), repr(info.value), repr(info.value.args))

    async def test_connect_failure_error_holds_no_credentials(
        self, api: respx.MockRouter, client: CobaltClient, delays: list[float]
    ) -> None:
        """The error after exhausted connect retries is free of secrets too."""
        api.post("/tasks").mock(side_effect=httpx.ConnectError("connection refused"))

        with pytest.raises(CobaltConnectionError) as info:
            await client.tasks.create(**TASK)

        assert_no_credentials(str(info.value), repr(info.value))

    def test_client_repr_holds_no_credentials(self) -> None:
        """repr() and str() of a client show its base URL, not its secrets."""
        client = CobaltClient(
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            access_token=ACCESS_TOKEN,
            base_url=BASE_URL,
        )

        assert BASE_URL in repr(client)
        assert_no_credentials(repr(client), str(client))
