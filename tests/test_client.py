"""CobaltClient: configuration from arguments and environment, lifecycle, metadata-only logs."""

from __future__ import annotations

import logging

import anyio
import httpx
import pytest

from cobalt_async import (
    APIStatusError,
    BadRequestError,
    ClientClosedError,
    CobaltClient,
    ConfigurationError,
    InMemorySink,
)
from cobalt_async.testing import FakeCobalt

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("clean_environment")]

CLIENT_ID = "ci_live_1d3nt1ty_V4LUE"
CLIENT_SECRET = "cs_live_s3cr3t_V4LUE"
ACCESS_TOKEN = "at_t0k3n_V4LUE"
CREDENTIALS = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "access_token": ACCESS_TOKEN}
ENV_VARS = {
    "client_id": "COBALT_CLIENT_ID",
    "client_secret": "COBALT_CLIENT_SECRET",
    "access_token": "COBALT_ACCESS_TOKEN",
}
PHI = "Jane Doe DOB 1961-04-02"
ACCEPTED = {"success": True, "task_id": "t_1", "task_note_id": "n_1", "job_id": 12345}
EVENTS_PAGE = {"success": True, "webhook_events": [], "pagination": {"current_page": 1}}


class RecordingTransport(httpx.MockTransport):
    """A mock Cobalt that records requests and whether it was closed."""

    def __init__(self, status: int = 200) -> None:
        self.requests: list[httpx.Request] = []
        self.closed = False

        def handler(request: httpx.Request) -> httpx.Response:
            self.requests.append(request)
            body = EVENTS_PAGE if request.method == "GET" else ACCEPTED
            if status != 200:
                body = {"success": False, "message": "Missing required field: subject"}
            return httpx.Response(status, json=body)

        super().__init__(handler)

    async def aclose(self) -> None:
        self.closed = True


@pytest.fixture
def transport() -> RecordingTransport:
    return RecordingTransport()


def make_client(transport: httpx.AsyncBaseTransport, **kwargs: str) -> CobaltClient:
    return CobaltClient(
        **{**CREDENTIALS, "base_url": "https://cobalt.test/v1", **kwargs},  # type: ignore[arg-type]
        transport=transport,
    )


class TestConfiguration:
    """Credentials and base URL come from arguments, else from COBALT_* variables."""

    async def test_credentials_and_base_url_are_read_from_the_environment(
        self, monkeypatch: pytest.MonkeyPatch, transport: RecordingTransport
    ) -> None:
        """With no arguments, COBALT_CLIENT_ID & co. and COBALT_BASE_URL are used."""
        for name, variable in ENV_VARS.items():
            monkeypatch.setenv(variable, f"env_{name}")
        monkeypatch.setenv("COBALT_BASE_URL", "https://env.cobalt.test/v1/")

        async with CobaltClient(transport=transport) as client:
            await client.tasks.create(patient_mrn="MRN-1", description="Call back")

        request = transport.requests[0]
        assert "https://env.cobalt.test/v1" == client.base_url
        assert "https://env.cobalt.test/v1/tasks" == str(request.url)
        for name in ENV_VARS:
            assert f"env_{name}" == request.headers[name]

    async def test_arguments_win_over_the_environment(
        self, monkeypatch: pytest.MonkeyPatch, transport: RecordingTransport
    ) -> None:
        """An explicit argument is used even when its variable is set."""
        monkeypatch.setenv("COBALT_CLIENT_ID", "env_client_id")
        monkeypatch.setenv("COBALT_BASE_URL", "https://env.cobalt.test/v1")

        async with make_client(transport) as client:
            await client.tasks.create(patient_mrn="MRN-1", description="Call back")

        assert CLIENT_ID == transport.requests[0].headers["client_id"]
        assert "cobalt.test" == transport.requests[0].url.host

    def test_default_base_url_is_cobalts(self) -> None:
        """Without base_url or COBALT_BASE_URL the client talks to api.usecobalt.com/v1."""
        client = CobaltClient(**CREDENTIALS)

        assert "https://api.usecobalt.com/v1" == client.base_url

    @pytest.mark.parametrize("missing", list(ENV_VARS))
    @pytest.mark.parametrize("value", [None, "", "   "], ids=["absent", "empty", "blank"])
    def test_missing_credential_is_refused_at_construction(
        self, monkeypatch: pytest.MonkeyPatch, missing: str, value: str | None
    ) -> None:
        """ConfigurationError names both the argument and its environment variable."""
        if value is not None:
            monkeypatch.setenv(ENV_VARS[missing], value)
        given = {name: secret for name, secret in CREDENTIALS.items() if name != missing}

        with pytest.raises(ConfigurationError) as info:
            CobaltClient(**given)  # type: ignore[arg-type]

        message = str(info.value)
        assert f"{missing}=" in message
        assert ENV_VARS[missing] in message
        assert isinstance(info.value, ValueError)
        for secret in given.values():
            assert secret not in message

    async def test_surrounding_whitespace_in_a_credential_is_ignored(
        self, monkeypatch: pytest.MonkeyPatch, transport: RecordingTransport
    ) -> None:
        """A secret read from a file with its trailing newline is sent without it."""
        monkeypatch.setenv("COBALT_CLIENT_SECRET", f"{CLIENT_SECRET}\n")

        async with CobaltClient(
            client_id=f" {CLIENT_ID} ", access_token=ACCESS_TOKEN, transport=transport
        ) as client:
            await client.tasks.create(patient_mrn="MRN-1", description="Call back")

        headers = transport.requests[0].headers
        assert (CLIENT_ID, CLIENT_SECRET) == (headers["client_id"], headers["client_secret"])

    @pytest.mark.parametrize(
        "value",
        ["cs_live_abc\nX-Injected: 1", "cs_live_abc\x00", "cs_live_clé", "cs_live_東京"],
        ids=["newline", "nul", "latin-1", "cjk"],
    )
    def test_credential_that_cannot_be_a_header_is_refused_without_echoing_it(
        self, value: str
    ) -> None:
        """Control or non-ASCII characters are refused at construction, value not shown."""
        with pytest.raises(ConfigurationError) as info:
            CobaltClient(**{**CREDENTIALS, "client_secret": value})

        message = str(info.value)
        assert "client_secret" in message
        assert "COBALT_CLIENT_SECRET" in message
        assert "cs_live_" not in message
        assert None is info.value.__cause__

    async def test_transport_and_http_client_together_are_refused(
        self, transport: RecordingTransport
    ) -> None:
        """Passing both transport= and http_client= is ambiguous, so it is an error."""
        async with httpx.AsyncClient(transport=transport) as http:
            with pytest.raises(ConfigurationError, match="transport= or http_client="):
                CobaltClient(**CREDENTIALS, transport=transport, http_client=http)

    def test_repr_shows_no_secret(self) -> None:
        """repr() names the base URL and state; no credential value appears."""
        client = CobaltClient(**CREDENTIALS, base_url="https://cobalt.test/v1")

        text = repr(client)

        assert "https://cobalt.test/v1" in text
        assert "open" in text
        for secret in CREDENTIALS.values():
            assert secret not in text


class TestLifecycle:
    """async with / aclose(): an owned http client is closed, an injected one never is."""

    async def test_async_with_closes_the_owned_http_client(
        self, transport: RecordingTransport
    ) -> None:
        """Leaving the block closes the client this CobaltClient built (and its transport)."""
        async with make_client(transport) as client:
            assert not transport.closed

        assert transport.closed
        assert "closed" in repr(client)

    async def test_aclose_closes_the_owned_http_client_once(
        self, transport: RecordingTransport
    ) -> None:
        """aclose() closes, and a second aclose() is a no-op."""
        client = make_client(transport)

        await client.aclose()
        await client.aclose()

        assert transport.closed

    async def test_injected_http_client_is_never_closed(
        self, transport: RecordingTransport
    ) -> None:
        """An http_client passed in stays open and usable after the CobaltClient closes."""
        async with httpx.AsyncClient(transport=transport) as http:
            async with CobaltClient(
                **CREDENTIALS, base_url="https://cobalt.test/v1", http_client=http
            ) as client:
                await client.tasks.create(patient_mrn="MRN-1", description="Call back")

            assert not http.is_closed
            response = await http.get("https://cobalt.test/v1/webhook-events")
            assert 200 == response.status_code
            assert 2 == len(transport.requests)
            assert CLIENT_ID == transport.requests[0].headers["client_id"]

    async def test_use_after_aclose_raises_client_closed(
        self, transport: RecordingTransport
    ) -> None:
        """Every request after aclose() raises ClientClosedError and nothing is sent."""
        client = make_client(transport)
        await client.aclose()

        with pytest.raises(ClientClosedError):
            await client.tasks.create(patient_mrn="MRN-1", description="Call back")
        with pytest.raises(ClientClosedError):
            await client.tasks.notes.create(emr_task_id="emr_1", note="Called")
        with pytest.raises(ClientClosedError) as info:
            await client.webhook_events.list()

        assert isinstance(info.value, RuntimeError)
        assert [] == transport.requests

    async def test_waiting_after_aclose_without_a_sink_raises_client_closed(
        self, transport: RecordingTransport
    ) -> None:
        """Without a sink only polling could resolve a handle, and polling is closed."""
        async with make_client(transport) as client:
            handle = await client.tasks.create(patient_mrn="MRN-1", description="Call back")

        with pytest.raises(ClientClosedError):
            await handle.wait(timeout=1)

    async def test_reopening_a_closed_client_is_refused(
        self, transport: RecordingTransport
    ) -> None:
        """A closed client cannot be entered again."""
        client = make_client(transport)
        async with client:
            pass

        with pytest.raises(ClientClosedError, match="cannot be reopened"):
            async with client:
                pass


def cobalt_log_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage() for record in caplog.records if record.name.startswith("cobalt_async")
    ]


def assert_no_secret_or_phi(caplog: pytest.LogCaptureFixture) -> None:
    for forbidden in [*CREDENTIALS.values(), PHI, "MRN-998877"]:
        assert forbidden not in caplog.text


class TestLogging:
    """DEBUG logs carry method, path and status, never credentials or bodies."""

    async def test_debug_logs_of_accepted_requests_are_metadata_only(
        self, caplog: pytest.LogCaptureFixture, transport: RecordingTransport
    ) -> None:
        """Each request logs method, path and status; no credentials, no request text."""
        caplog.set_level(logging.DEBUG, logger="cobalt_async")

        async with make_client(transport) as client:
            await client.tasks.create(patient_mrn="MRN-998877", description=PHI, subject=PHI)
            await client.tasks.notes.create(emr_task_id="emr_1", note=PHI)
            await client.webhook_events.list(job_id="12345")

        lines = cobalt_log_lines(caplog)
        assert any("POST /v1/tasks -> 200" in line for line in lines)
        assert any("POST /v1/tasks/notes -> 200" in line for line in lines)
        assert any("GET /v1/webhook-events -> 200" in line for line in lines)
        assert_no_secret_or_phi(caplog)

    async def test_debug_logs_of_refused_requests_are_metadata_only(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A refused request logs its status the same way, still without secrets or text."""
        caplog.set_level(logging.DEBUG, logger="cobalt_async")
        transport = RecordingTransport(status=400)

        async with make_client(transport) as client:
            with pytest.raises(BadRequestError):
                await client.tasks.create(patient_mrn="MRN-998877", description=PHI)

        assert any("POST /v1/tasks -> 400" in line for line in cobalt_log_lines(caplog))
        assert_no_secret_or_phi(caplog)


class TestWithOptions:
    """``client.with_options(...)``: other request options on the same pool, sink and jobs."""

    async def test_the_timeout_applies_to_the_copy_only(
        self, transport: RecordingTransport
    ) -> None:
        async with make_client(transport) as client:
            await client.with_options(timeout=2.5).tasks.create(patient_mrn="M", description="d")
            await client.tasks.create(patient_mrn="M", description="d")

        derived, original = (request.extensions["timeout"] for request in transport.requests)
        assert {"connect": 2.5, "read": 2.5, "write": 2.5, "pool": 2.5} == derived
        assert {"connect": 5.0, "read": 30.0, "write": 30.0, "pool": 30.0} == original

    async def test_max_retries_applies_to_the_copy_only(self) -> None:
        transport = RecordingTransport(status=503)
        async with make_client(transport) as client:
            with pytest.raises(APIStatusError):
                await client.with_options(max_retries=0).webhook_events.list()
            assert 1 == len(transport.requests)
            with pytest.raises(APIStatusError):
                await client.with_options(timeout=None).webhook_events.list()
            assert 1 + 3 == len(transport.requests)  # the default: two retries

    async def test_a_job_submitted_through_the_copy_resolves_through_the_shared_sink(
        self, fake_cobalt: FakeCobalt, cobalt_client: CobaltClient
    ) -> None:
        handle = await cobalt_client.with_options(timeout=10).tasks.create(
            patient_mrn="MRN-1", description="Call back"
        )
        with anyio.fail_after(10):
            event = await handle

        assert "webhook" == handle.resolved_via
        assert event.job_id == handle.job_id
        assert 0 == cobalt_client.sink.stats().backstop_polls

    async def test_closing_the_client_closes_the_copy_and_not_the_other_way(
        self, transport: RecordingTransport
    ) -> None:
        client = make_client(transport)
        derived = client.with_options(max_retries=1)
        async with derived:
            pass
        await client.tasks.create(patient_mrn="M", description="d")  # still open
        assert not transport.closed

        await client.aclose()

        assert transport.closed
        with pytest.raises(ClientClosedError):
            await derived.tasks.create(patient_mrn="M", description="d")
        with pytest.raises(ClientClosedError):
            await client.with_options(timeout=1).tasks.create(patient_mrn="M", description="d")

    async def test_entering_the_copy_does_not_enter_the_sink_again(
        self, transport: RecordingTransport
    ) -> None:
        entered: list[str] = []

        class CountingSink(InMemorySink):
            async def __aenter__(self) -> CountingSink:
                entered.append("sink")
                return self

        async with make_client(transport, sink=CountingSink()) as client:  # type: ignore[arg-type]
            async with client.with_options(timeout=1):
                pass

        assert ["sink"] == entered

    @pytest.mark.parametrize(
        ("options", "named"),
        [
            ({"timeout": 0}, "timeout"),
            ({"timeout": "5"}, "timeout"),
            ({"timeout": float("nan")}, "timeout"),
            ({"max_retries": -1}, "max_retries"),
            ({"max_retries": "3"}, "max_retries"),
            ({"max_retries": True}, "max_retries"),
        ],
    )
    def test_bad_options_are_refused_by_name(self, options: dict[str, object], named: str) -> None:
        client = make_client(RecordingTransport())
        with pytest.raises(ConfigurationError, match=rf"^{named} must be"):
            client.with_options(**options)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match=rf"^{named} must be"):
            make_client(RecordingTransport(), **options)  # type: ignore[arg-type]
